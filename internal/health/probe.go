package health

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/klog/v2"
)

// Probe is the gRPC health endpoint (grpc.health.v1) that the kubelet's
// gRPC probes call. It reports SERVING while the plugin runs.
type Probe struct {
	server *health.Server
}

// NewProbe returns a probe that reports NOT_SERVING until SetServing.
func NewProbe() *Probe {
	p := &Probe{server: health.NewServer()}
	p.server.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	return p
}

// SetServing sets the reported status.
func (p *Probe) SetServing(serving bool) {
	status := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		status = healthpb.HealthCheckResponse_SERVING
	}
	p.server.SetServingStatus("", status)
}

// Serve serves the endpoint on addr (e.g. ":51515") until ctx ends.
func (p *Probe) Serve(ctx context.Context, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for health checks on %s: %w", addr, err)
	}
	return p.serve(ctx, lis)
}

func (p *Probe) serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, p.server)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.FromContext(ctx).Info("Serving gRPC health checks", "address", lis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serve health checks: %w", err)
	case <-ctx.Done():
		p.server.Shutdown()
		srv.GracefulStop()
		return nil
	}
}
