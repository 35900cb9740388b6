package localcluster

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// burstSeeds is how many seeded sets of shares TestShareBurstPacksLikeOneByOne
// places, each one by one and then in a burst, per scheduler.
const burstSeeds = 10

// burstStockEnv, when set, adds kube-scheduler's figures to
// TestShareBurstPacksLikeOneByOne (make bench-burst).
const burstStockEnv = "TESSERA_E2E_BURST_STOCK"

// TestShareBurstPacksLikeOneByOne places, per seed, four shares of 25 to 34Gi
// of one namespace of no tenant on the tenancy node (two GPUs, whose devices
// carry the tenancy controller's binding condition, so each pod waits in
// PreBind while its claim is already allocated): first one by one, each after
// the one before is bound, then all four created at once. It counts the GPUs
// each way touches. tessera-scheduler must touch no more in the burst
// (count-once.patch: a share in flight and in the claim cache consumes its
// capacity once); kube-scheduler's figures are logged beside it (it counts
// such a share twice, so a burst finds its GPUs fuller than they are).
//
// kube-scheduler's half (about four minutes, asserting nothing) runs only
// when burstStockEnv is set, as make bench-burst does; make e2e runs
// tessera-scheduler's.
func TestShareBurstPacksLikeOneByOne(t *testing.T) {
	needCluster(t)
	var schedulers []string
	if os.Getenv(burstStockEnv) != "" {
		schedulers = append(schedulers, corev1.DefaultSchedulerName)
	}
	if os.Getenv(cluster.TesseraSchedulerEnv) != "" {
		schedulers = append(schedulers, cluster.TesseraSchedulerName)
	}
	if len(schedulers) == 0 {
		t.Skipf("no scheduler to measure: set %s for tessera-scheduler's half, %s for kube-scheduler's", cluster.TesseraSchedulerEnv, burstStockEnv)
	}
	for _, scheduler := range schedulers {
		t.Run(scheduler, func(t *testing.T) {
			ns := newNamespace(t)
			oneByOneGPUs, burstGPUs, worse := 0, 0, 0
			for seed := range uint64(burstSeeds) {
				rng := rand.New(rand.NewPCG(seed, 29))
				var templates []string
				for i := range 4 {
					name := fmt.Sprintf("s%d-%d", seed, i)
					createTemplate(t, ns, name, builder.MakeRequest("share", gpuapi.ClassShared).
						Memory(fmt.Sprintf("%dGi", 25+rng.IntN(10))).Compute(10).Obj())
					templates = append(templates, name)
				}
				place := func(mode string, burst bool) int {
					var pods []*corev1.Pod
					var allocs []allocation
					for _, tmpl := range templates {
						pod := createPod(t, ns, fmt.Sprintf("%s-%s", mode, tmpl), tmpl, scheduledBy(scheduler), onTenancyNode(""))
						pods = append(pods, pod)
						if !burst {
							allocs = append(allocs, waitAllocated(t, pod))
						}
					}
					if burst {
						for _, pod := range pods {
							allocs = append(allocs, waitAllocated(t, pod))
						}
					}
					gpus := map[string]bool{}
					for _, a := range allocs {
						gpus[a.Devices()[0].Device] = true
					}
					for _, pod := range pods {
						deletePod(t, pod)
					}
					for _, a := range allocs {
						waitGone(t, a)
					}
					return len(gpus)
				}
				one := place("one", false)
				burst := place("burst", true)
				t.Logf("seed %d: GPUs touched (left free of 2) one by one %d (%d), burst %d (%d)", seed, one, 2-one, burst, 2-burst)
				oneByOneGPUs += one
				burstGPUs += burst
				if burst > one {
					worse++
				}
			}
			t.Logf("%s over %d seeds: GPUs touched one by one %d, in bursts %d; bursts on more GPUs: %d",
				scheduler, burstSeeds, oneByOneGPUs, burstGPUs, worse)
			if scheduler == cluster.TesseraSchedulerName && worse > 0 {
				t.Errorf("%d of %d bursts touched more GPUs than the same shares one by one", worse, burstSeeds)
			}
		})
	}
}
