package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// metrics per tenant, served on the controller-runtime metrics endpoint.
var (
	tenantMemoryUsed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "gpu_memory_used_bytes",
		Help: "Held GPU memory of the tenant's admitted allocations: the GPU memory they keep other tenants from using (docs/tenancy.md, What an allocation costs).",
	}, []string{"tenant"})
	tenantMemoryBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "gpu_memory_budget_bytes",
		Help: "The tenant's GPU memory budget (absent without one).",
	}, []string{"tenant"})
	tenantDevicesUsed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "devices_used",
		Help: "Devices held by the tenant's admitted allocations, by DeviceClass.",
	}, []string{"tenant", "class"})
	tenantDevicesBudget = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "devices_budget",
		Help: "The tenant's device budget, by DeviceClass.",
	}, []string{"tenant", "class"})
	tenantMemoryBorrowed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "borrowed_gpu_memory_bytes",
		Help: "Held GPU memory the tenant holds above its guarantee (status.borrowed.gpuMemory): what reclaim may take back.",
	}, []string{"tenant"})
	tenantDevicesBorrowed = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "borrowed_devices",
		Help: "Devices the tenant holds above its guarantee, by DeviceClass the guarantee names (status.borrowed.devices).",
	}, []string{"tenant", "class"})
	tenantMemoryGuarantee = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "gpu_memory_guarantee_bytes",
		Help: "The tenant's guaranteed GPU memory (absent without a guarantee).",
	}, []string{"tenant"})
	allocationDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "tenant", Name: "allocation_decisions_total",
		Help: "Allocations admitted or rejected, by tenant (empty: no tenant), decision and reason.",
	}, []string{"tenant", "decision", "reason"})
	schedulerNudges = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "tessera", Subsystem: "sharing", Name: "scheduler_nudges_total",
		Help: "Sharing taints stamped again so that kube-scheduler retries the pods it turned away while it held a waited-for share in flight.",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(tenantMemoryUsed, tenantMemoryBudget, tenantDevicesUsed, tenantDevicesBudget, tenantMemoryBorrowed, tenantDevicesBorrowed, tenantMemoryGuarantee, allocationDecisions, schedulerNudges)
}

func forgetTenantMetrics(tenant string) {
	for _, v := range []*prometheus.GaugeVec{tenantMemoryUsed, tenantMemoryBudget, tenantDevicesUsed, tenantDevicesBudget, tenantMemoryBorrowed, tenantDevicesBorrowed, tenantMemoryGuarantee} {
		v.DeletePartialMatch(prometheus.Labels{"tenant": tenant})
	}
}
