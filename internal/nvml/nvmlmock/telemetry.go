package nvmlmock

import (
	"slices"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// This file makes the mock report what GPUs are doing, under the tests'
// control: utilization, memory in use, energy, compute processes and MIG
// instances' activity. Each call answers as nvml.h (go-nvml v0.13.4-1,
// pkg/nvml/nvml.h) documents, quoted beside it; go-nvml's own mock panics
// on every one of them.

// Process is one compute process on a mock GPU.
type Process struct {
	PID             uint32
	MemoryUsedBytes uint64
	// SMUtilPercent is the process's SM utilization in its samples; 0
	// means no sample, as NVML returns none for an idle process.
	SMUtilPercent uint32
	// MPSDaemon, when set, makes the process a client of that MPS control
	// daemon (its ID, as the simulated hardware names a claim's daemon):
	// NVML lists it among the GPU's MPS processes, and MPSClients reports
	// it for the simulated daemon to claim. Empty is a process that runs
	// without MPS.
	MPSDaemon string
}

// MPSClient is a process that a mock GPU runs for an MPS control daemon.
type MPSClient struct {
	// Daemon is the MPS control daemon's ID (Process.MPSDaemon).
	Daemon string
	// GPUUUID is the GPU it runs on.
	GPUUUID string
	// PID is the process's PID, as NVML lists it.
	PID uint32
}

// MIGActivity is what a mock MIG instance is doing.
type MIGActivity struct {
	// UtilPercent is its GPM graphics activity, 0-100.
	UtilPercent float64
	// MemoryUsedBytes is its memory in use.
	MemoryUsedBytes uint64
}

// deviceUsage is a GPU's activity as the tests set it.
type deviceUsage struct {
	mu         sync.Mutex
	gpuPercent uint32
	memPercent uint32
	energyMJ   uint64
	noEnergy   bool
	procs      []Process
	// sampledAt is when the processes' utilization samples were taken,
	// in microseconds, as nvmlProcessUtilizationSample_t.timeStamp is.
	sampledAt uint64
	// steady, when set, keeps the processes doing what they do: NVML
	// samples them anew before each read (see processUtilization).
	steady bool
	mig    map[int]MIGActivity
}

// gpmSample is a mock GPM sample: what the instance did when it was taken.
type gpmSample struct {
	mock.GpmSample
	taken    bool
	activity MIGActivity
}

func (s *Server) installTelemetry() {
	for _, d := range s.strict {
		d.usage = &deviceUsage{mig: map[int]MIGActivity{}}
		d.dev.GetUtilizationRatesFunc = d.utilizationRates
		d.dev.GetTotalEnergyConsumptionFunc = d.totalEnergy
		d.dev.GetComputeRunningProcessesFunc = d.computeProcesses
		d.dev.GetMPSComputeRunningProcessesFunc = d.mpsProcesses
		d.dev.GetProcessUtilizationFunc = d.processUtilization
		enumerate := d.dev.GetMigDeviceHandleByIndexFunc
		d.dev.GetMigDeviceHandleByIndexFunc = func(index int) (nvml.Device, nvml.Return) {
			mig, ret := enumerate(index)
			if m, ok := mig.(*mock.Device); ok && ret == nvml.SUCCESS {
				giID, _ := m.GetGpuInstanceId()
				m.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return d.migMemory(giID) }
			}
			return mig, ret
		}
	}
	byUUID := s.DeviceGetHandleByUUIDFunc
	s.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		dev, ret := byUUID(uuid)
		if ret != nvml.SUCCESS {
			// "NVML_ERROR_NOT_FOUND if \a uuid does not match a valid
			// device on the system"
			return nil, nvml.ERROR_NOT_FOUND
		}
		s.enumMu.Lock()
		defer s.enumMu.Unlock()
		if s.missing[dev.(*server.Device).Index] {
			return nil, nvml.ERROR_NOT_FOUND // not probed: not on the system
		}
		return dev, ret
	}
	s.GpmQueryDeviceSupportFunc = s.gpmSupport
	s.GpmSampleAllocFunc = func() (nvml.GpmSample, nvml.Return) {
		g := &gpmSample{}
		g.FreeFunc = func() nvml.Return { return nvml.SUCCESS }
		return g, nvml.SUCCESS
	}
	s.GpmMigSampleGetFunc = s.gpmMigSample
	s.GpmMetricsGetFunc = gpmMetrics
}

func (d *strictDevice) utilizationRates() (nvml.Utilization, nvml.Return) {
	d.dev.RLock()
	off := d.migOff()
	d.dev.RUnlock()
	if !off {
		// "On MIG-enabled GPUs, querying device utilization rates is not
		// currently supported."
		return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED
	}
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	return nvml.Utilization{Gpu: d.usage.gpuPercent, Memory: d.usage.memPercent}, nvml.SUCCESS
}

func (d *strictDevice) totalEnergy() (uint64, nvml.Return) {
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	if d.usage.noEnergy {
		// "NVML_ERROR_NOT_SUPPORTED if the device does not support energy
		// readings"
		return 0, nvml.ERROR_NOT_SUPPORTED
	}
	// "total energy consumption for this GPU in millijoules (mJ) since
	// the driver was last reloaded"
	return d.usage.energyMJ, nvml.SUCCESS
}

// computeProcesses lists the processes that run without MPS.
// nvmlDeviceGetComputeRunningProcesses: "information only about compute
// running processes (e.g. CUDA application which have active context)".
// Whether it also lists a process that reaches the GPU through MPS, nvml.h
// does not say; the mock lists each process in one list only, so a reader
// that consults one list misses the other's processes.
func (d *strictDevice) computeProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	return d.processes(func(p Process) bool { return p.MPSDaemon == "" }), nvml.SUCCESS
}

// mpsProcesses lists the MPS daemons' clients.
// nvmlDeviceGetMPSComputeRunningProcesses: "information only about compute
// running processes (e.g. CUDA application which have active context)
// utilizing MPS", "For Volta or newer fully supported devices".
func (d *strictDevice) mpsProcesses() ([]nvml.ProcessInfo, nvml.Return) {
	if d.dev.Config.Architecture < nvml.DEVICE_ARCH_VOLTA {
		// "NVML_ERROR_NOT_SUPPORTED if this query is not supported by
		// \a device"
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	return d.processes(func(p Process) bool { return p.MPSDaemon != "" }), nvml.SUCCESS
}

func (d *strictDevice) processes(keep func(Process) bool) []nvml.ProcessInfo {
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	// "The usedGpuMemory field returned is all of the memory used by the
	// application." MIG instance IDs are 0xFFFFFFFF for a whole GPU.
	out := make([]nvml.ProcessInfo, 0, len(d.usage.procs))
	for _, p := range d.usage.procs {
		if keep(p) {
			out = append(out, nvml.ProcessInfo{Pid: p.PID, UsedGpuMemory: p.MemoryUsedBytes, GpuInstanceId: 0xFFFFFFFF, ComputeInstanceId: 0xFFFFFFFF})
		}
	}
	return out
}

func (d *strictDevice) processUtilization(lastSeen uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
	d.dev.RLock()
	off := d.migOff()
	d.dev.RUnlock()
	if !off {
		// "On MIG-enabled GPUs, querying process utilization is not
		// currently supported."
		return nil, nvml.ERROR_NOT_SUPPORTED
	}
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	if d.usage.steady {
		// The driver samples its processes every few hundred
		// milliseconds: a steady workload has a sample newer than any
		// earlier read.
		d.usage.sample()
	}
	// "One utilization sample structure is returned per process running,
	// that had some non-zero utilization during the last sample period."
	// "Return only samples with timestamp greater than lastSeenTimeStamp."
	var out []nvml.ProcessUtilizationSample
	for _, p := range d.usage.procs {
		if p.SMUtilPercent == 0 || d.usage.sampledAt <= lastSeen {
			continue
		}
		out = append(out, nvml.ProcessUtilizationSample{Pid: p.PID, TimeStamp: d.usage.sampledAt, SmUtil: p.SMUtilPercent})
	}
	if len(out) == 0 {
		// "If no valid sample entries are found since the
		// lastSeenTimeStamp, NVML_ERROR_NOT_FOUND is returned."
		return nil, nvml.ERROR_NOT_FOUND
	}
	return out, nvml.SUCCESS
}

// migMemory answers nvmlDeviceGetMemoryInfo on a MIG device handle: the
// instance's own memory, its profile's size in all.
func (d *strictDevice) migMemory(giID int) (nvml.Memory, nvml.Return) {
	d.dev.RLock()
	var total uint64
	found := false
	for gi := range d.dev.GpuInstances {
		if int(gi.Info.Id) == giID {
			total = d.dev.Config.MIGProfiles.GpuInstanceProfiles[int(gi.Info.ProfileId)].MemorySizeMB << 20
			found = true
		}
	}
	d.dev.RUnlock()
	if !found {
		// The handle outlived its instance: "NVML_ERROR_INVALID_ARGUMENT
		// if \a device is invalid".
		return nvml.Memory{}, nvml.ERROR_INVALID_ARGUMENT
	}
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	used := min(d.usage.mig[giID].MemoryUsedBytes, total)
	return nvml.Memory{Total: total, Used: used, Free: total - used}, nvml.SUCCESS
}

func (s *Server) gpmSupport(dev nvml.Device) (nvml.GpmSupport, nvml.Return) {
	d := s.strictOf(dev)
	if d == nil {
		return nvml.GpmSupport{}, nvml.ERROR_INVALID_ARGUMENT
	}
	// GPM is "For Hopper or newer fully supported devices".
	supported := uint32(0)
	if d.dev.Config.Architecture >= nvml.DEVICE_ARCH_HOPPER {
		supported = 1
	}
	return nvml.GpmSupport{Version: nvml.GPM_SUPPORT_VERSION, IsSupportedDevice: supported}, nvml.SUCCESS
}

func (s *Server) gpmMigSample(dev nvml.Device, gpuInstanceID int, sample nvml.GpmSample) nvml.Return {
	d := s.strictOf(dev)
	g, ok := sample.(*gpmSample)
	if d == nil || !ok {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	if d.dev.Config.Architecture < nvml.DEVICE_ARCH_HOPPER {
		return nvml.ERROR_NOT_SUPPORTED
	}
	d.dev.RLock()
	found := false
	for gi := range d.dev.GpuInstances {
		found = found || int(gi.Info.Id) == gpuInstanceID
	}
	d.dev.RUnlock()
	if !found {
		return nvml.ERROR_NOT_FOUND
	}
	d.usage.mu.Lock()
	defer d.usage.mu.Unlock()
	g.taken, g.activity = true, d.usage.mig[gpuInstanceID]
	return nvml.SUCCESS
}

// gpmMetrics computes metrics from two samples. The mock holds an
// instance's activity steady between the tests' changes, so the activity
// over the interval is the one the second sample saw.
func gpmMetrics(get *nvml.GpmMetricsGetType) nvml.Return {
	s1, ok1 := get.Sample1.(*gpmSample)
	s2, ok2 := get.Sample2.(*gpmSample)
	if !ok1 || !ok2 || !s1.taken || !s2.taken || get.NumMetrics > uint32(len(get.Metrics)) {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	for i := range get.NumMetrics {
		m := &get.Metrics[i]
		switch m.MetricId {
		case uint32(nvml.GPM_METRIC_GRAPHICS_UTIL):
			m.Value, m.NvmlReturn = s2.activity.UtilPercent, uint32(nvml.SUCCESS)
		default:
			m.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
		}
	}
	return nvml.SUCCESS
}

func (s *Server) usage(index int) *deviceUsage { return s.strict[index].usage }

// SetUtilization sets what nvmlDeviceGetUtilizationRates reports for a GPU:
// the percent of time a kernel ran, and the percent of time memory was read
// or written.
func (s *Server) SetUtilization(index int, gpuPercent, memoryPercent uint32) {
	u := s.usage(index)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.gpuPercent, u.memPercent = gpuPercent, memoryPercent
}

// SetMemoryUsed sets how much of a GPU's memory is in use.
func (s *Server) SetMemoryUsed(index int, bytes uint64) {
	d := s.strict[index]
	d.dev.Lock()
	defer d.dev.Unlock()
	m := &d.dev.MemoryInfo
	m.Used = min(bytes, m.Total)
	m.Free = m.Total - m.Used
}

// AddEnergy adds to a GPU's energy counter, in millijoules.
func (s *Server) AddEnergy(index int, millijoules uint64) {
	u := s.usage(index)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.energyMJ += millijoules
}

// SetEnergySupported makes a GPU answer its energy reading with
// NVML_ERROR_NOT_SUPPORTED, as GPUs before Volta do, or normally again.
func (s *Server) SetEnergySupported(index int, supported bool) {
	u := s.usage(index)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.noEnergy = !supported
}

// SetProcesses replaces the compute processes on a GPU, and takes one new
// utilization sample of them: a read after the next finds no newer sample.
func (s *Server) SetProcesses(index int, procs ...Process) {
	s.setProcesses(index, procs, false)
}

// setProcesses replaces a GPU's processes; steady ones are sampled anew
// before each read.
func (s *Server) setProcesses(index int, procs []Process, steady bool) {
	u := s.usage(index)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.procs, u.steady = slices.Clone(procs), steady
	u.sample()
}

// sample takes a new utilization sample of the processes, its timestamp
// later than every earlier one. Call with u.mu held.
func (u *deviceUsage) sample() {
	u.sampledAt = max(u.sampledAt+1, uint64(time.Now().UnixMicro()))
}

// MPSClients returns every process that the mock's GPUs run for an MPS
// control daemon, GPU by GPU in the order they were set. A mock that follows a telemetry file
// reads it first, and fails as its NVML readings do when the file is bad.
func (s *Server) MPSClients() ([]MPSClient, error) {
	if f := s.telemetry; f != nil {
		if err := s.applyTelemetry(f); err != nil {
			return nil, err
		}
	}
	var out []MPSClient
	for _, d := range s.strict {
		d.dev.RLock()
		uuid := d.dev.UUID
		d.dev.RUnlock()
		d.usage.mu.Lock()
		for _, p := range d.usage.procs {
			if p.MPSDaemon != "" {
				out = append(out, MPSClient{Daemon: p.MPSDaemon, GPUUUID: uuid, PID: p.PID})
			}
		}
		d.usage.mu.Unlock()
	}
	return out, nil
}

// SetMIGActivity sets what a MIG instance (GPU instance gpuInstanceID of
// the GPU) is doing.
func (s *Server) SetMIGActivity(index, gpuInstanceID int, a MIGActivity) {
	u := s.usage(index)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.mig[gpuInstanceID] = a
}
