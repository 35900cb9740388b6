package plugin_test

import (
	"path/filepath"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/tessera-gpu/tessera/internal/plugin"
)

// TestReadyOnlyOnceRegisteredAndPublished: the plugin is not ready (its
// probe stays NOT_SERVING) while its slices are published but the kubelet
// has not registered it, and becomes ready when the kubelet does.
func TestReadyOnlyOnceRegisteredAndPublished(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fakeClient()
	ready := make(chan struct{})
	opts := runPlugin(t, ctx, plugin.Config{}, plugin.Components{KubeClient: client, Ready: func() { close(ready) }})
	waitForDevices(t, ctx, client, 27)
	select {
	case <-ready:
		t.Fatal("ready before the kubelet registered the plugin")
	default:
	}

	// What the kubelet does when it finds the registration socket.
	sockets, _ := filepath.Glob(filepath.Join(opts.RegistrarDir, "*-reg.sock"))
	if len(sockets) != 1 {
		t.Fatalf("registration sockets: %v", sockets)
	}
	reg := registerapi.NewRegistrationClient(dial(t, sockets[0]))
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
