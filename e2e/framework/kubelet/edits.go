package kubelet

import (
	"fmt"
	"os"
	"slices"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// EditsAnnotation is the pod annotation in which the stand-in records, per
// container, what the container runtime would have given the container.
const EditsAnnotation = "e2e.tessera.dev/container-edits"

// ContainerEdits is what one container gets from its CDI devices.
type ContainerEdits struct {
	// CDIDevices are the fully qualified CDI device names the plugin returned.
	CDIDevices []string `json:"cdiDevices"`
	// Env holds KEY=VALUE entries.
	Env []string `json:"env"`
	// DeviceNodes are the device paths inside the container.
	DeviceNodes []string `json:"deviceNodes"`
	// Mounts are hostPath:containerPath pairs.
	Mounts []string `json:"mounts"`
}

// MountSourceError is a CDI mount whose host path does not exist. A real
// runtime fails the container's start on it (runc: "error mounting ... to
// rootfs at ...: stat ...: no such file or directory"), so the stand-in does.
type MountSourceError struct {
	HostPath, ContainerPath string
	Err                     error
}

func (e *MountSourceError) Error() string {
	return fmt.Sprintf("error mounting %q to rootfs at %q: %v", e.HostPath, e.ContainerPath, e.Err)
}

func (e *MountSourceError) Unwrap() error { return e.Err }

// resolveEdits looks devices up in the CDI spec directories and merges their edits
// (spec-wide edits once per spec, then the device's own) in the order a runtime
// applies them. Like a runtime it refuses a mount whose host path does not
// exist (a *MountSourceError). It does not apply the edits to an OCI spec, and
// so does not check device nodes, because that stats host device nodes, which
// a machine without GPUs lacks (docs/node-e2e.md).
func resolveEdits(cdiRoot string, devices []string) (ContainerEdits, error) {
	edits := ContainerEdits{CDIDevices: devices, Env: []string{}, DeviceNodes: []string{}, Mounts: []string{}}
	if len(devices) == 0 {
		return edits, nil
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(cdiRoot), cdi.WithAutoRefresh(false))
	if err != nil {
		return edits, fmt.Errorf("read CDI specs in %s: %w", cdiRoot, err)
	}
	seenSpecs := map[*cdi.Spec]bool{}
	for _, id := range devices {
		d := cache.GetDevice(id)
		if d == nil {
			errs := cache.GetErrors()
			return edits, fmt.Errorf("CDI device %s not found in %s (spec errors: %v)", id, cdiRoot, errs)
		}
		if spec := d.GetSpec(); !seenSpecs[spec] {
			seenSpecs[spec] = true
			if err := edits.add(spec.ContainerEdits.Env, spec.ContainerEdits.DeviceNodes, spec.ContainerEdits.Mounts); err != nil {
				return edits, err
			}
		}
		if err := edits.add(d.ContainerEdits.Env, d.ContainerEdits.DeviceNodes, d.ContainerEdits.Mounts); err != nil {
			return edits, err
		}
	}
	return edits, nil
}

func (e *ContainerEdits) add(env []string, nodes []*cdispec.DeviceNode, mounts []*cdispec.Mount) error {
	for _, kv := range env {
		if !slices.Contains(e.Env, kv) {
			e.Env = append(e.Env, kv)
		}
	}
	for _, n := range nodes {
		if n != nil && !slices.Contains(e.DeviceNodes, n.Path) {
			e.DeviceNodes = append(e.DeviceNodes, n.Path)
		}
	}
	for _, m := range mounts {
		if m == nil {
			continue
		}
		if _, err := os.Stat(m.HostPath); err != nil {
			return &MountSourceError{HostPath: m.HostPath, ContainerPath: m.ContainerPath, Err: err}
		}
		if s := m.HostPath + ":" + m.ContainerPath; !slices.Contains(e.Mounts, s) {
			e.Mounts = append(e.Mounts, s)
		}
	}
	return nil
}
