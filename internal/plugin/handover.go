package plugin

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	draslices "k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/klog/v2"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// storedTimeout bounds the wait for one step of a publication to reach the
// API server. Past it the next step goes ahead: the worst that follows is the
// generation bump that stepping avoids.
const storedTimeout = 10 * time.Second

// handOver gives res to the publication controller one changed slice at a
// time (resourceslice.Steps says why), counted from what the API server holds
// (stepFrom), waiting after each until the API server holds it, so that the
// controller never sees two changed slices at once and the node's pool never
// looks incomplete to the scheduler. A change of the slices' layout goes in
// one step, and so does a first publication unless the API server already
// holds the pool in its layout (a restart, or the other instance of a rolling
// update); the last step of a first publication is not waited for.
func (d *Driver) handOver(ctx context.Context, res draslices.DriverResources) error {
	first := d.handed == nil
	steps := resourceslice.Steps(d.stepFrom(ctx, res), res)
	for k, step := range steps {
		if err := d.helper.PublishResources(ctx, step); err != nil {
			return err
		}
		d.handed = &step
		if first && k == len(steps)-1 {
			continue
		}
		if err := d.waitStored(ctx, step); err != nil {
			if ctx.Err() != nil {
				return nil // stopping, not a failure to publish
			}
			klog.FromContext(ctx).Error(err, "A slice update did not reach the API server in time; publishing the next one anyway",
				"steps", len(steps))
		}
	}
	return nil
}

// stepFrom is what the steps to next start from: what the API server holds
// of the node's pool (resourceslice.Held, in the layout last handed over, or
// next's before the first publication), or, when it does not hold the whole
// pool at one generation in that layout or cannot be read, what the
// controller was last handed (nil before the first publication). In a rolling
// update the other plugin instance publishes the same pool: counted from this
// instance's last publication alone, a step can change a slice the other
// changed since as well as its own, and the controller then bumps the pool's
// generation and rewrites its slices (the pool incomplete meanwhile), and
// where it finds slices of two generations replaces one, its devices, allocated
// ones too, hidden until the new one is written.
func (d *Driver) stepFrom(ctx context.Context, next draslices.DriverResources) *draslices.DriverResources {
	layout := d.handed
	if layout == nil {
		layout = &next
	}
	list, err := d.opts.KubeClient.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: d.sliceSelector()})
	if err != nil {
		return d.handed
	}
	held, ok := resourceslice.Held(*layout, d.opts.NodeName, poolSlices(list.Items, d.opts.NodeName))
	if !ok {
		return d.handed
	}
	return &held
}

// sliceSelector selects the node's slices of this driver.
func (d *Driver) sliceSelector() string {
	return fields.Set{"spec.nodeName": d.opts.NodeName, "spec.driver": gpuapi.DriverName}.String()
}

// waitStored waits until the API server holds exactly the slices of want for
// the node's pool, all of one generation.
func (d *Driver) waitStored(ctx context.Context, want draslices.DriverResources) error {
	wanted := fingerprints(want.Pools[d.opts.NodeName].Slices)
	selector := d.sliceSelector()
	var got []string
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, storedTimeout, true, func(ctx context.Context) (bool, error) {
		list, err := d.opts.KubeClient.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: selector})
		if err != nil {
			return false, nil
		}
		got = storedFingerprints(list.Items, d.opts.NodeName)
		return slices.Equal(got, wanted), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %d slices of pool %s: the API server holds %d matching: %w", len(wanted), d.opts.NodeName, len(got), err)
	}
	return nil
}

// storedFingerprints are the fingerprints of the pool's slices as stored,
// nil unless they are all of one generation and as many as the pool says.
func storedFingerprints(stored []resourceapi.ResourceSlice, pool string) []string {
	mine := poolSlices(stored, pool)
	var specs []draslices.Slice
	for _, s := range mine {
		if s.Spec.Pool.Generation != mine[0].Spec.Pool.Generation || s.Spec.Pool.ResourceSliceCount != int64(len(mine)) {
			return nil
		}
		specs = append(specs, draslices.Slice{Devices: s.Spec.Devices, SharedCounters: s.Spec.SharedCounters})
	}
	return fingerprints(specs)
}

// poolSlices are the stored slices of this driver's pool of the node named
// pool (pools are named after their node).
func poolSlices(stored []resourceapi.ResourceSlice, pool string) []resourceapi.ResourceSlice {
	var mine []resourceapi.ResourceSlice
	for _, s := range stored {
		// A fake client ignores field selectors; a real one already applied them.
		if s.Spec.Driver == gpuapi.DriverName && s.Spec.Pool.Name == pool && s.Spec.NodeName != nil && *s.Spec.NodeName == pool {
			mine = append(mine, s)
		}
	}
	return mine
}

// fingerprints name each slice by what a step changes (devices, their taints,
// counter sets), sorted: the stored order of slices is the API server's.
// Taints' times are left out, as the API server may set them.
func fingerprints(in []draslices.Slice) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		var b strings.Builder
		for _, cs := range s.SharedCounters {
			fmt.Fprintf(&b, "counters %s;", cs.Name)
		}
		for _, dev := range s.Devices {
			fmt.Fprintf(&b, "device %s", dev.Name)
			for _, t := range dev.Taints {
				fmt.Fprintf(&b, " %s=%s:%s", t.Key, t.Value, t.Effect)
			}
			b.WriteString(";")
		}
		out = append(out, b.String())
	}
	slices.Sort(out)
	return out
}
