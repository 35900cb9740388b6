package claimusage

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// Label names of every tessera_claim_gpu_* series. uuid is the UUID of
// what the claim holds (a MIG device's own for MIG); gpu_uuid (the physical
// GPU's) and gpu_instance (the MIG GPU instance ID, empty otherwise) are
// how dcgm-exporter labels a MIG instance's series (UUID, GPU_I_ID): the
// join keys (docs/observability.md).
var labelNames = []string{"namespace", "pod", "claim", "request", "device", "uuid", "type", "profile", "gpu_uuid", "gpu_instance"}

var (
	utilizationDesc = prometheus.NewDesc("tessera_claim_gpu_utilization_ratio",
		"Busy fraction of what the claim's device holds over the last sample: for a whole GPU the time a kernel ran; for a MIG instance its GPM graphics activity (GPUs with GPU performance monitoring only); for a share its own processes' SM utilization (its MPS daemon's, and its pods' where the host's /proc is read), as a fraction of the GPU's time.",
		labelNames, nil)
	memoryUsedDesc = prometheus.NewDesc("tessera_claim_gpu_memory_used_bytes",
		"Device memory in use by the claim's device: the whole GPU's, the MIG instance's, or a share's own processes'.",
		labelNames, nil)
	memoryLimitDesc = prometheus.NewDesc("tessera_claim_gpu_memory_limit_bytes",
		"Device memory the claim's device may use: a whole GPU's memory, a MIG instance's, or a share's limit.",
		labelNames, nil)
	energyDesc = prometheus.NewDesc("tessera_claim_gpu_energy_joules_total",
		"Energy a whole GPU used while the claim held it (since the claim's first sample), where NVML reports the GPU's energy.",
		labelNames, nil)
)

// series is one device of one claim, for one pod of the claim.
type series struct {
	claimUID string
	labels   []string
	values   values
}

// values are a device's readings; nil is not reported.
type values struct {
	utilization  *float64
	memoryUsed   *uint64
	memoryLimit  *uint64
	energyJoules *float64
	// idleUnknown is set where the utilization is shown but cannot tell
	// an idle device from a busy one for the idle report.
	idleUnknown bool
}

var _ prometheus.Collector = (*Sampler)(nil)

// Describe sends the descriptions of the tessera_claim_gpu_* metrics.
func (s *Sampler) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{utilizationDesc, memoryUsedDesc, memoryLimitDesc, energyDesc} {
		ch <- d
	}
}

// Collect sends the last sample's series.
func (s *Sampler) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ser := range s.series {
		v := ser.values
		if v.utilization != nil {
			ch <- prometheus.MustNewConstMetric(utilizationDesc, prometheus.GaugeValue, *v.utilization, ser.labels...)
		}
		if v.memoryUsed != nil {
			ch <- prometheus.MustNewConstMetric(memoryUsedDesc, prometheus.GaugeValue, float64(*v.memoryUsed), ser.labels...)
		}
		if v.memoryLimit != nil {
			ch <- prometheus.MustNewConstMetric(memoryLimitDesc, prometheus.GaugeValue, float64(*v.memoryLimit), ser.labels...)
		}
		if v.energyJoules != nil {
			ch <- prometheus.MustNewConstMetric(energyDesc, prometheus.CounterValue, *v.energyJoules, ser.labels...)
		}
	}
}

// labelsOf returns a series' label values, in labelNames' order.
func labelsOf(c *checkpoint.Claim, d checkpoint.Device, pod string) []string {
	uuid, profile, instance := d.GPUUUID, "", ""
	if d.MIG != nil {
		profile, instance = d.MIG.Profile, strconv.Itoa(d.MIG.GPUInstanceID)
		if d.MIG.UUID != "" {
			// nvidia-smi and CUDA_VISIBLE_DEVICES name a MIG device by
			// its own UUID.
			uuid = d.MIG.UUID
		}
	}
	return []string{c.Namespace, pod, c.Name, d.Request, d.Device, uuid, typeOf(d.Kind), profile, d.GPUUUID, instance}
}

// typeOf is the type label of a checkpoint kind.
func typeOf(kind string) string {
	if kind == "shared" {
		return "share"
	}
	return kind
}

// seriesKey names one device of one claim.
func seriesKey(uid string, d checkpoint.Device) string {
	return uid + "/" + d.Request + "/" + d.Device
}
