package localcluster

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// devicesPerH200 are what an H200 publishes with nothing prepared: the whole
// GPU, the shared GPU and 25 MIG placements.
const devicesPerH200 = 27

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

// waitIdle waits until each of the 8-GPU nodes publishes every device again
// and the controller has tainted each of its time-shared GPUs free. Their
// plugins withdraw what their prepared devices block and bring it back after
// the unprepare; right after the cluster starts, the controller is still
// making the free taints, and an untainted shared GPU looks to every claim
// like one its own group holds. A test that compares kube-scheduler's
// choices with a model of an idle cluster waits for both.
func waitIdle(t *testing.T, nodes ...string) {
	t.Helper()
	for _, n := range nodes {
		waitPublished(t, n, "every device", func(p published) bool { return len(p.devices) == 8*devicesPerH200 })
	}
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		for _, n := range nodes {
			for i := range 8 {
				name := tenancy.TaintRuleName(tenancy.DeviceID{Driver: gpuapi.DriverName, Pool: n, Device: gpuapi.SharedDeviceName(i)})
				rule, err := local.Client.ResourceV1().DeviceTaintRules().Get(ctx, name, metav1.GetOptions{})
				if err != nil || rule.Spec.Taint.Value != tenancyv1.GroupFree {
					return false, nil
				}
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("the time-shared GPUs of %v not all tainted %s within %s", nodes, tenancyv1.GroupFree, waitTimeout)
	}
}

// TestWithdrawBlockedDevices: the plugin of nodeWithdraw withdraws blocked
// devices, as every plugin does by default. A pod's MIG partition, once prepared, takes its GPU's
// whole and shared devices and the placements it overlaps out of the node's
// slices, by one update of one slice (the pool's generation stays, so the
// pool never looks incomplete to the scheduler); a pod asking for the whole
// GPU waits meanwhile; once the first pod is gone every device is published
// again, and the waiting pod gets the GPU, which in turn leaves only itself
// published.
func TestWithdrawBlockedDevices(t *testing.T) {
	needCluster(t)
	const all = devicesPerH200
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

// TestWithdrawBlockedDevicesUnderChurn: on nodeWithdraw, pods of every kind
// (MIG partitions of two sizes, shares, the whole GPU) come and go at
// random, more than fit (bounded: 6 rounds or 90 s). At every round each
// running pod's device is still published (a prepared device is never
// withdrawn); no prepare or unprepare fails (nothing the hardware cannot
// hold was ever allocated from the changing slices); once every pod is gone,
// every device is published again and a whole-GPU pod runs.
func TestWithdrawBlockedDevicesUnderChurn(t *testing.T) {
	needCluster(t)
	const all = devicesPerH200
	waitPublished(t, nodeWithdraw, "every device", func(p published) bool { return len(p.devices) == all })
	ns := newNamespace(t)
	kinds := map[string]resourceapi.DeviceRequest{
		"mig1g": migRequest("gpu"),
		"mig3g": builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("3g.71gb").Obj(),
		"share": builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("20Gi").Obj(),
		"whole": builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj(),
	}
	names := slices.Sorted(maps.Keys(kinds))
	for kind, r := range kinds {
		createTemplate(t, ns, kind, r)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	pods := local.Client.CoreV1().Pods(ns)
	var live []*corev1.Pod
	deadline := time.Now().Add(90 * time.Second)
	created, checked := 0, 0
	for round := 0; round < 6 && time.Now().Before(deadline); round++ {
		for range 3 {
			kind := names[rng.IntN(len(names))]
			live = append(live, createPod(t, ns, fmt.Sprintf("%s-%d", kind, created), kind, onNode(nodeWithdraw)))
			created++
		}
		time.Sleep(3 * time.Second)
		p := publishedOn(t.Context(), t, nodeWithdraw)
		for _, pod := range live {
			got, err := pods.Get(t.Context(), pod.Name, metav1.GetOptions{})
			if err != nil || got.Status.Phase != corev1.PodRunning {
				continue
			}
			for _, d := range claimDevices(t, got) {
				checked++
				if !slices.Contains(p.devices, d) {
					t.Errorf("round %d: pod %s runs on %s, which is not published (%v)", round, pod.Name, d, p.devices)
				}
			}
		}
		rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		for _, pod := range live[:len(live)/2] {
			deletePod(t, pod)
		}
		live = live[len(live)/2:]
	}
	t.Logf("%d pods created, %d running devices checked against the slices", created, checked)
	for _, pod := range live {
		deletePod(t, pod)
	}
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		list, err := pods.List(ctx, metav1.ListOptions{})
		return err == nil && len(list.Items) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods of %s not gone within %s", ns, waitTimeout)
	}
	events, err := local.Client.CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.Reason == kubelet.ReasonFailedPrepare || e.Reason == kubelet.ReasonFailedUnprepare {
			t.Errorf("%s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message)
		}
	}
	waitPublished(t, nodeWithdraw, "every device after the churn", func(p published) bool { return len(p.devices) == all })
	waitRunning(t, createPod(t, ns, "whole-after", "whole", onNode(nodeWithdraw)))
}

// claimDevices are the devices allocated to pod's claim.
func claimDevices(t *testing.T, pod *corev1.Pod) []string {
	t.Helper()
	if len(pod.Status.ResourceClaimStatuses) == 0 || pod.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		return nil
	}
	c, err := local.Client.ResourceV1().ResourceClaims(pod.Namespace).Get(t.Context(), *pod.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil || c.Status.Allocation == nil {
		return nil
	}
	var out []string
	for _, r := range c.Status.Allocation.Devices.Results {
		out = append(out, r.Device)
	}
	return out
}
