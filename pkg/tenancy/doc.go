// Package tenancy holds the pure decisions of Tessera's tenant policy: which
// tenant owns a namespace, whether a claim may use what it asks for, what an
// allocation costs a tenant, whether it fits the tenant's budget, and the
// objects (admission-policy bindings, quotas, dedicated DeviceClasses) that
// enforce a tenant in the API server. Nothing here talks to a cluster: the
// controller fetches, calls these functions and writes what they return.
package tenancy
