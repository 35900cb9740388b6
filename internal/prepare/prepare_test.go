package prepare

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	"github.com/tessera-gpu/tessera/internal/metrics"
)

// cdiView is what the container runtime would see of a claim's CDI device.
type cdiView struct {
	Env         []string
	DeviceNodes []string
	Mounts      []string
}

func viewCDI(t *testing.T, root, id string) cdiView {
	t.Helper()
	cache, err := cdi.NewCache(cdi.WithSpecDirs(root), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI specs do not validate: %v", errs)
	}
	dev := cache.GetDevice(id)
	if dev == nil {
		t.Fatalf("no CDI device %s; have %v", id, cache.ListDevices())
	}
	var v cdiView
	v.Env = dev.GetSpec().ContainerEdits.Env
	for _, n := range dev.ContainerEdits.DeviceNodes {
		v.DeviceNodes = append(v.DeviceNodes, n.Path)
	}
	for _, m := range dev.ContainerEdits.Mounts {
		v.Mounts = append(v.Mounts, m.HostPath+":"+m.ContainerPath)
	}
	return v
}

func TestPrepareDevices(t *testing.T) {
	for name, tc := range map[string]struct {
		claim       *resourceapi.ResourceClaim
		wantMIG     []string
		wantDaemons []string // GPU indexes
		wantSlice   map[int]configapi.TimeSliceInterval
		// want is the CDI view of the claim's first device; UUID
		// placeholders {gpuN} and {migN} are filled in.
		want cdiView
	}{
		"whole GPU": {
			claim: makeClaim("whole").Device("gpu", "gpu-2").Obj(),
			want: cdiView{
				Env:         []string{"NVIDIA_VISIBLE_DEVICES={gpu2}", "CUDA_VISIBLE_DEVICES={gpu2}"},
				DeviceNodes: []string{"/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
			},
		},
		"MIG partition": {
			claim:   makeClaim("mig").Device("mig", "gpu-1-mig-1g18gb-3").Obj(),
			wantMIG: []string{"gpu1/3+1/ci=1"},
			want: cdiView{
				Env: []string{"NVIDIA_VISIBLE_DEVICES={mig}", "CUDA_VISIBLE_DEVICES={mig}"},
				DeviceNodes: []string{"/dev/nvidia1",
					fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", capMinor(1, 0, -1)),
					fmt.Sprintf("/dev/nvidia-caps/nvidia-cap%d", capMinor(1, 0, 0)),
					"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
			},
		},
		"share defaults to MPS with the share's limits": {
			claim:       makeClaim("share").Share("s", "gpu-3-shared", "20Gi", "30", "share-1").Obj(),
			wantDaemons: []string{"share"},
			want: cdiView{
				Env: []string{"NVIDIA_VISIBLE_DEVICES={gpu3}", "CUDA_VISIBLE_DEVICES={gpu3}", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
					"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=20480M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30"},
				DeviceNodes: []string{"/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
				Mounts:      []string{"{state}/mps/share/pipe:/tmp/nvidia-mps", "{state}/mps/share/shm:/dev/shm"},
			},
		},
		"share with time slicing from its class": {
			claim: makeClaim("ts").Share("s", "gpu-4-shared", "1Gi", "10", "share-2").
				Config(resourceapi.AllocationConfigSourceClass, timeSlicingLong).Obj(),
			wantSlice: map[int]configapi.TimeSliceInterval{4: configapi.LongTimeSlice},
			want: cdiView{
				Env:         []string{"NVIDIA_VISIBLE_DEVICES={gpu4}", "CUDA_VISIBLE_DEVICES={gpu4}"},
				DeviceNodes: []string{"/dev/nvidia4", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
			},
		},
		"claim config wins over class config": {
			claim: makeClaim("override").Device("gpu", "gpu-5").
				Config(resourceapi.AllocationConfigSourceClaim, mpsWhole).
				Config(resourceapi.AllocationConfigSourceClass, timeSlicingLong).Obj(),
			wantDaemons: []string{"override"},
			want: cdiView{
				Env: []string{"NVIDIA_VISIBLE_DEVICES={gpu5}", "CUDA_VISIBLE_DEVICES={gpu5}", "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
					"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50"},
				DeviceNodes: []string{"/dev/nvidia5", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"},
				Mounts:      []string{"{state}/mps/override/pipe:/tmp/nvidia-mps", "{state}/mps/override/shm:/dev/shm"},
			},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 8)
			p := e.mustPreparer(ctx)
			res := p.Prepare(ctx, tc.claim)
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			uid := string(tc.claim.UID)
			r := tc.claim.Status.Allocation.Devices.Results[0]
			wantDev := kubeletplugin.Device{Requests: []string{r.Request}, PoolName: nodeName, DeviceName: r.Device,
				CDIDeviceIDs: []string{"gpu.tessera.dev/claim=" + uid + "-" + r.Device}, ShareID: r.ShareID}
			if diff := cmp.Diff(kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{wantDev}}, res, cmpopts.EquateErrors()); diff != "" {
				t.Errorf("Prepare (-want +got):\n%s", diff)
			}

			st := e.state()
			if diff := cmp.Diff(tc.wantMIG, st.MIG); diff != "" {
				t.Errorf("MIG instances (-want +got):\n%s", diff)
			}
			repl := []string{"{state}", e.stateDir}
			for i := range e.server.Devices {
				uuid, _ := e.server.Devices[i].GetUUID()
				repl = append(repl, fmt.Sprintf("{gpu%d}", i), uuid)
			}
			if len(tc.wantMIG) > 0 {
				migs, err := e.lib.MIGDevices(ctx, 1)
				if err != nil || len(migs) != 1 {
					t.Fatalf("MIG devices of GPU 1: %v, %v", migs, err)
				}
				repl = append(repl, "{mig}", migs[0].UUID)
			}
			r2 := strings.NewReplacer(repl...)
			fill := func(in []string) []string {
				var out []string
				for _, s := range in {
					out = append(out, r2.Replace(s))
				}
				return out
			}
			want := cdiView{Env: fill(tc.want.Env), DeviceNodes: fill(tc.want.DeviceNodes), Mounts: fill(tc.want.Mounts)}
			if diff := cmp.Diff(want, viewCDI(t, e.cdiRoot, wantDev.CDIDeviceIDs[0])); diff != "" {
				t.Errorf("CDI device (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(fill(tc.wantDaemons), st.Daemons); diff != "" {
				t.Errorf("MPS daemons (-want +got):\n%s", diff)
			}
			for gpu, interval := range tc.wantSlice {
				uuid, _ := e.server.Devices[gpu].GetUUID()
				if got := e.slicer.Interval(uuid); got != interval {
					t.Errorf("time slice of GPU %d = %s, want %s", gpu, got, interval)
				}
			}

			// Idempotent: a second prepare returns the same and makes nothing.
			if diff := cmp.Diff(res, p.Prepare(ctx, tc.claim), cmpopts.EquateErrors()); diff != "" {
				t.Errorf("second Prepare (-first +second):\n%s", diff)
			}
			if diff := cmp.Diff(st, e.state()); diff != "" {
				t.Errorf("second Prepare changed the node (-before +after):\n%s", diff)
			}

			for range 2 {
				if err := p.Unprepare(ctx, ref(tc.claim)); err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("after Unprepare (-want +got):\n%s", diff)
			}
			for i := range e.server.Devices {
				uuid, _ := e.server.Devices[i].GetUUID()
				if got := e.slicer.Interval(uuid); got != configapi.DefaultTimeSlice {
					t.Errorf("time slice of GPU %d after Unprepare = %s, want Default", i, got)
				}
			}
		})
	}
}

func TestOtherDriversDevicesAreLeftAlone(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 1)
	p := e.mustPreparer(ctx)
	c := makeClaim("nic").Obj()
	c.Status.Allocation.Devices.Results = []resourceapi.DeviceRequestAllocationResult{{Request: "nic", Driver: "dra.net", Pool: nodeName, Device: "eth1"}}
	res := p.Prepare(ctx, c)
	if diff := cmp.Diff(kubeletplugin.PrepareResult{Devices: []kubeletplugin.Device{}}, res, cmpopts.EquateErrors()); diff != "" {
		t.Errorf("Prepare (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(e.cleanState(), e.state(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("node changed (-want +got):\n%s", diff)
	}
}

func TestBadConfigFailsOnlyThatClaim(t *testing.T) {
	for name, tc := range map[string]struct {
		claim   *resourceapi.ResourceClaim
		wantErr []string
	}{
		"unknown field": {
			claim: makeClaim("bad1").Share("s", "gpu-0-shared", "1Gi", "10", "x").
				Config(resourceapi.AllocationConfigSourceClaim, `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"MPS","mpss":{}}}`).Obj(),
			wantErr: []string{"opaque config 0 (from FromClaim)", `unknown field "sharing.mpss"`},
		},
		"invalid value": {
			claim: makeClaim("bad2").Device("gpu", "gpu-0").
				Config(resourceapi.AllocationConfigSourceClaim, `{"apiVersion":"config.gpu.tessera.dev/v1alpha1","kind":"GPUConfig","sharing":{"strategy":"MPS","mps":{"defaultActiveThreadPercentage":101}}}`, "gpu").Obj(),
			wantErr: []string{"requests gpu", "sharing.mps.defaultActiveThreadPercentage"},
		},
		"wrong kind for the request": {
			claim: makeClaim("bad3").Device("mig", "gpu-0-mig-1g18gb-0").
				Config(resourceapi.AllocationConfigSourceClaim, timeSlicingLong, "mig").Obj(),
			wantErr: []string{"a GPUConfig cannot configure MIG device gpu-0-mig-1g18gb-0"},
		},
		"unknown device": {
			claim:   makeClaim("bad4").Device("gpu", "gpu-99").Obj(),
			wantErr: []string{"device gpu-99 of request gpu is not a device of this node"},
		},
		"not allocated": {
			claim:   &resourceapi.ResourceClaim{},
			wantErr: []string{"not allocated"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 2)
			p := e.mustPreparer(ctx)
			good := makeClaim("good").Device("mig", "gpu-1-mig-1g18gb-0").Obj()
			// The kubelet batches claims: both go through one call.
			results, err := driverBatch(ctx, p, tc.claim, good)
			if err != nil {
				t.Fatal(err)
			}
			bad := results[tc.claim.UID].Err
			if bad == nil {
				t.Fatal("bad claim prepared without error")
			}
			for _, s := range tc.wantErr {
				if !strings.Contains(bad.Error(), s) {
					t.Errorf("error %q does not mention %q", bad, s)
				}
			}
			if err := results[good.UID].Err; err != nil {
				t.Errorf("good claim failed beside a bad one: %v", err)
			}
			st := e.state()
			if diff := cmp.Diff([]string{"good"}, st.CDI); diff != "" {
				t.Errorf("CDI specs (-want +got):\n%s", diff)
			}
			if _, ok := st.Claims[string(tc.claim.UID)]; ok {
				t.Errorf("bad claim left in the checkpoint")
			}
		})
	}
}

// driverBatch prepares claims the way the plugin's driver does.
func driverBatch(ctx context.Context, p *Preparer, claims ...*resourceapi.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := map[types.UID]kubeletplugin.PrepareResult{}
	for _, c := range claims {
		out[c.UID] = p.Prepare(ctx, c)
	}
	return out, nil
}

func TestMIGMode(t *testing.T) {
	for name, tc := range map[string]struct {
		model      string
		device     string
		wantDuring int
		wantAfter  int
	}{
		"H200 switches on demand": {model: "dgxh200", device: "gpu-0-mig-3g71gb-4", wantDuring: 1, wantAfter: 0},
		"A100 stays on":           {model: "dgxa100", device: "gpu-0-mig-3g20gb-4", wantDuring: 1, wantAfter: 1},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, tc.model, 1)
			p := e.mustPreparer(ctx)
			a := makeClaim("a").Device("mig", tc.device).Obj()
			b := makeClaim("b").Device("mig", p.firstMIGDevice(0, 0)).Obj()
			for _, c := range []*resourceapi.ResourceClaim{a, b} {
				if res := p.Prepare(ctx, c); res.Err != nil {
					t.Fatal(res.Err)
				}
			}
			if got := e.state().MIGMode[0]; got != tc.wantDuring {
				t.Errorf("MIG mode with partitions = %d, want %d", got, tc.wantDuring)
			}
			if err := p.Unprepare(ctx, ref(a)); err != nil {
				t.Fatal(err)
			}
			if got := e.state().MIGMode[0]; got != 1 {
				t.Errorf("MIG mode with one partition left = %d, want 1", got)
			}
			if err := p.Unprepare(ctx, ref(b)); err != nil {
				t.Fatal(err)
			}
			if got := e.state().MIGMode[0]; got != tc.wantAfter {
				t.Errorf("MIG mode without partitions = %d, want %d", got, tc.wantAfter)
			}
		})
	}
}

// firstMIGDevice names the first 1-slice partition at the start on a GPU.
func (p *Preparer) firstMIGDevice(gpu, start int) string {
	for name, d := range p.devices {
		if d.gpu.Index == gpu && d.device.Profile != nil && d.device.Profile.ID == 0 && d.device.Placement.Start == start {
			return name
		}
	}
	return ""
}

// TestCorruptCheckpoint: a plugin that cannot read its checkpoint refuses
// to start and leaves every device as it is.
func TestCorruptCheckpoint(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":         "\x00garbage",
		"unknown version": `{"version":"v7","claims":{}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			e := newTestEnv(t, "dgxh200", 1)
			p := e.mustPreparer(ctx)
			c := makeClaim("in-use").Device("mig", "gpu-0-mig-1g18gb-2").Obj()
			if res := p.Prepare(ctx, c); res.Err != nil {
				t.Fatal(res.Err)
			}
			before := e.state()
			writeFile(t, filepath.Join(e.stateDir, checkpoint.FileName), content)
			_, err := e.preparer(ctx)
			if err == nil {
				t.Fatal("New() succeeded on a bad checkpoint")
			}
			if !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), filepath.Join(e.stateDir, checkpoint.FileName)) {
				t.Errorf("error %q does not say what is wrong and where", err)
			}
			if got := e.stateMIGAndCDI(); !cmp.Equal(got, [2][]string{before.MIG, before.CDI}) {
				t.Errorf("devices changed after a refused start: %v, before %v %v", got, before.MIG, before.CDI)
			}
		})
	}
}

func (e *testEnv) stateMIGAndCDI() [2][]string {
	// state() loads the checkpoint, which is corrupt here.
	orig := e.stateDir
	e.stateDir = e.t.(*testing.T).TempDir()
	defer func() { e.stateDir = orig }()
	st := e.state()
	return [2][]string{st.MIG, st.CDI}
}

func TestMetricsFollowPrepare(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	e := newTestEnv(t, "dgxh200", 2)
	m := metrics.New()
	p := e.mustPreparer(ctx, WithMetrics(m))
	c := makeClaim("m").Device("mig", "gpu-0-mig-1g18gb-0").Share("s", "gpu-1-shared", "1Gi", "5", "x").Obj()
	if res := p.Prepare(ctx, c); res.Err != nil {
		t.Fatal(res.Err)
	}
	families, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			key := f.GetName()
			for _, l := range mt.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case mt.GetGauge() != nil:
				got[key] = mt.GetGauge().GetValue()
			case mt.GetHistogram() != nil:
				got[key] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	want := map[string]float64{
		"tessera_prepared_devices,kind=mig":           1,
		"tessera_prepared_devices,kind=shared":        1,
		"tessera_prepared_devices,kind=gpu":           0,
		"tessera_mig_instances":                       1,
		"tessera_mps_daemons":                         1,
		"tessera_prepare_duration_seconds,kind=mixed": 1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}
