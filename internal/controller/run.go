// Package controller is Tessera's tenancy controller: one reconciler per
// kind. TenantReconciler turns GPUTenants into enforcement that lives in the
// API server (policy bindings, ResourceQuotas, dedicated DeviceClasses) and
// reports their status; AdmissionReconciler admits or rejects each allocation
// against its tenant's budget through the claim's binding conditions.
// Decisions are pkg/tenancy's; this package fetches and writes.
package controller

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/metrics"
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
	// InsecureMetrics serves /metrics over plain HTTP to anyone. By default
	// it is served over TLS to scrapers whose bearer token the API server
	// authenticates and whose user may get /metrics: it lists every
	// tenant's budget and usage.
	InsecureMetrics bool
	// MetricsCertDir holds the metrics endpoint's tls.crt and tls.key;
	// empty generates a self-signed certificate at start.
	MetricsCertDir string
	// AdmissionQueue orders the claims awaiting a decision: QueueFair
	// (empty) or QueueFIFO.
	AdmissionQueue QueueOrder
	// LeaderElection makes one replica of several act.
	LeaderElection bool
	// LeaderElectionNamespace holds the election's Lease.
	LeaderElectionNamespace string
	// IdleAfter is how long a claim's devices must have stayed below the
	// kubelet plugins' idle threshold before the claim is marked idle; 0
	// marks none.
	IdleAfter time.Duration
	// IdleSyncInterval is how often idle marks follow the plugins' idle
	// reports (and idle reclaim acts); 0 is DefaultIdleSyncInterval.
	IdleSyncInterval time.Duration
	// IdleReportNamespace holds the kubelet plugins' idle-report Leases.
	IdleReportNamespace string
	// ShowbackStatusInterval is how often each GPUTenant's
	// status.showback is brought up to date; 0 is
	// DefaultShowbackStatusInterval.
	ShowbackStatusInterval time.Duration
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

// The reconcilers record Events on tenants, claims and pods, in either Event API.
//
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch;update
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch;update

// Run runs the controller until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	scheme, err := Scheme()
	if err != nil {
		return fmt.Errorf("build scheme: %w", err)
	}
	metricsOpts, err := metricsOptions(opts)
	if err != nil {
		return err
	}
	var lock resourcelock.Interface
	holder := ""
	if opts.LeaderElection {
		if lock, holder, err = leaderLock(cfg, opts.LeaderElectionNamespace); err != nil {
			return err
		}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cacheOptions(opts),
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  opts.ProbeAddr,
		LeaderElection:          opts.LeaderElection,
		LeaderElectionID:        LeaderElectionID,
		LeaderElectionNamespace: opts.LeaderElectionNamespace,
		// Its identity is recorded with every decision (leaderLock).
		LeaderElectionResourceLockInterface: lock,
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
	if err := (&TenantReconciler{client: mgr.GetClient(), recorder: rec, ledger: l, catalog: catalog, untenanted: opts.Untenanted, decided: decided, showbackEvery: opts.ShowbackStatusInterval}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up tenant reconciler: %w", err)
	}
	if err := (&AdmissionReconciler{client: mgr.GetClient(), recorder: rec, ledger: l, catalog: catalog, decided: decided, sharing: newSharingGuard(), order: opts.AdmissionQueue,
		catchUp: &leaderCatchUp{reader: mgr.GetAPIReader()}, holder: holder}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up admission reconciler: %w", err)
	}
	if err := (&SharingReconciler{client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up sharing reconciler: %w", err)
	}
	if err := (&RequeueReconciler{client: mgr.GetClient()}).SetupWithManager(mgr); err != nil {
		return fmt.Errorf("set up sharing requeue reconciler: %w", err)
	}
	// Showback's counters follow held usage between reconciles; like them,
	// only on the leader.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return tenantShowback.run(ctx, time.Minute) })); err != nil {
		return fmt.Errorf("add showback: %w", err)
	}
	// Reclaim acts only for tenants with a guarantee, and only while a pod
	// of such a tenant waits; it reads from the cache.
	reclaimer := newManagedReclaimer(mgr, rec)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return reclaimer.run(ctx, ReclaimInterval) })); err != nil {
		return fmt.Errorf("add reclaimer: %w", err)
	}
	if opts.IdleAfter > 0 {
		m := newManagedIdleMarker(mgr, rec, opts)
		interval := opts.IdleSyncInterval
		if interval <= 0 {
			interval = DefaultIdleSyncInterval
		}
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return m.run(ctx, interval) })); err != nil {
			return fmt.Errorf("add idle marker: %w", err)
		}
	}
	return mgr.Start(ctx)
}

// cacheOptions are the manager's cache's. Of pods it holds those that have
// not terminated: the pending ones (RequeueReconciler, reclaim's waiting
// pods) and those that hold devices (reclaim's victims, whose claims count
// as held until their pods terminate), without their managed fields, which
// nothing here reads. A terminated pod holds nothing and is left out. Of
// Leases it holds the idle-report namespace's only (the plugins' reports,
// which IdleMarker reads; the controller may read no other namespace's).
func cacheOptions(opts Options) cache.Options {
	byObject := map[client.Object]cache.ByObject{
		&corev1.Pod{}: {
			Field: fields.AndSelectors(
				fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
				fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
			),
			Transform: cache.TransformStripManagedFields(),
		},
	}
	if opts.IdleReportNamespace != "" {
		byObject[&coordinationv1.Lease{}] = cache.ByObject{Namespaces: map[string]cache.Config{opts.IdleReportNamespace: {}}}
	}
	return cache.Options{ByObject: byObject}
}

// newManagedIdleMarker is the controller's idle marker: it reads through
// the manager's cache only, so that a sync, every --idle-sync-interval,
// costs the API server nothing but the marks it writes.
func newManagedIdleMarker(mgr managerClients, rec recorder.EventRecorder, opts Options) *IdleMarker {
	return &IdleMarker{client: mgr.GetClient(), namespace: opts.IdleReportNamespace,
		recorder: rec, now: time.Now, after: opts.IdleAfter, showback: tenantShowback}
}

// managerClients are the clients a manager gives out: its cached client
// and its reader of the API server.
type managerClients interface {
	GetClient() client.Client
	GetAPIReader() client.Reader
}

// newManagedReclaimer is the controller's reclaimer: it reads through the
// manager's cache only, so that a pass, every ReclaimInterval while a pod
// waits, costs the API server nothing.
func newManagedReclaimer(mgr managerClients, rec recorder.EventRecorder) *Reclaimer {
	return NewReclaimer(mgr.GetClient(), rec)
}

// metricsOptions are the metrics server's: unless opts.InsecureMetrics, TLS
// and delegated authentication (TokenReview) and authorisation
// (SubjectAccessReview of get on /metrics), the kubelet plugin's filter
// (metrics.AuthFilter) in controller-runtime's FilterProvider.
func metricsOptions(opts Options) (metricsserver.Options, error) {
	o := metricsserver.Options{BindAddress: opts.MetricsAddr}
	if opts.InsecureMetrics {
		return o, nil
	}
	o.SecureServing = true
	o.FilterProvider = authFilter
	// No HTTP/2: the endpoint gains nothing from it and would be exposed to
	// its stream-reset floods (CVE-2023-44487), as kubebuilder's
	// scaffolding reasons too.
	o.TLSOpts = []func(*tls.Config){func(c *tls.Config) {
		c.MinVersion, c.NextProtos = tls.VersionTLS12, []string{"http/1.1"}
	}}
	if opts.MetricsCertDir != "" {
		// controller-runtime quietly serves a self-signed certificate when
		// the files are missing; a certificate asked for must be there.
		for _, f := range []string{metrics.CertFile, metrics.KeyFile} {
			if _, err := os.Stat(filepath.Join(opts.MetricsCertDir, f)); err != nil {
				return o, fmt.Errorf("metrics certificate: %w", err)
			}
		}
		o.CertDir, o.CertName, o.KeyName = opts.MetricsCertDir, metrics.CertFile, metrics.KeyFile
	}
	return o, nil
}

// authFilter is a metricsserver.Filter of metrics.AuthFilter, with a client
// of the manager's configuration.
func authFilter(cfg *rest.Config, httpClient *http.Client) (metricsserver.Filter, error) {
	client, err := kubernetes.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, fmt.Errorf("create client for metrics authentication: %w", err)
	}
	wrap := metrics.AuthFilter(client)
	return func(_ logr.Logger, h http.Handler) (http.Handler, error) { return wrap(h), nil }, nil
}
