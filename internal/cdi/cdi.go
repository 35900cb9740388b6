// Package cdi writes the Container Device Interface specs through which the
// container runtime hands prepared GPUs to containers: one transient spec per
// claim, written atomically through the CDI library's cache, validated by the
// library's own validation, and removed when the claim is unprepared.
package cdi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// Device is what a container gets for one allocated device.
type Device struct {
	// Name is unique within the claim; the DRA device name is a good one.
	Name string
	// DeviceNodes are the device nodes the container gets; the host side
	// of each is the same path under the host's driver root.
	DeviceNodes []DeviceNode
	// Env holds KEY=VALUE pairs that only this device sets.
	Env []string
	// Mounts are bind mounts the device needs (an MPS pipe directory).
	Mounts []Mount
}

// Mount is a read-write bind mount into the container.
type Mount struct {
	HostPath      string
	ContainerPath string
}

// Claim is everything the containers of one claim get.
type Claim struct {
	UID string
	// Env holds KEY=VALUE pairs set once for the claim, such as the list of
	// all its GPUs in NVIDIA_VISIBLE_DEVICES.
	Env     []string
	Devices []Device
}

// Writer writes and removes per-claim specs under one CDI root.
type Writer struct {
	cache      *cdi.Cache
	root       string
	driverRoot string
}

// Option configures a Writer.
type Option func(*Writer)

// WithRoot sets the CDI spec directory (default /var/run/cdi).
func WithRoot(dir string) Option { return func(w *Writer) { w.root = dir } }

// WithDriverRoot sets where the NVIDIA driver's /dev lives on the host
// (default /), e.g. /run/nvidia/driver with a containerised driver. It is
// the host's path, never where this process sees it: the container
// runtime reads the specs on the host.
func WithDriverRoot(dir string) Option { return func(w *Writer) { w.driverRoot = dir } }

// New returns a Writer.
func New(opts ...Option) (*Writer, error) {
	w := &Writer{root: "/var/run/cdi", driverRoot: "/"}
	for _, o := range opts {
		o(w)
	}
	if err := os.MkdirAll(w.root, 0o755); err != nil {
		return nil, fmt.Errorf("create CDI root %s: %w", w.root, err)
	}
	// Auto-refresh watches the directory with inotify; the plugin only
	// writes specs and never reads devices back, so it needs neither.
	cache, err := cdi.NewCache(cdi.WithSpecDirs(w.root), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("open CDI cache on %s: %w", w.root, err)
	}
	w.cache = cache
	return w, nil
}

// Root returns the CDI spec directory.
func (w *Writer) Root() string { return w.root }

// DeviceID is the fully qualified CDI device ID of a claim's device.
func DeviceID(claimUID, device string) string {
	return parser.QualifiedName(gpuapi.CDIVendor, gpuapi.CDIClass, deviceName(claimUID, device))
}

func deviceName(claimUID, device string) string { return claimUID + "-" + device }

// specName is the transient spec's file name without extension.
func specName(claimUID string) string {
	return cdi.GenerateTransientSpecName(gpuapi.CDIVendor, gpuapi.CDIClass, claimUID)
}

// Spec builds the CDI spec of a claim without writing it.
func (w *Writer) Spec(c Claim) (*cdispec.Spec, error) {
	if c.UID == "" {
		return nil, errors.New("CDI spec of a claim without UID")
	}
	spec := &cdispec.Spec{
		Kind:           gpuapi.CDIVendor + "/" + gpuapi.CDIClass,
		ContainerEdits: cdispec.ContainerEdits{Env: c.Env},
	}
	for _, d := range c.Devices {
		dev := cdispec.Device{
			Name:           deviceName(c.UID, d.Name),
			ContainerEdits: cdispec.ContainerEdits{Env: d.Env},
		}
		for _, n := range d.DeviceNodes {
			node := &cdispec.DeviceNode{
				Path:     n.Path,
				HostPath: filepath.Join(w.driverRoot, n.Path),
				Type:     "c",
			}
			if n.Major != 0 {
				// Fully specified: the runtime creates the node in the
				// container without the host's (CDI's fillMissingInfo
				// stats the host path only to fill in what is missing).
				mode := n.FileMode.Perm()
				node.Major, node.Minor, node.FileMode = n.Major, n.Minor, &mode
			}
			dev.ContainerEdits.DeviceNodes = append(dev.ContainerEdits.DeviceNodes, node)
		}
		for _, m := range d.Mounts {
			dev.ContainerEdits.Mounts = append(dev.ContainerEdits.Mounts, &cdispec.Mount{
				HostPath:      m.HostPath,
				ContainerPath: m.ContainerPath,
				Options:       []string{"rw", "nosuid", "nodev", "bind"},
			})
		}
		spec.Devices = append(spec.Devices, dev)
	}
	version, err := cdispec.MinimumRequiredVersion(spec)
	if err != nil {
		return nil, fmt.Errorf("CDI version of claim %s's spec: %w", c.UID, err)
	}
	spec.Version = version
	return spec, nil
}

// Write writes the claim's spec atomically (temp file and rename, through
// the CDI library, which validates it first) and returns the qualified CDI
// device IDs in the order of c.Devices.
func (w *Writer) Write(c Claim) ([]string, error) {
	spec, err := w.Spec(c)
	if err != nil {
		return nil, err
	}
	if err := w.cache.WriteSpec(spec, specName(c.UID)); err != nil {
		return nil, fmt.Errorf("write CDI spec of claim %s: %w", c.UID, err)
	}
	ids := make([]string, len(c.Devices))
	for i, d := range c.Devices {
		ids[i] = DeviceID(c.UID, d.Name)
	}
	return ids, nil
}

// Remove removes the claim's spec; a missing spec is not an error.
func (w *Writer) Remove(claimUID string) error {
	if err := w.cache.RemoveSpec(specName(claimUID)); err != nil {
		return fmt.Errorf("remove CDI spec of claim %s: %w", claimUID, err)
	}
	return nil
}

// Claims lists the UIDs of the claims that have a spec under the root,
// sorted, so that start-up can remove the specs of claims nobody holds.
func (w *Writer) Claims() ([]string, error) {
	entries, err := os.ReadDir(w.root)
	if err != nil {
		return nil, fmt.Errorf("list CDI root %s: %w", w.root, err)
	}
	prefix := specName("")
	var uids []string
	for _, e := range entries {
		name := e.Name()
		ext := filepath.Ext(name)
		if e.IsDir() || (ext != ".json" && ext != ".yaml") || !strings.HasPrefix(name, prefix) {
			continue
		}
		uids = append(uids, strings.TrimSuffix(strings.TrimPrefix(name, prefix), ext))
	}
	sort.Strings(uids)
	return uids, nil
}
