// Package metrics holds the kubelet plugin's Prometheus metrics, the HTTP
// server that exposes them, and the filter that lets only authenticated,
// authorised scrapers in (AuthFilter), which the controller uses too. Every
// method is safe on a nil *Metrics, so that packages can take metrics as an
// optional dependency.
package metrics

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

const namespace = "tessera"

// Metrics are the kubelet plugin's metrics, on their own registry.
type Metrics struct {
	Registry *prometheus.Registry

	prepareDuration   *prometheus.HistogramVec
	unprepareDuration *prometheus.HistogramVec
	errors            *prometheus.CounterVec
	preparedDevices   *prometheus.GaugeVec
	migInstances      prometheus.Gauge
	mpsDaemons        prometheus.Gauge
	deviceTaints      prometheus.Gauge
	xidEvents         *prometheus.CounterVec
	migOffPending     prometheus.Gauge
	migOffFailures    prometheus.Counter
	migResetRequired  *prometheus.GaugeVec
	migDestroyPending prometheus.Gauge
	migDestroyFailed  prometheus.Counter
}

// New returns metrics registered on a fresh registry, with the Go and
// process collectors.
func New() *Metrics {
	// Prepare is a few milliseconds of plugin work plus NVML time (MIG
	// creation takes up to seconds on hardware), hence buckets from 1 ms.
	buckets := prometheus.ExponentialBuckets(0.001, 2, 14)
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		prepareDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "prepare_duration_seconds",
			Help:    "Time to prepare one claim, by the kind of its devices (gpu, mig, shared, mixed).",
			Buckets: buckets,
		}, []string{"kind"}),
		unprepareDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "unprepare_duration_seconds",
			Help:    "Time to unprepare one claim, by the kind of its devices.",
			Buckets: buckets,
		}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "prepare_errors_total",
			Help: "Claims whose prepare or unprepare failed, by operation.",
		}, []string{"operation"}),
		preparedDevices: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "prepared_devices",
			Help: "Devices of prepared claims, by kind.",
		}, []string{"kind"}),
		migInstances: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "mig_instances",
			Help: "MIG instances the plugin created and holds.",
		}),
		mpsDaemons: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "mps_daemons",
			Help: "MPS control daemons the plugin runs.",
		}),
		deviceTaints: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "device_taints",
			Help: "Devices currently tainted as unhealthy.",
		}),
		xidEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "xid_events_total",
			Help: "Critical XID events seen, by GPU index and XID.",
		}, []string{"gpu", "xid"}),
		migOffPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "mig_mode_off_pending",
			Help: "GPUs left in MIG mode with no MIG instance because switching it off failed; retried in the background.",
		}),
		migOffFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "mig_mode_off_failures_total",
			Help: "Failed attempts to switch MIG mode off on a GPU with no MIG instance left.",
		}),
		migResetRequired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "mig_mode_reset_required",
			Help: "1 for each GPU whose MIG mode change needed a reset: its mode is never changed again until the plugin restarts.",
		}, []string{"gpu"}),
		migDestroyPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "mig_destroy_pending",
			Help: "MIG instances that an unprepare could not destroy, destroyed in the background; their placements are offered to no claim meanwhile.",
		}),
		migDestroyFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "mig_destroy_failures_total",
			Help: "Failed attempts to destroy a MIG instance of an unprepared claim, in the unprepare and in the background.",
		}),
	}
	m.Registry.MustRegister(m.prepareDuration, m.unprepareDuration, m.errors, m.preparedDevices,
		m.migInstances, m.mpsDaemons, m.deviceTaints, m.xidEvents, m.migOffPending, m.migOffFailures, m.migResetRequired,
		m.migDestroyPending, m.migDestroyFailed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObservePrepare records one claim's prepare.
func (m *Metrics) ObservePrepare(kind string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.prepareDuration.WithLabelValues(kind).Observe(d.Seconds())
	if err != nil {
		m.errors.WithLabelValues("prepare").Inc()
	}
}

// ObserveUnprepare records one claim's unprepare.
func (m *Metrics) ObserveUnprepare(kind string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.unprepareDuration.WithLabelValues(kind).Observe(d.Seconds())
	if err != nil {
		m.errors.WithLabelValues("unprepare").Inc()
	}
}

// SetPrepared sets the gauges of what prepared claims hold.
func (m *Metrics) SetPrepared(devicesByKind map[string]int, migInstances, mpsDaemons int) {
	if m == nil {
		return
	}
	for _, kind := range []string{"gpu", "mig", "shared"} {
		m.preparedDevices.WithLabelValues(kind).Set(float64(devicesByKind[kind]))
	}
	m.migInstances.Set(float64(migInstances))
	m.mpsDaemons.Set(float64(mpsDaemons))
}

// SetDeviceTaints sets the number of tainted devices.
func (m *Metrics) SetDeviceTaints(n int) {
	if m == nil {
		return
	}
	m.deviceTaints.Set(float64(n))
}

// CountXID counts one critical XID event on a GPU.
func (m *Metrics) CountXID(gpu int, xid uint64) {
	if m == nil {
		return
	}
	m.xidEvents.WithLabelValues(fmt.Sprint(gpu), fmt.Sprint(xid)).Inc()
}

// SetMIGModeOffPending sets the number of GPUs whose MIG mode is to be
// switched off in the background.
func (m *Metrics) SetMIGModeOffPending(n int) {
	if m == nil {
		return
	}
	m.migOffPending.Set(float64(n))
}

// CountMIGModeOffFailure counts one failed attempt to switch MIG mode off.
func (m *Metrics) CountMIGModeOffFailure() {
	if m == nil {
		return
	}
	m.migOffFailures.Inc()
}

// SetMIGModeResetRequired marks a GPU whose MIG mode change needed a reset.
func (m *Metrics) SetMIGModeResetRequired(gpu int) {
	if m == nil {
		return
	}
	m.migResetRequired.WithLabelValues(fmt.Sprint(gpu)).Set(1)
}

// SetMIGDestroyPending sets the number of MIG instances to destroy in the
// background.
func (m *Metrics) SetMIGDestroyPending(n int) {
	if m == nil {
		return
	}
	m.migDestroyPending.Set(float64(n))
}

// CountMIGDestroyFailure counts one failed attempt to destroy a MIG instance
// of an unprepared claim.
func (m *Metrics) CountMIGDestroyFailure() {
	if m == nil {
		return
	}
	m.migDestroyFailed.Inc()
}

// ServeOption configures Serve.
type ServeOption func(*serveConfig)

type serveConfig struct {
	secure  bool
	client  kubernetes.Interface
	certDir string
}

// Secure serves over TLS and lets in only scrapers whose bearer token the API
// server authenticates (TokenReview) and whose user may get /metrics
// (SubjectAccessReview), both asked through client. The certificate is
// certDir's tls.crt and tls.key, reloaded when they change, or a self-signed
// one generated at start when certDir is empty. Without Secure, Serve speaks
// plain HTTP to anyone.
func Secure(client kubernetes.Interface, certDir string) ServeOption {
	return func(c *serveConfig) { c.secure, c.client, c.certDir = true, client, certDir }
}

// Serve exposes /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string, opts ...ServeOption) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	return m.serve(ctx, lis, opts...)
}

func (m *Metrics) serve(ctx context.Context, lis net.Listener, opts ...ServeOption) error {
	var cfg serveConfig
	for _, o := range opts {
		o(&cfg)
	}
	handler := promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
	secure := cfg.secure
	if secure {
		if cfg.client == nil {
			_ = lis.Close()
			return errNoClient
		}
		handler = newDelegatedAuth(cfg.client).wrap(handler)
		tc, err := tlsConfig(cfg.certDir)
		if err != nil {
			_ = lis.Close()
			return err
		}
		lis = tls.NewListener(lis, tc)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// The handler logs with the server's logger.
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.FromContext(ctx).Info("Serving metrics", "address", lis.Addr().String(), "secure", secure)
	select {
	case err := <-errc:
		return fmt.Errorf("serve metrics: %w", err)
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("stop metrics server: %w", err)
		}
		return nil
	}
}
