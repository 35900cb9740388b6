// Package controller is Tessera's tenancy controller: one reconciler per
// kind. TenantReconciler turns GPUTenants into enforcement that lives in the
// API server (policy bindings, ResourceQuotas, dedicated DeviceClasses) and
// reports their status; AdmissionReconciler admits or rejects each allocation
// against its tenant's budget through the claim's binding conditions.
// Decisions are pkg/tenancy's; this package fetches and writes.
package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Untenanted says what happens to claims for Tessera's classes in namespaces
// of no tenant.
type Untenanted string

const (
	// UntenantedAllow admits them: the cluster's other policies apply.
	UntenantedAllow Untenanted = "allow"
	// UntenantedDeny refuses them in the API server.
	UntenantedDeny Untenanted = "deny"
)

// Set parses a flag value.
func (u *Untenanted) Set(s string) error {
	switch Untenanted(s) {
	case UntenantedAllow, UntenantedDeny:
		*u = Untenanted(s)
		return nil
	}
	return fmt.Errorf("untenanted must be %q or %q, not %q", UntenantedAllow, UntenantedDeny, s)
}

// String is the flag value.
func (u *Untenanted) String() string { return string(*u) }

// Type names the flag's type.
func (u *Untenanted) Type() string { return "allow|deny" }

// Options configure the controller.
type Options struct {
	// Untenanted chooses allow or deny for namespaces of no tenant.
	Untenanted Untenanted
	// MetricsAddr and ProbeAddr are the listen addresses of the metrics and
	// health endpoints ("0" turns metrics off).
	MetricsAddr, ProbeAddr string
	// LeaderElection makes one replica of several act.
	LeaderElection bool
	// LeaderElectionNamespace holds the election's Lease.
	LeaderElectionNamespace string
}

// Scheme holds the kinds the controller reads and writes.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := tenancyv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Run runs the controller until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	scheme, err := Scheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme,
		// Of pods, only pending ones matter (RequeueReconciler): the cache
		// holds those, not every pod of the cluster.
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Field: fields.OneTermEqualSelector("status.phase", string(corev1.PodPending))},
		}},
		Metrics:                 metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:  opts.ProbeAddr,
		LeaderElection:          opts.LeaderElection,
		LeaderElectionID:        "tessera-dra-controller",
		LeaderElectionNamespace: opts.LeaderElectionNamespace,
		// Hand the lease over at once when stopping (after the reconcilers
		// have stopped), so that pods do not wait out a lease.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return fmt.Errorf("add ready check: %w", err)
	}
	decided := make(chan event.GenericEvent, 1024)
	l, catalog := newLedger(), newDeviceCatalog()
	rec := mgr.GetEventRecorder("tessera-dra-controller")
	if err := (&TenantReconciler{client: mgr.GetClient(), recorder: rec, ledger: l, catalog: catalog, untenanted: opts.Untenanted, decided: decided}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up tenant reconciler: %w", err)
	}
	if err := (&AdmissionReconciler{client: mgr.GetClient(), recorder: rec, ledger: l, catalog: catalog, decided: decided, sharing: newSharingGuard()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up admission reconciler: %w", err)
	}
	if err := (&SharingReconciler{client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up sharing reconciler: %w", err)
	}
	if err := (&RequeueReconciler{client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up sharing requeue reconciler: %w", err)
	}
	return mgr.Start(ctx)
}
