// Package claimusage samples what each prepared claim does with its
// devices, through NVML, and exposes it as Prometheus series labelled with
// the claim, its pods and its devices (tessera_claim_gpu_*): the plugin
// knows which claim holds which whole GPU, MIG instance and share, which no
// GPU exporter does. How each kind of device is measured, and how a share's
// processes are attributed to their claim, is in docs/observability.md.
package claimusage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/klog/v2"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/checkpoint"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
)

// Claims is what the sampler reads about the prepared claims
// (prepare.Preparer implements it).
type Claims interface {
	// PreparedClaims returns every claim whose devices are all made.
	PreparedClaims() []*checkpoint.Claim
	// MPSProcesses returns, by claim UID, the PIDs of the claim's own MPS
	// daemon's processes; nil when they cannot be told.
	MPSProcesses(ctx context.Context) (map[string][]int, error)
}

// Sampler samples the prepared claims' devices and serves the last sample
// as a prometheus.Collector. It is safe for concurrent use.
type Sampler struct {
	claims Claims
	nvml   tnvml.Telemetry
	pods   *podCache

	// sampleMu serialises samples and guards what one sample hands the
	// next. Scrapes and Forget never wait for it, so a slow NVML call
	// delays neither a scrape nor an unprepare.
	sampleMu sync.Mutex
	// state is what a device's next sample starts from, by seriesKey.
	state map[string]*deviceState
	// since is, by GPU UUID, the newest process-utilization sample read.
	since map[string]uint64

	// mu guards what scrapes and Forget touch.
	mu sync.Mutex
	// series is the last sample.
	series []series
	// lastErr is the last sampling error logged, to log each one once.
	lastErr string
	// forgets counts Forget calls; forgotten holds, by claim UID, the
	// count at its Forget, so that a sample that read the claims before
	// the claim was forgotten does not bring its series back.
	forgets   uint64
	forgotten map[string]uint64

	// idle configures idle reports (WithIdleReport); nil without.
	idle *idleReporting
	// now is the sampler's clock (WithClock).
	now func() time.Time
	// hostPIDs translates NVML's PIDs (WithHostPIDs); nil takes them as
	// they are.
	hostPIDs HostPIDs
}

// HostPIDs translates the PIDs NVML reports, which are the host's, into the
// plugin's PID namespace, and tells the pod of a process in another
// namespace (pidns.HostProc implements it).
type HostPIDs interface {
	// Local returns the PID in the plugin's namespace of the process whose
	// host PID is hostPID; ok is false for a process in another namespace
	// or one that is gone.
	Local(hostPID uint32) (pid int, ok bool)
	// PodUID returns the UID of the pod whose cgroup holds the process
	// whose host PID is hostPID, for a process in another namespace than
	// the plugin's; ok is false for the plugin's own, one that is gone, or
	// one of no pod.
	PodUID(hostPID uint32) (uid string, ok bool)
}

// deviceState carries counters between samples of one claim's device.
type deviceState struct {
	// energyMJ is the GPU's energy counter at the last sample; energyJ
	// the energy counted for the claim since its first sample.
	energyMJ *uint64
	energyJ  float64
	// gpm is the MIG instance's last GPU performance-monitoring sample.
	gpm *tnvml.GPMSample
}

// Option configures a Sampler.
type Option func(*Sampler)

// WithPodLookup sets how the pods of a claim the sampler did not see
// prepared (e.g. prepared before a restart) are found, and how often every
// claim's pods are looked up again (0 never).
func WithPodLookup(lookup PodLookup, refresh time.Duration) Option {
	return func(s *Sampler) { s.pods.lookup, s.pods.refresh = lookup, refresh }
}

// WithIdleReport makes the sampler track, per claim, since when every device
// of the claim has been sampled below threshold (a utilization ratio, 0–1),
// and hand the whole set to report after each sample that changed it. A
// claim with a device whose utilization is unknown (a MIG instance without
// GPM, a device NVML cannot read) is never idle: it cannot be told idle from
// busy. Neither is a claim with a time-sliced share: its usage is found only
// through its pods' cgroups (WithHostPIDs), and a process missed there would
// make a busy share look idle.
func WithIdleReport(threshold float64, report IdleReportFunc) Option {
	return func(s *Sampler) {
		s.idle = &idleReporting{threshold: threshold, report: report, since: map[string]time.Time{}}
	}
}

// WithHostPIDs makes the sampler translate the PIDs NVML lists on a GPU
// into the plugin's PID namespace before it matches them against the MPS
// daemons' processes: for a plugin in a PID namespace of its own, as NVML
// always reports host PIDs. A process of another namespace (a tenant
// container's) counts for the share its pod holds of that GPU, as its
// cgroup names the pod, if the pod holds exactly one; for nobody otherwise.
// Without it NVML's PIDs are taken as they are, right for a plugin in the
// host's namespace, and only MPS daemons' processes count.
func WithHostPIDs(h HostPIDs) Option {
	return func(s *Sampler) { s.hostPIDs = h }
}

// WithClock sets the clock that dates the idle report (tests).
func WithClock(now func() time.Time) Option {
	return func(s *Sampler) { s.now = now }
}

// New returns a sampler of the claims' devices, read through telemetry.
func New(claims Claims, telemetry tnvml.Telemetry, opts ...Option) *Sampler {
	s := &Sampler{claims: claims, nvml: telemetry, pods: newPodCache(), now: time.Now, state: map[string]*deviceState{}, since: map[string]uint64{}, forgotten: map[string]uint64{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Prepared records the pods a claim is reserved for, as the kubelet hands
// the claim to prepare.
func (s *Sampler) Prepared(claim *resourceapi.ResourceClaim) { s.pods.record(claim) }

// Forget drops a claim's series at once, as its unprepare returns, rather
// than at the next sample (which frees what it kept for the claim).
func (s *Sampler) Forget(uid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgets++
	s.forgotten[uid] = s.forgets
	kept := s.series[:0]
	for _, ser := range s.series {
		if ser.claimUID != uid {
			kept = append(kept, ser)
		}
	}
	clear(s.series[len(kept):])
	s.series = kept
	s.pods.forget(uid)
}

// Run samples every interval until ctx ends.
func (s *Sampler) Run(ctx context.Context, interval time.Duration) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		s.logError(ctx, s.Sample(ctx))
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// logError logs a sampling error the first time it is seen: a GPU that
// cannot be read would otherwise log every interval.
func (s *Sampler) logError(ctx context.Context, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	s.mu.Lock()
	changed := msg != s.lastErr
	s.lastErr = msg
	s.mu.Unlock()
	if err != nil && changed {
		klog.FromContext(ctx).Error(err, "Sampling claims' GPU usage failed in part; their series are left out until it succeeds")
	}
}

// gpuReads holds the per-GPU readings of one sample, each read once
// however many claims share the GPU.
type gpuReads struct {
	usage map[string]tnvml.GPUUsage
	procs map[string][]gpuProcess
	errs  map[string]error
}

// Sample reads every prepared claim's devices once and replaces the
// series. A device that cannot be read is left out, and its error
// returned; the others are sampled. With WithIdleReport, it then publishes
// the idle report if it changed.
func (s *Sampler) Sample(ctx context.Context) error {
	err := s.sample(ctx)
	if s.idle != nil {
		s.idle.send(ctx)
	}
	return err
}

func (s *Sampler) sample(ctx context.Context) error {
	s.sampleMu.Lock()
	defer s.sampleMu.Unlock()
	s.mu.Lock()
	start := s.forgets
	s.mu.Unlock()
	claims := s.claims.PreparedClaims()
	var errs []error
	mps, err := s.claims.MPSProcesses(ctx)
	if err != nil {
		errs = append(errs, fmt.Errorf("list MPS daemons' processes: %w", err))
		mps = nil
	}
	reads := gpuReads{usage: map[string]tnvml.GPUUsage{}, procs: map[string][]gpuProcess{}, errs: map[string]error{}}
	pods := make(map[string][]Pod, len(claims))
	for _, c := range claims {
		pods[c.UID] = s.pods.get(ctx, c)
	}
	shares := sharesByPod(claims, pods)
	var out []series
	seen := map[string]bool{}
	var idle []string
	for _, c := range claims {
		claimIdle := len(c.Devices) > 0
		for _, d := range c.Devices {
			key := seriesKey(c.UID, d)
			seen[key] = true
			st := s.state[key]
			if st == nil {
				st = &deviceState{}
				s.state[key] = st
			}
			v, err := s.sampleDevice(ctx, c, d, st, shareOwners{mps: mps, pods: pods[c.UID], shares: shares}, &reads)
			if err != nil {
				claimIdle = false
				errs = append(errs, fmt.Errorf("claim %s/%s device %s: %w", c.Namespace, c.Name, d.Device, err))
				continue
			}
			if s.idle != nil && (v.utilization == nil || v.idleUnknown || *v.utilization >= s.idle.threshold) {
				claimIdle = false
			}
			for _, pod := range pods[c.UID] {
				out = append(out, series{claimUID: c.UID, labels: labelsOf(c, d, pod.Name), values: v})
			}
		}
		if claimIdle {
			idle = append(idle, c.UID)
		}
	}
	if s.idle != nil {
		s.idle.observe(idle, s.now())
	}
	for key, st := range s.state {
		if !seen[key] {
			st.gpm.Free()
			delete(s.state, key)
		}
	}
	for gpu := range s.since {
		if _, ok := reads.procs[gpu]; !ok {
			delete(s.since, gpu)
		}
	}
	s.pods.keep(claims)

	s.mu.Lock()
	defer s.mu.Unlock()
	kept := out[:0]
	for _, ser := range out {
		if at, ok := s.forgotten[ser.claimUID]; !ok || at <= start {
			kept = append(kept, ser) // not unprepared while this sample ran
		}
	}
	for uid, at := range s.forgotten {
		if at <= start {
			delete(s.forgotten, uid) // every later sample reads the claims without it
		}
	}
	s.series = kept
	return errors.Join(errs...)
}

// sampleDevice reads one device of a claim. Must be called with s.sampleMu
// held.
func (s *Sampler) sampleDevice(ctx context.Context, c *checkpoint.Claim, d checkpoint.Device, st *deviceState, owners shareOwners, reads *gpuReads) (values, error) {
	switch d.Kind {
	case "mig":
		if d.MIG == nil {
			return values{}, errors.New("MIG device without its instance")
		}
		u, next, err := s.nvml.MIGUsage(ctx, d.GPUUUID, d.MIG.GPUInstanceID, st.gpm)
		st.gpm.Free()
		st.gpm = next
		if err != nil {
			return values{}, err
		}
		return values{utilization: u.Utilization, memoryUsed: u.MemoryUsedBytes, memoryLimit: u.MemoryTotalBytes}, nil
	case "shared":
		return s.sampleShare(ctx, c, d, owners, reads)
	}
	u, err := reads.gpu(ctx, s.nvml, d.GPUUUID)
	if err != nil {
		return values{}, err
	}
	// The whole GPU's memory is what the claim may use: its limit, so that
	// memory held sums over every type of device.
	v := values{utilization: u.Utilization, memoryUsed: u.MemoryUsedBytes, memoryLimit: u.MemoryTotalBytes}
	if u.EnergyMillijoules != nil {
		cur := *u.EnergyMillijoules
		switch {
		case st.energyMJ == nil:
			// Energy counts from the claim's first sample: what the GPU
			// used before was someone else's.
		case cur >= *st.energyMJ:
			st.energyJ += float64(cur-*st.energyMJ) / 1000
		default:
			// The driver was reloaded and its counter started again.
			st.energyJ += float64(cur) / 1000
		}
		st.energyMJ = &cur
		// A copy: scrapes read the series while the next sample counts on.
		joules := st.energyJ
		v.energyJoules = &joules
	}
	return v, nil
}

// shareOwners is what tells whose a process on a share's GPU is.
type shareOwners struct {
	// mps is, by claim UID, the PIDs of the claim's MPS daemon's
	// processes; nil when they could not be listed.
	mps map[string][]int
	// pods are the claim's pods.
	pods []Pod
	// shares counts the shares each pod holds of each GPU.
	shares map[gpuPod]int
}

// gpuPod is a pod on a GPU.
type gpuPod struct{ gpu, pod string }

// sharesByPod counts, by GPU and pod UID, the shares of the GPU the pod's
// claims hold: a process of a pod with two shares of its GPU cannot be
// told to be either's.
func sharesByPod(claims []*checkpoint.Claim, pods map[string][]Pod) map[gpuPod]int {
	n := map[gpuPod]int{}
	for _, c := range claims {
		for _, d := range c.Devices {
			if d.Kind != "shared" {
				continue
			}
			for _, p := range pods[c.UID] {
				if p.UID != "" {
					n[gpuPod{gpu: d.GPUUUID, pod: p.UID}]++
				}
			}
		}
	}
	return n
}

// sampleShare reads a claim's share of a time-shared GPU: its limit, and
// what its processes use and how busy they keep the GPU. Its processes
// are, for an MPS share, its own MPS daemon's; and, with WithHostPIDs, for
// an MPS or a time-sliced share, those of other PID namespaces whose
// cgroup names one of the claim's pods, where that pod holds no other
// share of the GPU. Without WithHostPIDs a time-sliced share, whose
// processes run only in the containers' PID namespaces, shows its limit
// only.
func (s *Sampler) sampleShare(ctx context.Context, c *checkpoint.Claim, d checkpoint.Device, owners shareOwners, reads *gpuReads) (values, error) {
	var v values
	switch {
	case d.Sharing != nil && d.Sharing.PinnedMemoryLimitBytes > 0:
		limit := uint64(d.Sharing.PinnedMemoryLimitBytes)
		v.memoryLimit = &limit
	case d.Share != nil && d.Share.MemoryBytes > 0:
		limit := uint64(d.Share.MemoryBytes)
		v.memoryLimit = &limit
	}
	isMPS := d.Sharing != nil && d.Sharing.Strategy == string(configapi.MPSStrategy)
	switch {
	case isMPS && owners.mps == nil:
		// Without the daemon's processes the share's usage would be short.
		return v, nil
	case !isMPS && s.hostPIDs == nil:
		return v, nil
	}
	procs, err := reads.processes(ctx, s.nvml, d.GPUUUID, s.since, s.hostPIDs)
	if err != nil {
		return values{}, err
	}
	own := map[uint32]bool{}
	if isMPS {
		for _, pid := range owners.mps[c.UID] {
			own[uint32(pid)] = true
		}
	}
	pods := map[string]bool{}
	for _, p := range owners.pods {
		if p.UID != "" && owners.shares[gpuPod{gpu: d.GPUUUID, pod: p.UID}] == 1 {
			pods[p.UID] = true
		}
	}
	var used uint64
	var util float64
	for _, p := range procs {
		// A process of the plugin's namespace has no pod here: the
		// daemons' processes and the pods' are told apart by namespace,
		// so none counts twice.
		if (p.podUID == "" && !own[p.PID]) || (p.podUID != "" && !pods[p.podUID]) {
			continue
		}
		used += p.MemoryUsedBytes
		if p.SMUtilization != nil {
			util += *p.SMUtilization
		}
	}
	util = min(util, 1)
	v.memoryUsed, v.utilization = &used, &util
	v.idleUnknown = !isMPS
	return v, nil
}

func (r *gpuReads) gpu(ctx context.Context, t tnvml.Telemetry, uuid string) (tnvml.GPUUsage, error) {
	if err, failed := r.errs["gpu/"+uuid]; failed {
		return tnvml.GPUUsage{}, err
	}
	if u, ok := r.usage[uuid]; ok {
		return u, nil
	}
	u, err := t.GPUUsage(ctx, uuid)
	if err != nil {
		r.errs["gpu/"+uuid] = err
		return u, err
	}
	r.usage[uuid] = u
	return u, nil
}

// gpuProcess is a process NVML lists on a GPU.
type gpuProcess struct {
	tnvml.ProcessUsage
	// podUID is, for a process of another PID namespace than the
	// plugin's, the pod whose cgroup holds it; "" for the plugin's own.
	podUID string
}

// processes reads a GPU's processes once a sample. When hostPIDs is set,
// the plugin's own are under their PIDs in its namespace, the others
// carry their pod, and those of no pod are left out.
func (r *gpuReads) processes(ctx context.Context, t tnvml.Telemetry, uuid string, since map[string]uint64, hostPIDs HostPIDs) ([]gpuProcess, error) {
	if err, failed := r.errs["procs/"+uuid]; failed {
		return nil, err
	}
	if p, ok := r.procs[uuid]; ok {
		return p, nil
	}
	p, newest, err := t.Processes(ctx, uuid, since[uuid])
	if err != nil {
		r.errs["procs/"+uuid] = err
		return nil, err
	}
	since[uuid] = newest
	procs := make([]gpuProcess, 0, len(p))
	for _, proc := range p {
		if hostPIDs == nil {
			procs = append(procs, gpuProcess{ProcessUsage: proc})
			continue
		}
		if pid, ok := hostPIDs.Local(proc.PID); ok {
			proc.PID = uint32(pid)
			procs = append(procs, gpuProcess{ProcessUsage: proc})
		} else if pod, ok := hostPIDs.PodUID(proc.PID); ok {
			procs = append(procs, gpuProcess{ProcessUsage: proc, podUID: pod})
		}
	}
	r.procs[uuid] = procs
	return procs, nil
}
