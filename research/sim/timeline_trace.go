package sim

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// TimedPod is a pod of the trace with its place in time.
type TimedPod struct {
	Pod
	// Arrival is the trace's creation_time, in seconds.
	Arrival float64
	// Runtime is how long the pod ran in the trace, in seconds:
	// deletion_time minus scheduled_time, or minus creation_time for a pod
	// the trace never scheduled. Negative: the trace has no deletion_time,
	// and the pod runs to the end of the simulation.
	Runtime float64
	// Priority is the pod's priority, from the trace's qos: BE 0, Burstable
	// 1, LS and Guaranteed 2, anything else 1. Reclaim takes the lowest
	// first.
	Priority int32
}

// maxTraceBytes bounds what ReadTimedPods reads (the openb trace is 0.6 MB).
const maxTraceBytes = 256 << 20

// ReadTimedPods reads pods in the openb CSV format with their time columns:
// creation_time and deletion_time are required columns, scheduled_time and
// qos optional. A pod without creation_time, one scheduled before it was
// created, or deleted before it was created or scheduled, is refused with
// its line: the simulator does not guess a timeline.
func ReadTimedPods(r io.Reader) ([]TimedPod, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxTraceBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read pods: %w", err)
	}
	if len(data) > maxTraceBytes {
		return nil, fmt.Errorf("read pods: more than %d bytes", maxTraceBytes)
	}
	pods, err := ReadPods(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	rows, err := readCSV(bytes.NewReader(data), []string{"name", "creation_time", "deletion_time"})
	if err != nil {
		return nil, fmt.Errorf("read pod times: %w", err)
	}
	if len(rows) != len(pods) {
		return nil, fmt.Errorf("read pod times: %d rows, %d pods", len(rows), len(pods))
	}
	out := make([]TimedPod, len(pods))
	for i, row := range rows {
		created, ok, err := optionalSeconds(row, "creation_time")
		if err == nil && !ok {
			err = fmt.Errorf("column creation_time: empty")
		}
		scheduled, isScheduled, serr := optionalSeconds(row, "scheduled_time")
		deleted, isDeleted, derr := optionalSeconds(row, "deletion_time")
		if err := joinErrs(err, serr, derr); err != nil {
			return nil, fmt.Errorf("read pods: line %d (%s): %w", row.line, pods[i].Name, err)
		}
		start := created
		if isScheduled {
			if scheduled < created {
				return nil, fmt.Errorf("read pods: line %d (%s): scheduled_time %.0f before creation_time %.0f", row.line, pods[i].Name, scheduled, created)
			}
			start = scheduled
		}
		runtime := -1.0
		if isDeleted {
			if deleted < start {
				return nil, fmt.Errorf("read pods: line %d (%s): deletion_time %.0f before the pod started at %.0f", row.line, pods[i].Name, deleted, start)
			}
			runtime = deleted - start
		}
		out[i] = TimedPod{Pod: pods[i], Arrival: created, Runtime: runtime, Priority: qosPriority(row.get("qos"))}
	}
	return out, nil
}

func optionalSeconds(r row, col string) (float64, bool, error) {
	s := r.get(col)
	if s == "" || strings.EqualFold(s, "nan") {
		return 0, false, nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) || v < 0 {
		return 0, false, fmt.Errorf("column %s: %q is not a time in seconds", col, s)
	}
	return v, true, nil
}

func joinErrs(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func qosPriority(qos string) int32 {
	switch strings.ToLower(qos) {
	case "be":
		return 0
	case "ls", "guaranteed":
		return 2
	default:
		return 1
	}
}

// EveryNth is every n-th node, from the first: a fleet 1/n the size with,
// when the list is long, about the same mix of GPU models.
func EveryNth(nodes []NodeSpec, n int) []NodeSpec {
	var out []NodeSpec
	for i := 0; i < len(nodes); i += max(n, 1) {
		out = append(out, nodes[i])
	}
	return out
}
