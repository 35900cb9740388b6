package v1alpha1

// SharingPolicy says with whom a tenant's shares of a time-shared GPU may
// share the GPU.
// +kubebuilder:validation:Enum=Exclusive;Any
type SharingPolicy string

const (
	// SharingExclusive keeps every other tenant off a time-shared GPU while
	// the tenant holds a share of it.
	SharingExclusive SharingPolicy = "Exclusive"
	// SharingAny lets the tenant share GPUs with the other tenants whose
	// sharing is Any.
	SharingAny SharingPolicy = "Any"
)

// Sharing groups. A time-shared GPU serves one group at a time. An Exclusive
// tenant is a group of its own, named by the tenant; all tenants with
// sharing Any form GroupAny; namespaces of no tenant form GroupUntenanted.
// The two fixed names contain a dot, which no tenant name (a DNS label) does,
// so they never collide with a tenant. Each is also the value of the
// TaintKeyTenant taint of a GPU the group holds.
const (
	GroupAny        = "sharing.any"
	GroupUntenanted = "sharing.untenanted"
	// GroupConflict is the taint value of a GPU found held by two groups at
	// once (e.g. shares allocated before tenancy was on): no group tolerates
	// it, so the GPU takes no new shares until all but one group have gone.
	GroupConflict = "sharing.conflict"
	// GroupFree is the taint value of a time-shared GPU that no group holds.
	// Every claim tolerates it in its SubrequestAny alternative, none in its
	// SubrequestOwn one: that is how the allocator is made to take a GPU the
	// claim's group holds before a free one. It keeps no one off the GPU.
	GroupFree = "sharing.free"
)

// Names of the alternatives that the sharing admission policy turns a
// request for a time-shared GPU of Tessera's classes into (a firstAvailable
// request): SubrequestOwn tolerates only the group's own taint, so it fits
// only GPUs the group holds; SubrequestAny also tolerates GroupFree. The
// allocator tries them in this order, and kube-scheduler scores nodes where
// an earlier alternative fits higher. Allocation results name them as
// "<request>/own" and "<request>/any".
const (
	SubrequestOwn = "own"
	SubrequestAny = "any"
)

// Names of the sharing admission objects (installed by the chart).
const (
	// PolicySharing is the MutatingAdmissionPolicy, parameterised by
	// GPUTenant and bound once to all tenants, that adds the tenant's
	// toleration of TaintKeyTenant to the ResourceClaims of its namespaces.
	PolicySharing = "sharing.tenancy.tessera.dev"
	// PolicySharingUntenanted is the MutatingAdmissionPolicy that adds
	// GroupUntenanted's toleration to the ResourceClaims of namespaces of no
	// tenant; the controller keeps its binding (of the same name) bound to
	// the namespaces no tenant selects.
	PolicySharingUntenanted = "untenanted.sharing.tenancy.tessera.dev"
)

// ReasonSharedWithOtherTenant is the rejected condition's reason when the
// claim's share is on a time-shared GPU that another sharing group holds.
const ReasonSharedWithOtherTenant = "SharedWithOtherTenant"
