package kubelet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// plugin is one registered DRA driver: the connection to its DRA gRPC endpoint.
type plugin struct {
	name       string
	endpoint   string
	conn       *grpc.ClientConn
	client     drapb.DRAPluginClient
	generation int
}

// registry tracks the DRA plugins that registered through the registration
// directory, the way kubelet's plugin watcher does: a new or replaced socket file
// is a (re-)registration.
type registry struct {
	dir string

	mu      sync.Mutex
	plugins map[string]*plugin
	seen    map[string]socketID // socket path -> identity of the file registered
	changed chan struct{}       // closed and replaced on every registration
}

type socketID struct {
	ino   uint64
	mtime time.Time
}

func newRegistry(dir string) *registry {
	return &registry{dir: dir, plugins: map[string]*plugin{}, seen: map[string]socketID{}, changed: make(chan struct{})}
}

// run scans the registration directory until ctx ends. Kubelet uses fsnotify; a
// short scan interval is as good for a handful of sockets and survives the
// directory being created after us.
func (r *registry) run(ctx context.Context) {
	logger := klog.FromContext(ctx)
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		r.scan(ctx)
		select {
		case <-ctx.Done():
			r.mu.Lock()
			for _, p := range r.plugins {
				if err := p.conn.Close(); err != nil {
					logger.V(4).Info("Closing plugin connection failed", "plugin", p.name, "err", err)
				}
			}
			r.mu.Unlock()
			return
		case <-ticker.C:
		}
	}
}

func (r *registry) scan(ctx context.Context) {
	logger := klog.FromContext(ctx)
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket == 0 {
			continue
		}
		path := filepath.Join(r.dir, e.Name())
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			continue
		}
		id := socketID{ino: st.Ino, mtime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec)}
		r.mu.Lock()
		known := r.seen[path] == id
		r.mu.Unlock()
		if known {
			continue
		}
		if err := r.register(ctx, path); err != nil {
			// A socket left behind by a dead plugin fails here; it is tried again
			// on the next scan and replaced when the plugin comes back.
			logger.V(4).Info("Plugin registration failed", "socket", path, "err", err)
			continue
		}
		r.mu.Lock()
		r.seen[path] = id
		r.mu.Unlock()
	}
}

func (r *registry) register(ctx context.Context, socket string) error {
	logger := klog.FromContext(ctx)
	conn, err := dialUnix(socket)
	if err != nil {
		return err
	}
	// The registration connection is only needed for these two calls; a failed
	// close leaks nothing the process keeps.
	defer func() { _ = conn.Close() }()
	reg := registerapi.NewRegistrationClient(conn)
	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := reg.GetInfo(callCtx, &registerapi.InfoRequest{})
	if err != nil {
		return fmt.Errorf("GetInfo on %s: %w", socket, err)
	}
	notify := func(err error) error {
		status := &registerapi.RegistrationStatus{PluginRegistered: err == nil}
		if err != nil {
			status.Error = err.Error()
		}
		if _, nerr := reg.NotifyRegistrationStatus(callCtx, status); nerr != nil {
			return fmt.Errorf("NotifyRegistrationStatus on %s: %w", socket, nerr)
		}
		return err
	}
	if info.Type != registerapi.DRAPlugin {
		return notify(fmt.Errorf("plugin %s has type %q, only %s is supported", info.Name, info.Type, registerapi.DRAPlugin))
	}
	if !slices.Contains(info.SupportedVersions, drapb.DRAPluginService) {
		return notify(fmt.Errorf("plugin %s supports %s, not %s", info.Name, strings.Join(info.SupportedVersions, ","), drapb.DRAPluginService))
	}
	draConn, err := dialUnix(info.Endpoint)
	if err != nil {
		return notify(err)
	}
	if err := notify(nil); err != nil {
		return errors.Join(err, draConn.Close())
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	generation := 1
	if old := r.plugins[info.Name]; old != nil {
		if err := old.conn.Close(); err != nil {
			logger.V(4).Info("Closing the replaced plugin connection failed", "plugin", old.name, "err", err)
		}
		generation = old.generation + 1
	}
	r.plugins[info.Name] = &plugin{name: info.Name, endpoint: info.Endpoint, conn: draConn, client: drapb.NewDRAPluginClient(draConn), generation: generation}
	close(r.changed)
	r.changed = make(chan struct{})
	logger.V(1).Info("Registered DRA plugin", "driver", info.Name, "endpoint", info.Endpoint, "generation", generation)
	return nil
}

func (r *registry) get(driver string) *plugin {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.plugins[driver]
}

// waitRegistered blocks until driver has registered more than after times.
func (r *registry) waitRegistered(ctx context.Context, driver string, after int) (*plugin, error) {
	for {
		r.mu.Lock()
		p, changed := r.plugins[driver], r.changed
		r.mu.Unlock()
		if p != nil && p.generation > after {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for DRA plugin %s to register: %w", driver, context.Cause(ctx))
		case <-changed:
		}
	}
}

func dialUnix(path string) (*grpc.ClientConn, error) {
	// The default reconnect backoff grows to two minutes; a restarted plugin must
	// be reachable again within a second, as kubelet's is.
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return conn, nil
}
