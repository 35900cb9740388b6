package nvml

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// ProfileNamer returns the name of a GPU-instance profile, e.g. "1g.18gb".
// Real NVML reports names through the v3 profile-info call; go-nvml's mocks
// cannot answer that call, so the mock backends supply their own namer.
type ProfileNamer func(dev gonvml.Device, profileID int) (string, error)

// library implements Library on any nvml.Interface.
type library struct {
	nvml     gonvml.Interface
	namer    ProfileNamer
	pcieRoot func(busID string) string
	toggle   func(arch gonvml.DeviceArchitecture) bool

	// mu serialises MIG changes: NVML's MIG calls are not safe to interleave
	// on one GPU, and prepare runs claims concurrently.
	mu sync.Mutex
}

var _ Library = (*library)(nil)

// newLibrary initialises NVML and wraps it.
func newLibrary(lib gonvml.Interface, namer ProfileNamer, pcieRoot func(string) string) (*library, error) {
	if ret := lib.Init(); ret != gonvml.SUCCESS {
		return nil, check(ret, "initialise NVML")
	}
	return &library{nvml: lib, namer: namer, pcieRoot: pcieRoot, toggle: togglesWithoutReset}, nil
}

// togglesWithoutReset tells whether MIG mode can be switched on a GPU without
// a reset. NVML has no query for it: Ampere GPUs need a reset for the new mode
// to take effect, Hopper and later switch at once when no process uses the GPU.
func togglesWithoutReset(arch gonvml.DeviceArchitecture) bool {
	switch arch {
	case gonvml.DEVICE_ARCH_HOPPER, gonvml.DEVICE_ARCH_BLACKWELL, gonvml.DEVICE_ARCH_RUBIN:
		return true
	}
	return false
}

func (l *library) Shutdown() error {
	return check(l.nvml.Shutdown(), "shut down NVML")
}

func (l *library) Discover(ctx context.Context) (inventory.Node, error) {
	var node inventory.Node
	version, ret := l.nvml.SystemGetDriverVersion()
	if err := check(ret, "get driver version"); err != nil {
		return node, err
	}
	node.DriverVersion = version
	cuda, ret := l.nvml.SystemGetCudaDriverVersion()
	if err := check(ret, "get CUDA driver version"); err != nil {
		return node, err
	}
	node.CUDADriverVersion = fmt.Sprintf("%d.%d", cuda/1000, cuda%1000/10)

	count, ret := l.nvml.DeviceGetCount()
	if err := check(ret, "count GPUs"); err != nil {
		return node, err
	}
	lost := &PartialError{Failed: map[int]error{}}
	for i := range count {
		if err := ctx.Err(); err != nil {
			return node, err
		}
		dev, ret := l.nvml.DeviceGetHandleByIndex(i)
		if err := check(ret, "get GPU %d", i); err != nil {
			lost.Failed[i] = err
			continue
		}
		gpu, err := l.discoverGPU(dev, i)
		if err != nil {
			lost.Failed[i] = fmt.Errorf("discover GPU %d: %w", i, err)
			continue
		}
		node.GPUs = append(node.GPUs, gpu)
	}
	node.Sort()
	if len(lost.Failed) > 0 {
		return node, lost
	}
	return node, nil
}

// PartialError is Discover's error when some GPUs could not be discovered
// (fallen off the bus): the node it returns holds the others, so that one
// lost GPU does not stop the whole node.
type PartialError struct {
	// Failed holds each GPU index that failed, with why.
	Failed map[int]error
}

func (e *PartialError) Error() string {
	indexes := slices.Sorted(maps.Keys(e.Failed))
	errs := make([]error, 0, len(indexes))
	for _, i := range indexes {
		errs = append(errs, e.Failed[i])
	}
	return fmt.Sprintf("%d GPUs not discovered: %v", len(indexes), errors.Join(errs...))
}

// Usable returns nil when err is nil or a PartialError, whose node can be
// used, and err otherwise.
func Usable(err error) error {
	var partial *PartialError
	if errors.As(err, &partial) {
		return nil
	}
	return err
}

func (l *library) discoverGPU(dev gonvml.Device, index int) (inventory.GPU, error) {
	gpu := inventory.GPU{Index: index}
	var ret gonvml.Return
	if gpu.Minor, ret = dev.GetMinorNumber(); ret != gonvml.SUCCESS {
		return gpu, check(ret, "get minor number")
	}
	if gpu.UUID, ret = dev.GetUUID(); ret != gonvml.SUCCESS {
		return gpu, check(ret, "get UUID")
	}
	if gpu.ProductName, ret = dev.GetName(); ret != gonvml.SUCCESS {
		return gpu, check(ret, "get name")
	}
	brand, ret := dev.GetBrand()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get brand")
	}
	gpu.Brand = brandName(brand)
	arch, ret := dev.GetArchitecture()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get architecture")
	}
	gpu.Architecture = architectureName(arch)
	major, minor, ret := dev.GetCudaComputeCapability()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get CUDA compute capability")
	}
	gpu.CUDAComputeCapability = fmt.Sprintf("%d.%d", major, minor)
	mem, ret := dev.GetMemoryInfo()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get memory info")
	}
	gpu.MemoryBytes = mem.Total
	pci, ret := dev.GetPciInfo()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get PCI info")
	}
	gpu.PCIBusID = normalizePCIBusID(cString(pci.BusId[:]))
	if gpu.PCIBusID != "" && l.pcieRoot != nil {
		gpu.PCIeRoot = l.pcieRoot(gpu.PCIBusID)
	}

	current, _, ret := dev.GetMigMode()
	switch ret {
	case gonvml.SUCCESS:
		gpu.MIG.Capable = true
		gpu.MIG.Enabled = current == gonvml.DEVICE_MIG_ENABLE
		gpu.MIG.ToggleWithoutReset = l.toggle(arch)
	case gonvml.ERROR_NOT_SUPPORTED:
		return gpu, nil
	default:
		return gpu, check(ret, "get MIG mode")
	}
	profiles, err := l.discoverProfiles(dev)
	if err != nil {
		return gpu, err
	}
	gpu.MIG.Profiles = profiles
	for _, p := range profiles {
		gpu.Multiprocessors = max(gpu.Multiprocessors, p.Multiprocessors)
	}
	return gpu, nil
}

func (l *library) discoverProfiles(dev gonvml.Device) ([]inventory.MIGProfile, error) {
	var profiles []inventory.MIGProfile
	for id := range gonvml.GPU_INSTANCE_PROFILE_COUNT {
		info, ret := dev.GetGpuInstanceProfileInfo(id)
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_NOT_SUPPORTED, gonvml.ERROR_INVALID_ARGUMENT:
			continue // the GPU does not offer this profile
		default:
			return nil, check(ret, "get MIG profile %d", id)
		}
		if info.InstanceCount == 0 {
			continue
		}
		placements, ret := dev.GetGpuInstancePossiblePlacements(&info)
		if err := check(ret, "get placements of MIG profile %d", id); err != nil {
			return nil, err
		}
		name, err := l.namer(dev, id)
		if err != nil {
			return nil, fmt.Errorf("name MIG profile %d: %w", id, err)
		}
		p := inventory.MIGProfile{
			ID:              id,
			Name:            strings.TrimPrefix(name, "MIG "),
			SliceCount:      int(info.SliceCount),
			InstanceCount:   int(info.InstanceCount),
			MemoryBytes:     info.MemorySizeMB << 20,
			Multiprocessors: int(info.MultiprocessorCount),
			CopyEngines:     int(info.CopyEngineCount),
			Decoders:        int(info.DecoderCount),
			Encoders:        int(info.EncoderCount),
			JPEGEngines:     int(info.JpegCount),
			OFAEngines:      int(info.OfaCount),
		}
		for _, pl := range placements {
			p.Placements = append(p.Placements, inventory.Placement{Start: int(pl.Start), Size: int(pl.Size)})
		}
		profiles = append(profiles, p)
	}
	return profiles, nil
}

// realProfileName reads the profile name through NVML's v3 profile info.
func realProfileName(dev gonvml.Device, profileID int) (string, error) {
	info, ret := dev.GetGpuInstanceProfileInfoV(profileID).V3()
	if err := check(ret, "get MIG profile %d info v3", profileID); err != nil {
		return "", err
	}
	return cString(info.Name[:]), nil
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// normalizePCIBusID turns NVML's "00000000:3B:00.0" into the canonical
// "0000:3b:00.0" that sysfs and the Kubernetes pciBusID attribute use.
func normalizePCIBusID(id string) string {
	id = strings.ToLower(strings.TrimSpace(id))
	if domain, rest, ok := strings.Cut(id, ":"); ok && len(domain) > 4 {
		id = domain[len(domain)-4:] + ":" + rest
	}
	return id
}

func brandName(b gonvml.BrandType) string {
	switch b {
	case gonvml.BRAND_QUADRO:
		return "quadro"
	case gonvml.BRAND_TESLA:
		return "tesla"
	case gonvml.BRAND_NVS:
		return "nvs"
	case gonvml.BRAND_GRID:
		return "grid"
	case gonvml.BRAND_GEFORCE:
		return "geforce"
	case gonvml.BRAND_TITAN:
		return "titan"
	case gonvml.BRAND_NVIDIA:
		return "nvidia"
	case gonvml.BRAND_QUADRO_RTX:
		return "quadro-rtx"
	case gonvml.BRAND_NVIDIA_RTX:
		return "nvidia-rtx"
	}
	return "unknown"
}

func architectureName(a gonvml.DeviceArchitecture) string {
	switch a {
	case gonvml.DEVICE_ARCH_KEPLER:
		return "kepler"
	case gonvml.DEVICE_ARCH_MAXWELL:
		return "maxwell"
	case gonvml.DEVICE_ARCH_PASCAL:
		return "pascal"
	case gonvml.DEVICE_ARCH_VOLTA:
		return "volta"
	case gonvml.DEVICE_ARCH_TURING:
		return "turing"
	case gonvml.DEVICE_ARCH_AMPERE:
		return "ampere"
	case gonvml.DEVICE_ARCH_ADA:
		return "ada"
	case gonvml.DEVICE_ARCH_HOPPER:
		return "hopper"
	case gonvml.DEVICE_ARCH_BLACKWELL:
		return "blackwell"
	case gonvml.DEVICE_ARCH_RUBIN:
		return "rubin"
	}
	return "unknown"
}
