package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// GPUTenant names a tenant's namespaces and says which GPUs they may use and
// how much of them, across all its namespaces.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=gput
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Namespaces",type=string,JSONPath=`.status.namespaces`
// +kubebuilder:printcolumn:name="Memory",type=string,JSONPath=`.status.usage.gpuMemory`,description="Held GPU memory: the GPU memory the tenant's allocations keep other tenants from using (the unit of budget.gpuMemory)"
// +kubebuilder:printcolumn:name="Budget",type=string,JSONPath=`.spec.budget.gpuMemory`,description="Budget of held GPU memory"
// +kubebuilder:printcolumn:name="Borrowed",type=string,JSONPath=`.status.borrowed.gpuMemory`,description="Held GPU memory above the guarantee: what reclaim may take back while another tenant is below its guarantee"
// +kubebuilder:printcolumn:name="Memory-Hours (Month)",type=string,JSONPath=`.status.showback.month.gpuMemoryHours`,description="Held GPU memory times hours held in the current calendar month (UTC): 80Gi is 80 GiB for one hour"
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63",message="the name of a GPUTenant must be a DNS label (it prefixes its dedicated DeviceClasses and is a label value)"
type GPUTenant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec GPUTenantSpec `json:"spec"`
	// +optional
	Status GPUTenantStatus `json:"status,omitempty"`
}

// GPUTenantSpec is what a tenant may use.
// +kubebuilder:validation:XValidation:rule="!has(self.guarantee) || !has(self.guarantee.gpuMemory) || !has(self.budget) || !has(self.budget.gpuMemory) || quantity(self.guarantee.gpuMemory).compareTo(quantity(self.budget.gpuMemory)) <= 0",message="guarantee.gpuMemory must not exceed budget.gpuMemory"
// +kubebuilder:validation:XValidation:rule="!has(self.guarantee) || !has(self.guarantee.devices) || !has(self.budget) || !has(self.budget.devices) || self.guarantee.devices.all(k, !(k in self.budget.devices) || self.guarantee.devices[k] <= self.budget.devices[k])",message="guarantee.devices must not exceed budget.devices for any class"
type GPUTenantSpec struct {
	// NamespaceSelector selects the tenant's namespaces by label, e.g.
	// {matchLabels: {capsule.clastix.io/tenant: team-a}}. An empty selector
	// is refused: it would make every namespace the tenant's.
	// +required
	// +kubebuilder:validation:XValidation:rule="size(self.?matchLabels.orValue({})) + size(self.?matchExpressions.orValue([])) > 0",message="namespaceSelector must select by at least one label"
	NamespaceSelector metav1.LabelSelector `json:"namespaceSelector"`

	// AllowedDeviceClasses are the DeviceClasses the tenant's claims may name,
	// in every request and every firstAvailable alternative. The tenant's own
	// dedicated classes (see DedicatedPool) are always allowed.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=253
	AllowedDeviceClasses []string `json:"allowedDeviceClasses,omitempty"`

	// AllowAdminAccess lets the tenant's claims ask for DRA admin access.
	// +optional
	// +kubebuilder:default=false
	AllowAdminAccess bool `json:"allowAdminAccess,omitempty"`

	// AllowDeviceConfig lets the tenant's claims carry opaque configuration
	// for gpu.tessera.dev (e.g. MPS or time-slicing settings).
	// +optional
	// +kubebuilder:default=false
	AllowDeviceConfig bool `json:"allowDeviceConfig,omitempty"`

	// Budget limits what the tenant's namespaces hold together, counted on
	// what is allocated, checked by the controller before a pod binds.
	// +optional
	Budget *Budget `json:"budget,omitempty"`

	// Elastic budgets: the tenant may borrow up to its budget
	// while GPUs are free, and gets its guarantee back by reclaim.

	// Guarantee is what the tenant gets back within a bounded time when it
	// asks: held GPU memory and devices per class, in the unit of Budget,
	// never above it. What the tenant holds above its guarantee is borrowed
	// (status.borrowed) and may be reclaimed for a tenant below its own.
	// A tenant without a guarantee borrows all it holds.
	// +optional
	Guarantee *Budget `json:"guarantee,omitempty"`

	// NamespaceQuota limits each namespace on its own, through native
	// ResourceQuota objects the controller keeps in every tenant namespace.
	// +optional
	NamespaceQuota *NamespaceQuota `json:"namespaceQuota,omitempty"`

	// DedicatedPool, when set, is the value of the `pool` attribute of the
	// GPUs that serve this tenant only: the controller creates the tenant's
	// dedicated DeviceClasses (<tenant>.dedicated.<class>) that select them,
	// and only this tenant may name those classes.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self != 'default'",message="the default pool serves every tenant and cannot be dedicated"
	DedicatedPool string `json:"dedicatedPool,omitempty"`

	// Sharing says whose shares the tenant's shares of a time-shared GPU may
	// sit beside. Exclusive (the default): only the tenant's own; while the
	// tenant holds a share of a GPU, no other tenant is allocated a share of
	// it. Any: any other tenant's whose sharing is Any too (such tenants
	// share GPUs among themselves, never with Exclusive ones).
	// +optional
	// +kubebuilder:default=Exclusive
	Sharing SharingPolicy `json:"sharing,omitempty"`

	// IdleReclaim, when set, evicts the pods of the tenant's claims that
	// have stayed idle (the controller's tenancy.tessera.dev/idle mark)
	// for longer than After, through the Eviction API, so that their GPUs
	// go back to the fleet. Unset (the default): idle claims are only
	// marked.
	// +optional
	IdleReclaim *IdleReclaim `json:"idleReclaim,omitempty"`
}

// IdleReclaim says when a tenant's idle claims are reclaimed.
type IdleReclaim struct {
	// After is how long a claim must have been idle (since the time its
	// node reported it idle, not since it was marked) before its pods are
	// evicted, e.g. "2h".
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	After metav1.Duration `json:"after"`
}

// Budget is a tenant-wide limit, summed over all its namespaces.
type Budget struct {
	// GPUMemory bounds the tenant's held GPU memory: the GPU memory its
	// allocations keep other tenants from using. A whole GPU holds its
	// memory, a MIG partition its profile's memory, a share of a time-shared
	// GPU at least its dominant fraction of the GPU (the larger of its memory
	// and compute fractions) times the GPU's memory; under sharing Exclusive,
	// a tenant holding any share of a GPU holds the whole GPU's memory, once
	// however many shares it holds there. See docs/tenancy.md, "What an
	// allocation costs".
	// +optional
	GPUMemory *resource.Quantity `json:"gpuMemory,omitempty"`

	// Devices bounds the number of devices allocated per DeviceClass.
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, self[k] >= 0)",message="device budgets must not be negative"
	Devices map[string]int64 `json:"devices,omitempty"`
}

// NamespaceQuota is a per-namespace limit.
type NamespaceQuota struct {
	// Devices bounds the number of devices per DeviceClass that each
	// namespace may request (<class>.deviceclass.resource.k8s.io/devices).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	// +kubebuilder:validation:XValidation:rule="self.all(k, self[k] >= 0)",message="namespace quotas must not be negative"
	Devices map[string]int64 `json:"devices,omitempty"`
}

// GPUTenantStatus is what the controller observed.
type GPUTenantStatus struct {
	// ObservedGeneration is the spec generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Namespaces are the tenant's namespaces, sorted.
	// +optional
	// +listType=set
	Namespaces []string `json:"namespaces,omitempty"`

	// ConflictingNamespaces are the tenant's namespaces that another tenant
	// selects too. The admission policy refuses GPU claims in them.
	// +optional
	// +listType=set
	ConflictingNamespaces []string `json:"conflictingNamespaces,omitempty"`

	// Usage is what the tenant's admitted allocations hold.
	// +optional
	Usage Usage `json:"usage,omitempty"`

	// Borrowed is what the tenant holds above its guarantee (usage minus
	// guarantee, per resource, never negative), in the unit of usage. A
	// tenant without a guarantee borrows everything it holds.
	// +optional
	Borrowed Usage `json:"borrowed,omitempty"`

	// Showback is what the tenant held in the current and the previous
	// calendar month (UTC). The controller updates it every
	// --showback-status-interval (5 minutes by default), not on every
	// decision.
	// +optional
	Showback *Showback `json:"showback,omitempty"`

	// Conditions: Ready, BudgetExhausted, Conflict, GuaranteeOverCommitted.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Usage is what a tenant's admitted allocations hold.
type Usage struct {
	// GPUMemory is the held GPU memory (the unit of budget.gpuMemory), in
	// canonical form (e.g. 48Gi).
	// +optional
	GPUMemory resource.Quantity `json:"gpuMemory,omitempty"`
	// Devices counts the devices held per DeviceClass.
	// +optional
	Devices map[string]int64 `json:"devices,omitempty"`
}

// Showback summarises what a tenant held over two windows: the calendar
// month (UTC) to date and the whole month before it, the windows of a
// monthly report. The controller's counters (tessera_tenant_*_hours_total)
// hold the same amounts for any other window.
type Showback struct {
	// UpdatedAt is when the amounts were last brought up to date.
	// +optional
	UpdatedAt metav1.Time `json:"updatedAt,omitempty"`
	// Month is the current calendar month, from its first day to UpdatedAt.
	// +optional
	Month *ShowbackWindow `json:"month,omitempty"`
	// PreviousMonth is the whole calendar month before Month.
	// +optional
	PreviousMonth *ShowbackWindow `json:"previousMonth,omitempty"`
}

// ShowbackWindow is what a tenant held over one window, in the units of
// its budget integrated over time. Time in which no controller was leader
// is not counted.
type ShowbackWindow struct {
	// Start is the first instant of the window (a month's first day, 00:00
	// UTC).
	Start metav1.Time `json:"start"`
	// DeviceHours is, per DeviceClass, the devices held times the hours
	// they were held (the unit of budget.devices times hours; e.g. 1500m
	// is one and a half device-hours).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	DeviceHours map[string]resource.Quantity `json:"deviceHours,omitempty"`
	// ActiveDeviceHours is, per DeviceClass, the part of DeviceHours held
	// by claims that their node's kubelet plugin did not report idle
	// (below its --idle-threshold); present only when the controller reads
	// the idle reports (--idle-after set).
	// +optional
	// +kubebuilder:validation:MaxProperties=64
	ActiveDeviceHours map[string]resource.Quantity `json:"activeDeviceHours,omitempty"`
	// GPUMemoryHours is held GPU memory (the unit of budget.gpuMemory)
	// times the hours it was held: 80Gi is 80 GiB held for one hour, or
	// 40 GiB for two.
	// +optional
	GPUMemoryHours resource.Quantity `json:"gpuMemoryHours,omitempty"`
}

// GPUTenantList is a list of GPUTenants.
//
// +kubebuilder:object:root=true
type GPUTenantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []GPUTenant `json:"items"`
}
