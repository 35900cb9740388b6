package plugin_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func sorted(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}

// mockH200s opens a mock node of count H200s.
func mockH200s(t *testing.T, count int) tnvml.Library {
	t.Helper()
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: count, Seed: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	return lib
}

// runUntilEnd runs what in the background until the test ends, then cancels
// its context and fails the test if it returned an error.
func runUntilEnd(t *testing.T, ctx context.Context, what string, run func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	})
}

// runPlugin runs plugin.Run until the test ends. What cfg and parts leave
// unset is filled as these tests' node has it: node n1 on a fake API
// server, one mock H200 as discovered, the fake preparer, fresh plugin and
// registrar directories, no rediscovery. It returns the configuration as run.
func runPlugin(t *testing.T, ctx context.Context, cfg plugin.Config, parts plugin.Components) plugin.Config {
	t.Helper()
	if cfg.NodeName == "" {
		cfg.NodeName = "n1"
	}
	if cfg.PluginDataDir == "" {
		cfg.PluginDataDir = t.TempDir()
	}
	if cfg.RegistrarDir == "" {
		cfg.RegistrarDir = t.TempDir()
	}
	if cfg.RediscoverInterval == 0 {
		cfg.RediscoverInterval = time.Hour
	}
	if parts.KubeClient == nil {
		parts.KubeClient = fakeClient()
	}
	if parts.NVML == nil {
		parts.NVML = mockH200s(t, 1)
	}
	if parts.Preparer == nil {
		parts.Preparer = &fakePreparer{}
	}
	var err error
	if parts.Inventory, err = tnvml.DiscoverNode(ctx, parts.NVML); err != nil {
		t.Fatal(err)
	}
	runUntilEnd(t, ctx, "Run", func(ctx context.Context) error { return plugin.Run(ctx, cfg, parts) })
	return cfg
}

// dial connects to a plugin's unix socket, as the kubelet does.
func dial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// waitForDevices waits until client holds want published devices.
func waitForDevices(t *testing.T, ctx context.Context, client *fake.Clientset, want int) {
	t.Helper()
	var got int
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		got, err = publishedDevices(ctx, client)
		return got == want, err
	})
	if err != nil {
		t.Fatalf("published %d devices, want %d: %v", got, want, err)
	}
}

// prepareOnceServing calls NodePrepareResources as soon as the plugin serves it.
func prepareOnceServing(t *testing.T, ctx context.Context, dra drapb.DRAPluginClient, claims []*drapb.Claim) *drapb.NodePrepareResourcesResponse {
	t.Helper()
	var resp *drapb.NodePrepareResourcesResponse
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		resp, err = dra.NodePrepareResources(ctx, &drapb.NodePrepareResourcesRequest{Claims: claims})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("NodePrepareResources: %v", err)
	}
	return resp
}
