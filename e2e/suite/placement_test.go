package suite

import (
	"fmt"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// TestTesseraSchedulerKeepsGPUsWhole places eight half-GPU shares and then a
// pod asking for eight whole GPUs on the two 8-GPU nodes. The stock
// kube-scheduler spreads the shares over both nodes (LeastAllocated on CPU;
// DRA devices enter no score), so neither node keeps eight idle GPUs and the
// 8-GPU pod stays pending. tessera-scheduler packs the shares onto one node
// and the 8-GPU pod fits on the other.
func TestTesseraSchedulerKeepsGPUsWhole(t *testing.T) {
	needCluster(t)
	if os.Getenv(cluster.TesseraSchedulerEnv) == "" {
		t.Skipf("tessera-scheduler not running: set %s (make e2e does)", cluster.TesseraSchedulerEnv)
	}
	for _, tc := range []struct {
		scheduler  string
		eightFits  bool
		shareNodes int
	}{
		{scheduler: corev1.DefaultSchedulerName, eightFits: false, shareNodes: 2},
		{scheduler: cluster.TesseraSchedulerName, eightFits: true, shareNodes: 1},
	} {
		t.Run(tc.scheduler, func(t *testing.T) {
			ns := newNamespace(t)
			half := request("share", gpuapi.ClassShared)
			half.Exactly.Capacity = &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
				gpuapi.CapCompute: resource.MustParse("50"),
				gpuapi.CapMemory:  resource.MustParse("10Gi"),
			}}
			createTemplate(t, ns, "half", half)
			createTemplate(t, ns, "eight", withCount(request("gpus", gpuapi.ClassGPU), 8))
			nodes := map[string]int{}
			// One at a time, so that each pod sees where the previous went.
			for i := range 8 {
				pod := createPod(t, ns, fmt.Sprintf("half-%d", i), "half", scheduledBy(tc.scheduler), withCPU("4"))
				nodes[waitAllocated(t, pod).Pod.Spec.NodeName]++
			}
			t.Logf("%s put the shares on %v", tc.scheduler, nodes)
			if len(nodes) != tc.shareNodes {
				t.Errorf("shares on %d nodes, want %d", len(nodes), tc.shareNodes)
			}
			eight := createPod(t, ns, "eight", "eight", scheduledBy(tc.scheduler), withCPU("4"))
			if tc.eightFits {
				a := waitAllocated(t, eight)
				if nodes[a.Pod.Spec.NodeName] != 0 {
					t.Errorf("8-GPU pod on %s, which holds shares", a.Pod.Spec.NodeName)
				}
				return
			}
			ev := waitEvent(t, eight, "FailedScheduling")
			t.Logf("8-GPU pod pending under %s: %s", tc.scheduler, ev.Message)
		})
	}
}

func scheduledBy(name string) podOption {
	return func(p *corev1.Pod) { p.Spec.SchedulerName = name }
}

func withCPU(cpu string) podOption {
	return func(p *corev1.Pod) {
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)}
	}
}
