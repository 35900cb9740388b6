package prepare

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/sharing"
)

// TestSharesOfOneGPUAreIsolated: two shares of one GPU each get an MPS
// daemon of their own, whose defaults are the share's limits (so a client
// that unsets its environment still has them), and their containers get
// that daemon's pipe directory and /dev/shm and nothing of the other's.
// Unpreparing one leaves the other's daemon running.
func TestSharesOfOneGPUAreIsolated(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	a := makeClaim("a").Share("s", "gpu-0-shared", "20Gi", "30", "share-a").Obj()
	b := makeClaim("b").Share("s", "gpu-0-shared", "30Gi", "60", "share-b").Obj()
	for _, c := range []*resourceapi.ResourceClaim{a, b} {
		if res := p.Prepare(ctx, c); res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	uuid, _ := e.server.Devices[0].GetUUID()
	for _, want := range []sharing.Daemon{
		{ID: "a", GPUUUID: uuid, ActiveThreadPercentage: 30, PinnedMemoryLimitBytes: 20 << 30},
		{ID: "b", GPUUUID: uuid, ActiveThreadPercentage: 60, PinnedMemoryLimitBytes: 30 << 30},
	} {
		got, ok := e.mps.Get(want.ID)
		if !ok {
			t.Errorf("claim %s has no MPS daemon", want.ID)
			continue
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("daemon of claim %s (-want +got):\n%s", want.ID, diff)
		}
	}
	viewA := viewCDI(t, e.cdiRoot, "gpu.tessera.dev/claim=a-gpu-0-shared")
	viewB := viewCDI(t, e.cdiRoot, "gpu.tessera.dev/claim=b-gpu-0-shared")
	hostPaths := func(v cdiView) map[string]bool {
		out := map[string]bool{}
		for _, m := range v.Mounts {
			host, _, _ := strings.Cut(m, ":")
			out[host] = true
		}
		return out
	}
	pa, pb := hostPaths(viewA), hostPaths(viewB)
	if len(pa) != 2 || len(pb) != 2 {
		t.Fatalf("mounts: a %v, b %v; want a pipe directory and a /dev/shm each", viewA.Mounts, viewB.Mounts)
	}
	for path := range pa {
		if pb[path] {
			t.Errorf("claims a and b both mount %s", path)
		}
	}
	// The limits stay in the environment for tools that read them.
	if !containsAll(viewA.Env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30") {
		t.Errorf("claim a's environment %v lacks its limits", viewA.Env)
	}

	if err := p.Unprepare(ctx, ref(a)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"b"}, e.state().Daemons); diff != "" {
		t.Errorf("daemons after unpreparing a (-want +got):\n%s", diff)
	}
}

func containsAll(list []string, want ...string) bool {
	have := map[string]bool{}
	for _, s := range list {
		have[s] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

// TestClaimCannotChooseSharingOfShare: how a share is shared is the
// DeviceClass's choice. A claim's own config that would switch its share
// to time slicing (escaping its MPS limits, changing everyone's time
// slice) is refused unless the class allows it; a claim cannot grant
// itself that right.
func TestClaimCannotChooseSharingOfShare(t *testing.T) {
	const allow = `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","allowClaimSharing":true}`
	for name, tc := range map[string]struct {
		claim   *resourceapi.ResourceClaim
		wantErr string
	}{
		"claim sets time slicing on a share": {
			claim:   makeClaim("c").Share("s", "gpu-0-shared", "1Gi", "10", "x").Config(resourceapi.AllocationConfigSourceClaim, timeSlicingLong).Obj(),
			wantErr: "the sharing of a time-shared GPU is set by its DeviceClass",
		},
		"claim grants itself the right": {
			claim: makeClaim("c").Share("s", "gpu-0-shared", "1Gi", "10", "x").
				Config(resourceapi.AllocationConfigSourceClaim, allow).Config(resourceapi.AllocationConfigSourceClaim, timeSlicingLong).Obj(),
			wantErr: "allowClaimSharing is only honoured in a DeviceClass's config",
		},
		"class allows it": {
			claim: makeClaim("c").Share("s", "gpu-0-shared", "1Gi", "10", "x").
				Config(resourceapi.AllocationConfigSourceClass, allow).Config(resourceapi.AllocationConfigSourceClaim, timeSlicingLong).Obj(),
		},
		"claim sets sharing of its whole GPU": {
			claim: makeClaim("c").Device("g", "gpu-0").Config(resourceapi.AllocationConfigSourceClaim, timeSlicingLong).Obj(),
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 1)
			p := e.mustPreparer(ctx)
			res := p.Prepare(ctx, tc.claim)
			switch {
			case tc.wantErr == "" && res.Err != nil:
				t.Fatalf("Prepare: %v", res.Err)
			case tc.wantErr != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tc.wantErr)):
				t.Fatalf("Prepare error %v, want one containing %q", res.Err, tc.wantErr)
			}
			if tc.wantErr != "" && len(e.state().Claims) != 0 {
				t.Errorf("a refused claim was recorded: %v", e.state().Claims)
			}
		})
	}
}
