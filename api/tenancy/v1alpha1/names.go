package v1alpha1

import gpuapi "github.com/tessera-gpu/tessera/api/gpu"

// Binding conditions. With tenancy on, every device is published with
// ConditionAdmitted as its binding condition and ConditionRejected as its
// binding failure condition: the scheduler allocates, then waits until the
// controller has checked the allocation against the tenant's budget and set
// one of them in the claim's status.devices.
const (
	// ConditionAdmitted is set (True) when the allocation fits the budget.
	ConditionAdmitted = "tenancy.tessera.dev/admitted"
	// ConditionRejected is set (True) when it does not; the scheduler then
	// deallocates the claim and retries later.
	ConditionRejected = "tenancy.tessera.dev/rejected"
)

// Reasons of the binding conditions (and of the Events that accompany them).
const (
	ReasonAdmitted     = "Admitted"
	ReasonOverBudget   = "OverBudget"
	ReasonNotAllowed   = "NotAllowed"
	ReasonConflict     = "Conflict"
	ReasonUntenanted   = "Untenanted"
	ReasonNoTenancy    = "NoTenant"
	ReasonDeviceAbsent = "DeviceUnknown"
	// ReasonPoolMismatch: a device was allocated through a class of one pool
	// on a node that an admin labelled (LabelNodePool) for another.
	ReasonPoolMismatch = "PoolMismatch"
	// ReasonGuaranteeOverCommitted: the guarantees of all tenants add up to
	// more than the published fleet holds.
	ReasonGuaranteeOverCommitted = "GuaranteeOverCommitted"
)

// LabelNodePool is the Node label that says which pool a node's GPUs serve:
// a GPUTenant's dedicatedPool, or none for the shared pool
// (gpu.PoolDefault). The devices' pool attribute is the node's own claim, so
// tenancy admits an allocation only where the node's label agrees with the
// class that selected the device. The label is in the
// node-restriction.kubernetes.io domain, which the NodeRestriction admission
// plugin keeps a kubelet from setting, changing or removing on its own Node:
// an admin sets it, a compromised node cannot.
const LabelNodePool = "tenancy.tessera.dev.node-restriction.kubernetes.io/pool"

// GPUTenant condition types.
const (
	// TenantReady is True when the tenant's enforcement objects are in place.
	TenantReady = "Ready"
	// TenantBudgetExhausted is True when the last allocation decided was
	// refused for lack of budget.
	TenantBudgetExhausted = "BudgetExhausted"
	// TenantConflict is True when a namespace of the tenant is also selected
	// by another tenant; such namespaces are refused GPU claims.
	TenantConflict = "Conflict"
	// TenantGuaranteeOverCommitted is True when the guarantees of all
	// tenants add up to more than the published fleet holds: not every
	// guarantee can be given back at once.
	TenantGuaranteeOverCommitted = "GuaranteeOverCommitted"
)

// TaintPrefix prefixes every device taint that tenancy sets. Tenants may not
// tolerate these taints.
const TaintPrefix = "tenancy.tessera.dev/"

// TaintKeyTenant is the key of the taint that keeps other tenants off a
// time-shared GPU while one tenant holds shares of it.
const TaintKeyTenant = TaintPrefix + "tenant"

// Labels.
const (
	// LabelTenant is the label that tenancy protects on namespaces, for
	// tenants that select their namespaces by it.
	LabelTenant = "tenancy.tessera.dev/tenant"
	// LabelCapsuleTenant is Capsule's tenant label; GPUTenants may select
	// namespaces by it, and it is protected like LabelTenant.
	LabelCapsuleTenant = "capsule.clastix.io/tenant"
	// LabelAdminAccess is the namespace label of DRA that grants admin
	// access to devices; it is protected like the tenant labels.
	LabelAdminAccess = "resource.kubernetes.io/admin-access"
	// LabelManagedBy marks objects the controller owns.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is LabelManagedBy's value on the controller's objects.
	ManagedByValue = "tessera-dra-controller"
	// LabelOwnerTenant names the GPUTenant an object was made for.
	LabelOwnerTenant = "tenancy.tessera.dev/owner"
)

// AnnotationBorrowed is set ("true") by the controller on each admitted
// ResourceClaim that borrows: one of the tenant's most recently admitted
// claims beyond its guarantee (spec.guarantee), which reclaim may take back.
// It tells users which of their claims are at risk; the controller never
// reads it back (a tenant may edit its claims' annotations).
const AnnotationBorrowed = "tenancy.tessera.dev/borrowed"

// Names of the cluster's static admission objects (installed by the chart) and
// of the objects the controller creates.
const (
	// PolicyClaims is the ValidatingAdmissionPolicy, parameterised by
	// GPUTenant, that checks ResourceClaims and ResourceClaimTemplates.
	PolicyClaims = "claims.tenancy.tessera.dev"
	// PolicyUntenanted refuses Tessera's classes in namespaces of no tenant
	// (when the controller runs with --untenanted=deny).
	PolicyUntenanted = "untenanted.tenancy.tessera.dev"
	// PolicyOutsiders keeps every namespace a tenant does not select off the
	// tenant's dedicated classes and sharing taint.
	PolicyOutsiders = "outsiders.tenancy.tessera.dev"
	// PolicyNamespaceLabels protects the fixed tenancy labels on namespaces.
	PolicyNamespaceLabels = "namespace-labels.tenancy.tessera.dev"
	// PolicyTenantLabels protects the label keys each tenant selects by.
	PolicyTenantLabels = "tenant-labels.tenancy.tessera.dev"
	// QuotaName is the name of the ResourceQuota in each tenant namespace.
	QuotaName = "tessera-gpu-tenant"
)

// BindingName is the name of the ValidatingAdmissionPolicyBinding that binds
// PolicyClaims to one tenant.
func BindingName(tenant string) string { return tenant + "." + PolicyClaims }

// DedicatedClassName is the name of a tenant's dedicated DeviceClass for one
// of the shipped classes: "team-a.dedicated.mig.gpu.tessera.dev". Tenant names
// are DNS labels, so these never collide with each other or the shipped ones.
func DedicatedClassName(tenant, shippedClass string) string {
	return tenant + ".dedicated." + shippedClass
}

// DedicatedClassNames are a tenant's dedicated DeviceClasses, one per shipped
// class, in the order of gpuapi.Classes.
func DedicatedClassNames(tenant string) []string {
	out := make([]string, len(gpuapi.Classes))
	for i, c := range gpuapi.Classes {
		out[i] = DedicatedClassName(tenant, c)
	}
	return out
}

// Idle claims. Each kubelet plugin reports, in a Lease of the
// controller's namespace named IdleReportName(node), since when each of its
// node's claims has stayed below the utilization threshold; the controller
// marks a claim idle that long with ConditionIdle in its status.devices.
const (
	// ConditionIdle is set (True) on every gpu.tessera.dev device of a claim
	// whose devices stayed below the idle threshold for the configured time;
	// the controller removes it when the claim is busy again.
	ConditionIdle = "tenancy.tessera.dev/idle"
	// ReasonIdle is ConditionIdle's reason and its Events'.
	ReasonIdle = "Idle"
	// ReasonIdleReclaimed is the reason of the Events of an eviction of an
	// idle claim's pods (GPUTenant spec.idleReclaim).
	ReasonIdleReclaimed = "IdleReclaimed"
	// ReasonReclaimed is the reason of the Events of an eviction that gives
	// a tenant below its guarantee (spec.guarantee) back devices another
	// tenant borrowed: on the evicted pods and their claim.
	ReasonReclaimed = "Reclaimed"
	// ReasonReclaiming is the reason of the Event on a waiting pod whose
	// tenant is below its guarantee, when borrowed devices are reclaimed so
	// that it fits.
	ReasonReclaiming = "ReclaimingGuarantee"
	// ReasonGuaranteeHeld is the reason of the Event on a waiting pod whose
	// tenant holds its guarantee already: nothing is reclaimed for it.
	ReasonGuaranteeHeld = "GuaranteeHeld"
	// AnnotationIdleSince holds a node's idle report: a JSON object mapping
	// claim UIDs to the RFC 3339 time since which the claim has been idle.
	AnnotationIdleSince = "tenancy.tessera.dev/idle-since"
	// IdleReportPrefix prefixes the name of each node's idle-report Lease.
	IdleReportPrefix = "gpu-idle."
)

// IdleReportName is the name of node's idle-report Lease.
func IdleReportName(node string) string { return IdleReportPrefix + node }

// KindDecisionRecord is the kind of DecisionRecord in a claim's status.
const KindDecisionRecord = "DecisionRecord"

// DecisionRecord is what the controller records with each admission decision,
// as the data of every gpu.tessera.dev entry of the claim's status.devices
// that carries the decision's condition, in the same write. Only a writer of
// status.devices for gpu.tessera.dev may set it, which the chart grants the
// controller alone (and refuses to anyone else, through its decision-records
// policy): neither tenants nor nodes can forge it.
//
// +kubebuilder:object:generate=false
type DecisionRecord struct {
	// APIVersion is tenancy.tessera.dev/v1alpha1, Kind KindDecisionRecord.
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// DeviceMemory is the GPU memory, in bytes, that the controller costed
	// the device with: a whole GPU's, a MIG partition's, or a time-shared
	// GPU's whole memory (a share's price follows from it and the share's
	// consumed capacity). It lets a controller that starts while the
	// device's slice is gone cost the claim. Absent where the memory was
	// not known.
	DeviceMemory int64 `json:"deviceMemory,omitempty"`
	// Holder is the leader-election identity of the controller replica that
	// decided (the Lease's spec.holderIdentity while it leads); the chart's
	// decision-fence policy refuses a decision whose holder does not hold the
	// Lease. Empty without leader election.
	Holder string `json:"holder,omitempty"`
}
