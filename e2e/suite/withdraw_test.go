package suite

import (
	"context"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/test/builder"
)

// published is what one node's slices hold: device names (sorted), each
// slice's spec generation by name, and the pool's generation.
type published struct {
	devices []string
	slices  map[string]int64
	pool    int64
}

func publishedOn(ctx context.Context, t *testing.T, name string) published {
	t.Helper()
	list, err := node(t, name).Slices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := published{slices: map[string]int64{}}
	for _, s := range list {
		p.slices[s.Name] = s.Generation
		p.pool = max(p.pool, s.Spec.Pool.Generation)
		for _, d := range s.Spec.Devices {
			p.devices = append(p.devices, d.Name)
		}
	}
	slices.Sort(p.devices)
	return p
}

// waitPublished waits until node's slices satisfy ok, and returns them.
func waitPublished(t *testing.T, name, what string, ok func(published) bool) published {
	t.Helper()
	var last published
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		last = publishedOn(ctx, t, name)
		return ok(last), nil
	})
	if err != nil {
		t.Fatalf("node %s: %s not published within %s; devices: %v", name, what, waitTimeout, last.devices)
	}
	return last
}

// TestWithdrawBlockedDevices: the plugin of nodeWithdraw runs with
// --withdraw-blocked. A pod's MIG partition, once prepared, takes its GPU's
// whole and shared devices and the placements it overlaps out of the node's
// slices, by one update of one slice (the pool's generation stays, so the
// pool never looks incomplete to the scheduler); a pod asking for the whole
// GPU waits meanwhile; once the first pod is gone every device is published
// again, and the waiting pod gets the GPU, which in turn leaves only itself
// published.
func TestWithdrawBlockedDevices(t *testing.T) {
	needCluster(t)
	const all = 27 // an H200: whole, shared and 25 MIG placements
	before := waitPublished(t, nodeWithdraw, "every device", func(p published) bool { return len(p.devices) == all })
	ns := newNamespace(t)
	createTemplate(t, ns, "mig", migRequest("gpu"))
	createTemplate(t, ns, "whole", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())

	mig := createPod(t, ns, "mig", "mig", onNode(nodeWithdraw))
	waitRunning(t, mig)
	partition := waitAllocated(t, mig).Devices()[0].Device
	withdrawn := waitPublished(t, nodeWithdraw, "the partition's blocked devices withdrawn", func(p published) bool {
		return slices.Contains(p.devices, partition) && !slices.Contains(p.devices, "gpu-0") && !slices.Contains(p.devices, "gpu-0-shared")
	})
	t.Logf("with %s prepared, %d of %d devices published", partition, len(withdrawn.devices), all)
	if withdrawn.pool != before.pool {
		t.Errorf("the pool's generation went from %d to %d: every slice was rewritten", before.pool, withdrawn.pool)
	}
	updates := 0
	for name, gen := range withdrawn.slices {
		old, ok := before.slices[name]
		if !ok {
			t.Errorf("slice %s was created by the prepare", name)
			continue
		}
		updates += int(gen - old)
	}
	if updates != 1 || len(withdrawn.slices) != len(before.slices) {
		t.Errorf("the prepare cost %d slice updates and %d → %d slices, want one update of one slice", updates, len(before.slices), len(withdrawn.slices))
	}

	whole := createPod(t, ns, "whole", "whole", onNode(nodeWithdraw))
	waitEvent(t, whole, "FailedScheduling")
	deletePod(t, mig)
	waitRunning(t, whole)
	waitPublished(t, nodeWithdraw, "only the whole GPU", func(p published) bool { return slices.Equal(p.devices, []string{"gpu-0"}) })
	deletePod(t, whole)
	waitPublished(t, nodeWithdraw, "every device again", func(p published) bool { return len(p.devices) == all })
}
