package plugin_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2/ktesting"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

// TestReadyOnlyOnceRegisteredAndPublished: the plugin is not ready (its
// probe stays NOT_SERVING) while its slices are published but the kubelet
// has not registered it, and becomes ready when the kubelet does.
func TestReadyOnlyOnceRegisteredAndPublished(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	lib, err := tnvml.Open(tnvml.Backend{Mock: "dgxh200", Count: 1, Seed: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	client := fakeClient()
	registrar := t.TempDir()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- plugin.Run(ctx, plugin.Options{
			NodeName: "n1", KubeClient: client, NVML: lib, Preparer: &fakePreparer{},
			PluginDataDir: t.TempDir(), RegistrarDir: registrar, RediscoverInterval: time.Hour,
			Ready: func() { close(ready) },
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		n, err := publishedDevices(ctx, client)
		return n == 27, err
	})
	if err != nil {
		t.Fatalf("slices not published: %v", err)
	}
	select {
	case <-ready:
		t.Fatal("ready before the kubelet registered the plugin")
	default:
	}

	// What the kubelet does when it finds the registration socket.
	sockets, _ := filepath.Glob(filepath.Join(registrar, "*-reg.sock"))
	if len(sockets) != 1 {
		t.Fatalf("registration sockets: %v", sockets)
	}
	conn, err := grpc.NewClient("unix://"+sockets[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	reg := registerapi.NewRegistrationClient(conn)
	if _, err := reg.GetInfo(ctx, &registerapi.InfoRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("not ready 30s after registration")
	}
}
