package prepare

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/klog/v2/ktesting"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// TestReconcileRemovesWhatNobodyOwns: MIG instances (one without its
// compute instance, as a crash inside NVML's two-step creation leaves it),
// a CDI spec and an MPS daemon that no checkpointed claim owns are removed
// at start, while a prepared claim keeps everything it has.
func TestReconcileRemovesWhatNobodyOwns(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 3)
	p := e.mustPreparer(ctx)
	kept := makeClaim("kept").Device("m", "gpu-0-mig-1g18gb-0").Share("s", "gpu-1-shared", "1Gi", "10", "k").Obj()
	if res := p.Prepare(ctx, kept); res.Err != nil {
		t.Fatal(res.Err)
	}
	want := e.state()

	// Strays: a full MIG device beside the kept one, and a bare GPU
	// instance on a GPU whose MIG mode is switched on only for it.
	profile1g, err := e.server.ProfileID("1g.18gb")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.lib.CreateMIGDevice(ctx, 0, profile1g, inventory.Placement{Start: 4, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.lib.SetMIGMode(ctx, 2, true); err != nil {
		t.Fatal(err)
	}
	profile2g, err := e.server.ProfileID("2g.35gb")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.server.CreateGPUInstance(2, profile2g, 2, 2); err != nil {
		t.Fatal(err)
	}
	w, err := tcdi.New(tcdi.WithRoot(e.cdiRoot))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(tcdi.Claim{UID: "stray", Devices: []tcdi.Device{{Name: "gpu-2", DeviceNodes: []tcdi.DeviceNode{{Path: "/dev/nvidia2"}}}}}); err != nil {
		t.Fatal(err)
	}
	uuid2, _ := e.server.Devices[2].GetUUID()
	if err := e.mps.Start(ctx, sharing.Daemon{ID: "stray", GPUUUID: uuid2}); err != nil {
		t.Fatal(err)
	}
	if got := e.state(); len(got.MIG) != 3 || len(got.CDI) != 2 || len(got.Daemons) != 2 {
		t.Fatalf("strays not in place: %+v", got)
	}

	e.mustPreparer(ctx)
	if diff := cmp.Diff(want, e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("after restart (-want +got):\n%s", diff)
	}
}
