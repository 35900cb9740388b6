package prepare

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	tcdi "github.com/tessera-gpu/tessera/internal/cdi"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/hardware"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

const nodeName = "node-1"

// testEnv is one simulated node: a mock NVML server, the plugin's
// directories and the fakes that outlive a Preparer.
type testEnv struct {
	t        testing.TB
	server   *nvmlmock.Server
	lib      tnvml.Library
	cdiRoot  string
	stateDir string
	procRoot string
	mps      *hardware.SimulatedMPS
	slicer   *hardware.SimulatedTimeSlicer
}

// maxTestGPUInstanceID bounds the capability files the fake /proc holds:
// the mock numbers GPU instances without reusing IDs.
const maxTestGPUInstanceID = 16

func newTestEnv(t testing.TB, model string, gpus int) *testEnv {
	t.Helper()
	s, err := nvmlmock.New(model, gpus, "test")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{
		t: t, server: s, lib: lib,
		cdiRoot: t.TempDir(), stateDir: t.TempDir(), procRoot: t.TempDir(),
		mps: hardware.NewSimulatedMPS(""), slicer: &hardware.SimulatedTimeSlicer{},
	}
	// The driver's majors, as /proc/devices lists them on a node with the
	// UVM and capability modules loaded.
	writeFile(t, filepath.Join(e.procRoot, "devices"), testProcDevices)
	for gpu := range gpus {
		for gi := range maxTestGPUInstanceID {
			dir := filepath.Join(e.procRoot, "driver/nvidia/capabilities", fmt.Sprintf("gpu%d/mig/gi%d", gpu, gi))
			writeFile(t, filepath.Join(dir, "access"), fmt.Sprintf("DeviceFileMinor: %d\nDeviceFileMode: 292\n", capMinor(gpu, gi, -1)))
			writeFile(t, filepath.Join(dir, "ci0", "access"), fmt.Sprintf("DeviceFileMinor: %d\nDeviceFileMode: 292\n", capMinor(gpu, gi, 0)))
		}
	}
	return e
}

// testProcDevices is the fake driver's /proc/devices.
const testProcDevices = "Character devices:\n  1 mem\n195 nvidia-frontend\n236 nvidia-caps\n237 nvidia-uvm\n\nBlock devices:\n  8 sd\n"

// capMinor is the fake driver's capability minor of a GPU or compute instance.
func capMinor(gpu, gi, ci int) int { return 1000 + gpu*1000 + gi*10 + ci + 1 }

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// preparer starts a Preparer on the environment, as a plugin start would.
func (e *testEnv) preparer(ctx context.Context, opts ...Option) (*Preparer, error) {
	return newDiscovered(ctx, append([]Option{
		WithHardware(hardware.Node{NVML: e.lib, MPS: e.mps, TimeSlicer: e.slicer, DeviceNodes: hardware.DriverDevices(e.procRoot)}),
		WithNodeName(nodeName), WithCDIRoot(e.cdiRoot), WithStateDir(e.stateDir), WithDriverRoot("/"),
	}, opts...)...)
}

// newDiscovered is New on the node as discovered through the NVML that
// opts give it, as the plugin's start discovers it.
func newDiscovered(ctx context.Context, opts ...Option) (*Preparer, error) {
	var given Preparer
	for _, o := range opts {
		o(&given)
	}
	node, err := tnvml.DiscoverNode(ctx, given.nvml)
	if err != nil {
		return nil, err
	}
	return New(ctx, append(opts, WithInventory(node))...)
}

// withNVML, withMPS and withTimeSlicer replace one part of the hardware,
// for hand fakes of what the mock cannot do, or real MPS daemons.
func withNVML(lib tnvml.Library) Option { return func(p *Preparer) { p.nvml = lib } }

func withMPS(m sharing.MPSControl) Option { return func(p *Preparer) { p.mps = m } }

func withTimeSlicer(t sharing.TimeSlicer) Option { return func(p *Preparer) { p.slicer = t } }

func (e *testEnv) mustPreparer(ctx context.Context, opts ...Option) *Preparer {
	e.t.Helper()
	p, err := e.preparer(ctx, opts...)
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// nodeState is what can leak: MIG instances, CDI specs, MPS daemons,
// checkpointed claims and MIG modes.
type nodeState struct {
	// MIG lists "gpu/start+size" of every GPU instance, with its compute
	// instance count.
	MIG     []string
	MIGMode map[int]int
	CDI     []string
	Daemons []string
	Claims  map[string]checkpoint.State
}

func (e *testEnv) state() nodeState {
	e.t.Helper()
	st := nodeState{MIGMode: map[int]int{}, Claims: map[string]checkpoint.State{}}
	for i := range e.server.Devices {
		gpu := e.server.GPU(i)
		st.MIGMode[i] = gpu.MIGMode
		for _, gi := range gpu.Instances {
			st.MIG = append(st.MIG, fmt.Sprintf("gpu%d/%d+%d/ci=%d", i, gi.Start, gi.Size, gi.ComputeInstances))
		}
	}
	sort.Strings(st.MIG)
	w, err := tcdi.New(tcdi.WithRoot(e.cdiRoot))
	if err != nil {
		e.t.Fatal(err)
	}
	if st.CDI, err = w.Claims(); err != nil {
		e.t.Fatal(err)
	}
	daemons, _ := e.mps.List(context.Background())
	if len(daemons) > 0 {
		st.Daemons = sortedKeys(daemons)
	}
	store, _ := checkpoint.NewStore(e.stateDir)
	cp, err := store.Load()
	if err != nil {
		e.t.Fatal(err)
	}
	for uid, c := range cp.Claims {
		st.Claims[uid] = c.State
	}
	return st
}

// cleanState is a node with nothing prepared: MIG off on GPUs that toggle.
func (e *testEnv) cleanState() nodeState {
	st := nodeState{MIGMode: map[int]int{}, Claims: map[string]checkpoint.State{}}
	for i := range e.server.Devices {
		st.MIGMode[i] = 0
		if e.server.Model.MIGEnabled {
			st.MIGMode[i] = 1
		}
	}
	return st
}

// makeClaim starts a claim allocated on this test's node, named after uid.
func makeClaim(uid string) *builder.ClaimBuilder {
	return builder.MakeClaim("claim-" + uid).Namespace("ns").UID(uid).Pool(nodeName).Allocated()
}

func ref(c *resourceapi.ResourceClaim) kubeletplugin.NamespacedObject {
	return kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}, UID: c.UID}
}

const (
	timeSlicingLong = `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"TimeSlicing","timeSlicing":{"interval":"Long"}}}`
	mpsWhole        = `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"MPS","mps":{"defaultActiveThreadPercentage":50,"defaultPinnedDeviceMemoryLimit":"10Gi"}}}`
)
