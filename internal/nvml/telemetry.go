package nvml

import (
	"context"
	"fmt"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Telemetry is implemented by Library implementations that read what GPUs
// are doing, for the per-claim metrics. It is a separate interface, as
// Health is, so that Library stays small for its fakes. GPUs are named by
// UUID: an index shifts when another GPU fails to probe, a UUID does not.
// Each reading leaves out (nil) what NVML does not report for the device,
// as nvml.h allows: a value NVML cannot give is never shown as 0.
type Telemetry interface {
	// GPUUsage reads one whole GPU: utilization, memory and energy.
	GPUUsage(ctx context.Context, gpuUUID string) (GPUUsage, error)
	// MIGUsage reads one MIG instance (GPU instance gpuInstanceID of the
	// GPU): its memory, and its utilization over the time since prev, a
	// GPM sample MIGUsage returned before for the same instance (nil the
	// first time). The caller keeps the returned sample for the next call
	// and frees it (GPMSample.Free) once the instance is no longer read.
	MIGUsage(ctx context.Context, gpuUUID string, gpuInstanceID int, prev *GPMSample) (MIGUsage, *GPMSample, error)
	// Processes lists the compute processes on a GPU with the memory each
	// uses, and their utilization from the samples NVML took after since
	// (a timestamp in microseconds; 0 for every sample NVML keeps). It
	// returns the newest sample's timestamp, to pass as since next time.
	Processes(ctx context.Context, gpuUUID string, since uint64) ([]ProcessUsage, uint64, error)
}

var _ Telemetry = (*library)(nil)

// GPUUsage is what NVML reports for a whole GPU; nil fields are not
// reported by the GPU.
type GPUUsage struct {
	// Utilization is the fraction of the last sample period in which a
	// kernel ran (nvmlUtilization_t.gpu / 100).
	Utilization *float64
	// MemoryUsedBytes and MemoryTotalBytes are the device memory in use
	// and in all.
	MemoryUsedBytes, MemoryTotalBytes *uint64
	// EnergyMillijoules is the energy used since the driver was loaded.
	EnergyMillijoules *uint64
}

// MIGUsage is what NVML reports for one MIG instance; nil fields are not
// reported.
type MIGUsage struct {
	// Utilization is the fraction of time in which any work ran on the
	// instance (GPM's graphics activity / 100) between two samples.
	Utilization *float64
	// MemoryUsedBytes and MemoryTotalBytes are the instance's memory in use
	// and in all, from its MIG device handle.
	MemoryUsedBytes, MemoryTotalBytes *uint64
}

// ProcessUsage is one compute process on a GPU.
type ProcessUsage struct {
	// PID is as NVML reports it (which PID namespace it is counted in
	// on a node is not verified: see docs/observability.md).
	PID uint32
	// MemoryUsedBytes is the device memory the process uses.
	MemoryUsedBytes uint64
	// SMUtilization is the mean of its SM utilization samples since the
	// last read, as a fraction; nil when NVML has no sample for it ("One
	// utilization sample structure is returned per process running, that
	// had some non-zero utilization during the last sample period").
	SMUtilization *float64
}

// GPMSample is a GPU performance-monitoring sample of one MIG instance,
// kept between two MIGUsage calls.
type GPMSample struct {
	sample gonvml.GpmSample
}

// Free releases the sample's NVML buffer. Safe on nil.
func (s *GPMSample) Free() {
	if s != nil && s.sample != nil {
		_ = s.sample.Free()
	}
}

func (l *library) deviceByUUID(uuid string) (gonvml.Device, error) {
	dev, ret := l.nvml.DeviceGetHandleByUUID(uuid)
	return dev, check(ret, "get GPU %s", uuid)
}

// optional turns a read's result into a value, nil where nvml.h documents
// that the device does not report it (NOT_SUPPORTED, and NO_PERMISSION for
// aggregate reads in MIG mode), or an error.
func optional[T any](v T, ret gonvml.Return, op string, args ...any) (*T, error) {
	switch ret {
	case gonvml.SUCCESS:
		return &v, nil
	case gonvml.ERROR_NOT_SUPPORTED, gonvml.ERROR_NO_PERMISSION:
		return nil, nil
	}
	return nil, check(ret, op, args...)
}

func (l *library) GPUUsage(_ context.Context, gpuUUID string) (GPUUsage, error) {
	var out GPUUsage
	dev, err := l.deviceByUUID(gpuUUID)
	if err != nil {
		return out, err
	}
	// nvmlDeviceGetUtilizationRates: "On MIG-enabled GPUs, querying device
	// utilization rates is not currently supported."
	util, ret := dev.GetUtilizationRates()
	rate, err := optional(util, ret, "get utilization of GPU %s", gpuUUID)
	if err != nil {
		return out, err
	}
	if rate != nil {
		f := float64(rate.Gpu) / 100
		out.Utilization = &f
	}
	mem, ret := dev.GetMemoryInfo()
	m, err := optional(mem, ret, "get memory info of GPU %s", gpuUUID)
	if err != nil {
		return out, err
	}
	if m != nil {
		out.MemoryUsedBytes, out.MemoryTotalBytes = &m.Used, &m.Total
	}
	// nvmlDeviceGetTotalEnergyConsumption: "total energy consumption for
	// this GPU in millijoules (mJ) since the driver was last reloaded",
	// NOT_SUPPORTED "if the device does not support energy readings".
	energy, ret := dev.GetTotalEnergyConsumption()
	if out.EnergyMillijoules, err = optional(energy, ret, "get energy of GPU %s", gpuUUID); err != nil {
		return out, err
	}
	return out, nil
}

func (l *library) MIGUsage(_ context.Context, gpuUUID string, gpuInstanceID int, prev *GPMSample) (MIGUsage, *GPMSample, error) {
	var out MIGUsage
	dev, err := l.deviceByUUID(gpuUUID)
	if err != nil {
		return out, nil, err
	}
	if mig, err := l.migHandle(dev, gpuInstanceID); err != nil {
		return out, nil, fmt.Errorf("GPU instance %d on GPU %s: %w", gpuInstanceID, gpuUUID, err)
	} else if mig != nil {
		// nvmlDeviceGetMemoryInfo on a MIG device handle reports the
		// instance's own memory.
		mem, ret := mig.GetMemoryInfo()
		m, err := optional(mem, ret, "get memory info of GPU instance %d on GPU %s", gpuInstanceID, gpuUUID)
		if err != nil {
			return out, nil, err
		}
		if m != nil {
			out.MemoryUsedBytes, out.MemoryTotalBytes = &m.Used, &m.Total
		}
	}
	// GPM is "For Hopper or newer fully supported devices";
	// nvmlGpmQueryDeviceSupport says whether this one is.
	support, ret := l.nvml.GpmQueryDeviceSupport(dev)
	if ret != gonvml.SUCCESS || support.IsSupportedDevice == 0 {
		return out, nil, nil
	}
	sample, ret := l.nvml.GpmSampleAlloc()
	if err := check(ret, "allocate GPM sample"); err != nil {
		return out, nil, err
	}
	next := &GPMSample{sample: sample}
	if ret := l.nvml.GpmMigSampleGet(dev, gpuInstanceID, sample); ret != gonvml.SUCCESS {
		next.Free()
		return out, nil, check(ret, "get GPM sample of GPU instance %d on GPU %s", gpuInstanceID, gpuUUID)
	}
	if prev == nil || prev.sample == nil {
		return out, next, nil // a rate needs two samples
	}
	get := &gonvml.GpmMetricsGetType{NumMetrics: 1, Sample1: prev.sample, Sample2: sample}
	get.Metrics[0].MetricId = uint32(gonvml.GPM_METRIC_GRAPHICS_UTIL)
	if ret := l.nvml.GpmMetricsGet(get); ret != gonvml.SUCCESS {
		return out, next, check(ret, "get GPM metrics of GPU instance %d on GPU %s", gpuInstanceID, gpuUUID)
	}
	if metric := get.Metrics[0]; gonvml.Return(metric.NvmlReturn) == gonvml.SUCCESS {
		// NVML_GPM_METRIC_GRAPHICS_UTIL: "Percentage of time any
		// compute/graphics app was active on the GPU. 0.0 - 100.0"
		f := metric.Value / 100
		out.Utilization = &f
	}
	return out, next, nil
}

// migHandle returns the MIG device handle of a GPU instance; nil when NVML
// cannot enumerate MIG devices.
func (l *library) migHandle(dev gonvml.Device, gpuInstanceID int) (gonvml.Device, error) {
	n, ret := dev.GetMaxMigDeviceCount()
	switch ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_NOT_SUPPORTED:
		return nil, nil
	default:
		return nil, check(ret, "count MIG devices")
	}
	for i := range n {
		mig, ret := dev.GetMigDeviceHandleByIndex(i)
		switch ret {
		case gonvml.SUCCESS:
		case gonvml.ERROR_NOT_FOUND, gonvml.ERROR_INVALID_ARGUMENT:
			continue
		default:
			return nil, check(ret, "get MIG device %d", i)
		}
		id, ret := mig.GetGpuInstanceId()
		if err := check(ret, "get GPU instance of MIG device %d", i); err != nil {
			return nil, err
		}
		if id == gpuInstanceID {
			return mig, nil
		}
	}
	return nil, nil
}

func (l *library) Processes(_ context.Context, gpuUUID string, since uint64) ([]ProcessUsage, uint64, error) {
	dev, err := l.deviceByUUID(gpuUUID)
	if err != nil {
		return nil, since, err
	}
	byPID := map[uint32]*ProcessUsage{}
	var order []uint32
	add := func(infos []gonvml.ProcessInfo) {
		for _, p := range infos {
			if _, ok := byPID[p.Pid]; ok {
				continue
			}
			byPID[p.Pid] = &ProcessUsage{PID: p.Pid, MemoryUsedBytes: p.UsedGpuMemory}
			order = append(order, p.Pid)
		}
	}
	procs, ret := dev.GetComputeRunningProcesses()
	list, err := optional(procs, ret, "list compute processes of GPU %s", gpuUUID)
	if err != nil {
		return nil, since, err
	}
	if list != nil {
		add(*list)
	}
	// nvmlDeviceGetMPSComputeRunningProcesses: "information only about
	// compute running processes ... utilizing MPS" (Volta or newer).
	mps, ret := dev.GetMPSComputeRunningProcesses()
	if list, err = optional(mps, ret, "list MPS compute processes of GPU %s", gpuUUID); err != nil {
		return nil, since, err
	}
	if list != nil {
		add(*list)
	}
	samples, ret := dev.GetProcessUtilization(since)
	switch ret {
	case gonvml.SUCCESS:
	case gonvml.ERROR_NOT_FOUND, gonvml.ERROR_NOT_SUPPORTED:
		// NOT_FOUND "if sample entries are not found": no process was
		// busy since the last read. NOT_SUPPORTED "On MIG-enabled GPUs".
		samples = nil
	default:
		return nil, since, check(ret, "get process utilization of GPU %s", gpuUUID)
	}
	sums, counts := map[uint32]float64{}, map[uint32]int{}
	newest := since
	for _, s := range samples {
		if s.TimeStamp <= since {
			continue
		}
		newest = max(newest, s.TimeStamp)
		sums[s.Pid] += float64(s.SmUtil) / 100
		counts[s.Pid]++
	}
	out := make([]ProcessUsage, 0, len(order))
	for _, pid := range order {
		p := byPID[pid]
		if n := counts[pid]; n > 0 {
			f := sums[pid] / float64(n)
			p.SMUtilization = &f
		}
		out = append(out, *p)
	}
	return out, newest, nil
}
