package cdi

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

func TestWriteRemove(t *testing.T) {
	root := t.TempDir()
	// The host's driver root: nothing of it exists on this machine, as
	// nothing of a host path need exist where the plugin runs.
	w, err := New(WithRoot(root), WithDriverRoot("/run/nvidia/driver"))
	if err != nil {
		t.Fatal(err)
	}
	claim := Claim{
		UID: "3f1c-uid",
		Env: []string{"NVIDIA_VISIBLE_DEVICES=GPU-a"},
		Devices: []Device{{
			Name: "gpu-0",
			DeviceNodes: []DeviceNode{
				{Path: "/dev/nvidia0", Major: 195, Minor: 0, FileMode: 0o666},
				{Path: "/dev/nvidiactl", Major: 195, Minor: 255, FileMode: 0o666},
				{Path: "/dev/nvidia-caps/nvidia-cap30", Major: 508, Minor: 30, FileMode: 0o444},
			},
			Env:    []string{"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20"},
			Mounts: []Mount{{HostPath: "/var/lib/tessera/mps/GPU-a", ContainerPath: "/tmp/nvidia-mps"}},
		}},
	}
	ids, err := w.Write(claim)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"gpu.tessera.dev/claim=3f1c-uid-gpu-0"}, ids); diff != "" {
		t.Errorf("device IDs (-want +got):\n%s", diff)
	}

	// The library itself must accept what was written.
	cache, err := cdi.NewCache(cdi.WithSpecDirs(root), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("CDI cache errors: %v", errs)
	}
	dev := cache.GetDevice(ids[0])
	if dev == nil {
		t.Fatalf("CDI cache has no device %s; devices: %v", ids[0], cache.ListDevices())
	}
	var hostPaths []string
	for _, n := range dev.ContainerEdits.DeviceNodes {
		hostPaths = append(hostPaths, n.HostPath)
	}
	want := []string{"/run/nvidia/driver/dev/nvidia0", "/run/nvidia/driver/dev/nvidiactl", "/run/nvidia/driver/dev/nvidia-caps/nvidia-cap30"}
	if diff := cmp.Diff(want, hostPaths); diff != "" {
		t.Errorf("host paths under the driver root (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"NVIDIA_VISIBLE_DEVICES=GPU-a"}, dev.GetSpec().ContainerEdits.Env); diff != "" {
		t.Errorf("claim env (-want +got):\n%s", diff)
	}

	// What a runtime does with the spec: although none of the host paths
	// exists, every node reaches the OCI spec with its numbers and mode,
	// from which runc creates it in the container.
	spec := &oci.Spec{}
	if _, err := cache.InjectDevices(spec, ids...); err != nil {
		t.Fatalf("inject the claim's devices with the host lacking every node: %v", err)
	}
	mode := func(m os.FileMode) *os.FileMode { return &m }
	wantDevices := []oci.LinuxDevice{
		{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0, FileMode: mode(0o666)},
		{Path: "/dev/nvidiactl", Type: "c", Major: 195, Minor: 255, FileMode: mode(0o666)},
		{Path: "/dev/nvidia-caps/nvidia-cap30", Type: "c", Major: 508, Minor: 30, FileMode: mode(0o444)},
	}
	if diff := cmp.Diff(wantDevices, spec.Linux.Devices); diff != "" {
		t.Errorf("OCI devices (-want +got):\n%s", diff)
	}

	uids, err := w.Claims()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"3f1c-uid"}, uids); diff != "" {
		t.Errorf("Claims() (-want +got):\n%s", diff)
	}
	if err := w.Remove("3f1c-uid"); err != nil {
		t.Fatal(err)
	}
	if err := w.Remove("3f1c-uid"); err != nil {
		t.Errorf("second Remove: %v, want nil", err)
	}
	entries, _ := os.ReadDir(root)
	if len(entries) != 0 {
		t.Errorf("CDI root not empty after Remove: %v", entries)
	}
}

// TestNodeWithoutNumbersNeedsTheHostFile shows why every node carries its
// numbers: a node given by path alone cannot be injected when the host
// lacks it.
func TestNodeWithoutNumbersNeedsTheHostFile(t *testing.T) {
	root := t.TempDir()
	w, err := New(WithRoot(root), WithDriverRoot(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := w.Write(Claim{UID: "u", Devices: []Device{{Name: "gpu-0", DeviceNodes: []DeviceNode{{Path: "/dev/nvidia-uvm"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(root), cdi.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cache.InjectDevices(&oci.Spec{}, ids...); err == nil {
		t.Error("a node without numbers whose host file is missing was injected")
	}
}
