// Package sim replays a workload against a fleet of GPU nodes with
// kube-scheduler's DRA allocator (k8s.io/dynamic-resource-allocation/
// structured) on the ResourceSlices Tessera publishes, and a model of
// kube-scheduler's node choice, to measure how much GPU capacity stays
// unallocated under each placement policy.
package sim

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// Pod is one pod of the workload.
type Pod struct {
	Name    string
	Request placement.Request
	// Models, when set, are the GPU models the pod may run on (the trace's
	// gpu_spec, "V100M16|V100M32").
	Models []string
}

// setModels limits the pod to the GPU models, in the request too (so that
// the workload the policies measure fragmentation against knows which
// capacity serves which request), sorted and without repeats.
func (p *Pod) setModels(models []string) {
	models = slices.Compact(slices.Sorted(slices.Values(models)))
	p.Models = models
	p.Request.Models = strings.Join(models, "|")
}

// NodeSpec is one node of the fleet.
type NodeSpec struct {
	Name string
	// CPU in milli-cores, Memory in MiB.
	CPU, Memory int64
	GPUs        int
	Model       string
}

// ReadPods reads pods in the openb CSV format: a header naming at least
// name, cpu_milli, memory_mib, num_gpu and gpu_milli, optionally gpu_spec;
// other columns are ignored. gpu_milli is the amount of each GPU: below 1000
// with num_gpu 1, a share of one time-shared GPU, rounded up to a whole per
// cent of compute (the shared GPU's request step).
func ReadPods(r io.Reader) ([]Pod, error) {
	rows, err := readCSV(r, []string{"name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"})
	if err != nil {
		return nil, fmt.Errorf("read pods: %w", err)
	}
	var out []Pod
	for _, row := range rows {
		var p Pod
		var gpus, milli int64
		p.Name = row.get("name")
		errs := errors.Join(row.int("cpu_milli", &p.Request.CPU), row.int("memory_mib", &p.Request.Memory),
			row.int("num_gpu", &gpus), row.int("gpu_milli", &milli))
		if errs != nil {
			return nil, fmt.Errorf("read pods: line %d: %w", row.line, errs)
		}
		p.Request.GPUs, p.Request.Milli = int(gpus), int(milli)
		switch {
		case gpus < 0 || p.Request.CPU < 0 || p.Request.Memory < 0:
			return nil, fmt.Errorf("read pods: line %d (%s): negative request", row.line, p.Name)
		case gpus == 0:
			p.Request.Milli = 0
		case milli <= 0 || milli > placement.WholeGPU:
			return nil, fmt.Errorf("read pods: line %d (%s): gpu_milli %d must be in 1..1000", row.line, p.Name, milli)
		case gpus > 1 && milli != placement.WholeGPU:
			return nil, fmt.Errorf("read pods: line %d (%s): %d GPUs of %d milli each: only single-GPU pods can take a share", row.line, p.Name, gpus, milli)
		}
		if p.Request.Shared() {
			// The shared GPU hands out compute in whole per cent.
			p.Request.Milli = (p.Request.Milli + 9) / 10 * 10
		}
		if spec := row.get("gpu_spec"); spec != "" && spec != "nan" && gpus > 0 {
			p.setModels(strings.Split(spec, "|"))
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read pods: no pods")
	}
	return out, nil
}

// ReadNodes reads nodes in the openb CSV format: a header naming at least
// sn, cpu_milli, memory_mib, gpu and model. Nodes without GPUs are kept (they
// can run CPU-only pods).
func ReadNodes(r io.Reader) ([]NodeSpec, error) {
	rows, err := readCSV(r, []string{"sn", "cpu_milli", "memory_mib", "gpu", "model"})
	if err != nil {
		return nil, fmt.Errorf("read nodes: %w", err)
	}
	var out []NodeSpec
	for _, row := range rows {
		n := NodeSpec{Name: row.get("sn"), Model: row.get("model")}
		var gpus int64
		if err := errors.Join(row.int("cpu_milli", &n.CPU), row.int("memory_mib", &n.Memory), row.int("gpu", &gpus)); err != nil {
			return nil, fmt.Errorf("read nodes: line %d: %w", row.line, err)
		}
		n.GPUs = int(gpus)
		if n.GPUs < 0 || n.GPUs > 64 || n.CPU <= 0 || n.Memory <= 0 {
			return nil, fmt.Errorf("read nodes: line %d (%s): need 0..64 GPUs and positive cpu_milli and memory_mib", row.line, n.Name)
		}
		if n.GPUs > 0 && (n.Model == "" || n.Model == "nan") {
			return nil, fmt.Errorf("read nodes: line %d (%s): a node with GPUs needs a model", row.line, n.Name)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read nodes: no nodes")
	}
	return out, nil
}

type row struct {
	line   int
	fields []string
	index  map[string]int
}

func (r row) get(col string) string {
	i, ok := r.index[col]
	if !ok || i >= len(r.fields) {
		return ""
	}
	return strings.TrimSpace(r.fields[i])
}

func (r row) int(col string, into *int64) error {
	v, err := strconv.ParseFloat(r.get(col), 64)
	if err != nil {
		return fmt.Errorf("column %s: %w", col, err)
	}
	*into = int64(v)
	return nil
}

func readCSV(r io.Reader, required []string) ([]row, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	index := map[string]int{}
	for i, h := range header {
		index[strings.TrimSpace(h)] = i
	}
	for _, col := range required {
		if _, ok := index[col]; !ok {
			return nil, fmt.Errorf("header lacks column %q (need %s)", col, strings.Join(required, ","))
		}
	}
	var out []row
	for line := 2; ; line++ {
		fields, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, row{line: line, fields: fields, index: index})
	}
}
