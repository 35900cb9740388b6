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
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/nvml/migprofile"
	"github.com/tessera-gpu/tessera/pkg/inventory"
)

// ProfileInfoV3 is NVML's versioned GPU-instance profile-info call
// (nvmlDeviceGetGpuInstanceProfileInfoV with a v3 structure), the only one
// that reports a profile's name. go-nvml binds its handler for the call to
// its cgo device type, so a mock answers it through this function instead;
// everything that interprets the answer is the same code for both.
type ProfileInfoV3 func(dev gonvml.Device, profileID int) (gonvml.GpuInstanceProfileInfo_v3, gonvml.Return)

// library implements Library on any nvml.Interface.
type library struct {
	nvml          gonvml.Interface
	profileInfoV3 ProfileInfoV3
	pcieRoot      func(busID string) string
	toggle        func(arch gonvml.DeviceArchitecture) bool

	// mu serialises MIG changes: NVML's MIG calls are not safe to interleave
	// on one GPU, and prepare runs claims concurrently.
	mu sync.Mutex
	// frozen holds, by GPU UUID, why Tessera no longer changes that GPU's
	// MIG mode: a change that needed a reset (see SetMIGMode). Guarded by mu.
	frozen map[string]error
	// misnamed remembers the profiles whose NVML name differed from
	// Tessera's table, so that the difference is logged once.
	misnamed sync.Map
	// watch configures XID watching (see WatchXIDs).
	watch watchOptions
}

var _ Library = (*library)(nil)

// newLibrary initialises NVML and wraps it.
func newLibrary(lib gonvml.Interface, v3 ProfileInfoV3, pcieRoot func(string) string) (*library, error) {
	if ret := lib.Init(); ret != gonvml.SUCCESS {
		return nil, check(ret, "initialise NVML")
	}
	return &library{
		nvml: lib, profileInfoV3: v3, pcieRoot: pcieRoot, toggle: togglesWithoutReset,
		frozen: map[string]error{}, watch: defaultWatchOptions(),
	}, nil
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
		gpu, err := l.discoverGPU(ctx, dev, i)
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

func (l *library) discoverGPU(ctx context.Context, dev gonvml.Device, index int) (inventory.GPU, error) {
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
	var err error
	if gpu.MemoryBytes, err = memoryBytes(dev); err != nil {
		return gpu, err
	}
	pci, ret := dev.GetPciInfo()
	if ret != gonvml.SUCCESS {
		return gpu, check(ret, "get PCI info")
	}
	gpu.PCIBusID = normalizePCIBusID(cString(pci.BusId[:]))
	if gpu.PCIBusID != "" && l.pcieRoot != nil {
		gpu.PCIeRoot = l.pcieRoot(gpu.PCIBusID)
	}

	current, pending, ret := dev.GetMigMode()
	switch ret {
	case gonvml.SUCCESS:
		gpu.MIG.Capable = true
		gpu.MIG.Enabled = current == gonvml.DEVICE_MIG_ENABLE
		// A GPU whose mode waits for a reset, or whose last change
		// needed one, keeps the mode it is in: it offers what that mode
		// allows.
		gpu.MIG.ToggleWithoutReset = l.toggle(arch) && current == pending && !l.isFrozen(gpu.UUID)
	case gonvml.ERROR_NOT_SUPPORTED:
		return gpu, nil
	default:
		return gpu, check(ret, "get MIG mode")
	}
	profiles, err := l.discoverProfiles(ctx, dev, gpu.ProductName, gpu.MIG.Enabled)
	if err != nil {
		return gpu, err
	}
	gpu.MIG.Profiles = profiles
	var largest uint64
	for _, p := range profiles {
		gpu.Multiprocessors = max(gpu.Multiprocessors, p.Multiprocessors)
		largest = max(largest, p.MemoryBytes)
	}
	if gpu.MemoryBytes == 0 {
		// No memory info: the full-GPU profile's memory is what a claim
		// of the whole GPU can count on.
		gpu.MemoryBytes = largest
	}
	return gpu, nil
}

// memoryBytes returns the GPU's total memory, 0 where NVML cannot tell.
// nvml.h documents NVML_ERROR_NOT_SUPPORTED from both memory-info calls "if
// video memory is unsupported on the device", and, in MIG mode, aggregate
// information "only if the caller has appropriate privileges": neither may
// cost the node its GPU.
func memoryBytes(dev gonvml.Device) (uint64, error) {
	mem, ret := dev.GetMemoryInfo()
	switch ret {
	case gonvml.SUCCESS:
		return mem.Total, nil
	case gonvml.ERROR_NOT_SUPPORTED, gonvml.ERROR_NO_PERMISSION:
	default:
		return 0, check(ret, "get memory info")
	}
	mem2, ret := dev.GetMemoryInfo_v2()
	switch ret {
	case gonvml.SUCCESS:
		return mem2.Total, nil
	case gonvml.ERROR_NOT_SUPPORTED, gonvml.ERROR_NO_PERMISSION:
		return 0, nil
	}
	return 0, check(ret, "get memory info v2")
}

// discoverProfiles reads the GPU's MIG profiles from the v1 profile info,
// which NVML answers whatever the MIG mode, and names them from Tessera's
// table (migprofile). The versioned call that carries NVML's own names is
// NOT_SUPPORTED while MIG mode is off; while it is on, its names are checked
// against the table, and name the profiles of products the table lacks.
func (l *library) discoverProfiles(ctx context.Context, dev gonvml.Device, product string, migOn bool) ([]inventory.MIGProfile, error) {
	logger := klog.FromContext(ctx)
	table, _ := migprofile.Names(product) // nil for a product Tessera does not know
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
		name, named := table[id]
		if migOn {
			v3, ret := l.profileInfoV3(dev, id)
			reported := strings.TrimPrefix(cString(v3.Name[:]), "MIG ")
			switch {
			case ret != gonvml.SUCCESS:
				logger.V(2).Info("NVML does not name a MIG profile", "product", product, "profile", id, "err", check(ret, "get MIG profile %d info v3", id))
			case !named:
				name, named = reported, reported != ""
			case reported != name:
				// The table wins: device names must not change when MIG
				// mode does, and the table is what names them while it
				// is off. The difference is a fault of the table.
				if _, seen := l.misnamed.LoadOrStore(fmt.Sprintf("%s/%d", product, id), true); !seen {
					logger.Error(nil, "NVML names a MIG profile differently from Tessera's table; publishing the table's name",
						"product", product, "profile", id, "nvml", reported, "table", name)
				}
			}
		}
		if !named {
			logger.V(2).Info("Not offering a MIG profile that has no name yet", "product", product, "profile", id, "migEnabled", migOn)
			continue
		}
		p := inventory.MIGProfile{
			ID:              id,
			Name:            name,
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

// realProfileInfoV3 is ProfileInfoV3 on real NVML.
func realProfileInfoV3(dev gonvml.Device, profileID int) (gonvml.GpuInstanceProfileInfo_v3, gonvml.Return) {
	return dev.GetGpuInstanceProfileInfoV(profileID).V3()
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
