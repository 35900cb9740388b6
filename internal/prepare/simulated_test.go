package prepare

import (
	"testing"

	"k8s.io/klog/v2/ktesting"
)

// TestSimulatedDriver prepares on a mock backend without any driver files,
// as the local cluster's plugins do.
func TestSimulatedDriver(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	p, err := New(ctx, WithNVML(e.lib), WithNodeName(nodeName), WithCDIRoot(e.cdiRoot), WithStateDir(e.stateDir),
		WithDriverRoot(t.TempDir()), SimulatedDriver())
	if err != nil {
		t.Fatal(err)
	}
	c := makeClaim("sim").Device("m", "gpu-0-mig-1g18gb-5").Share("s", "gpu-1-shared", "1Gi", "10", "x").Obj()
	res := p.Prepare(ctx, c)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	view := viewCDI(t, e.cdiRoot, res.Devices[0].CDIDeviceIDs[0])
	if len(view.DeviceNodes) != 6 {
		t.Errorf("MIG device nodes %v, want the GPU, two capabilities and three control nodes", view.DeviceNodes)
	}
	if err := p.Unprepare(ctx, ref(c)); err != nil {
		t.Fatal(err)
	}
	if st := e.state(); len(st.MIG) != 0 || len(st.CDI) != 0 || len(st.Claims) != 0 {
		t.Errorf("after Unprepare: %+v", st)
	}
}
