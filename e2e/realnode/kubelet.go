package realnode

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"text/template"
	"time"

	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// kubeletConfig is the kubelet's configuration file. Beyond the socket, ports
// and directories it says: the cgroupfs driver (no systemd on the test host),
// start on cgroup v1 where the host has it, anonymous read access on loopback
// (the API server reads logs through it without a client certificate, and the
// harness reads its plugin-manager metrics), no swap check, and eviction and
// image-GC thresholds a busy development disk never reaches, since evicting
// the imported images or pods would make the tests flaky.
var kubeletConfig = template.Must(template.New("kubelet.yaml").Parse(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{{.Socket}}
cgroupDriver: cgroupfs
failCgroupV1: {{not .CgroupV1}}
address: 127.0.0.1
port: {{.Port}}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {{.HealthzPort}}
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
failSwapOn: false
podLogsDir: {{.Dir}}/pod-logs
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: /etc/resolv.conf
syncFrequency: 10s
fileCheckFrequency: 1h
nodeStatusReportFrequency: 10s
`))

// kubelet is a running kubelet of the node.
type kubelet struct {
	// RootDir is the kubelet's --root-dir: its plugin registry and plugins
	// directories are where the DRA plugin registers and listens.
	RootDir string
	// Port is the kubelet's HTTPS port on 127.0.0.1.
	Port int

	dir, binDir, logDir string
	args                []string
	proc                *cluster.Process
}

// newKubelet writes the kubelet's configuration and its node identity.
func newKubelet(cp *cluster.ControlPlane, dir, rootDir, binDir, logDir, nodeName, criSocket string, host *Host) (*kubelet, error) {
	k := &kubelet{RootDir: rootDir, dir: dir, binDir: binDir, logDir: logDir}
	for _, d := range []string{k.RootDir, filepath.Join(dir, "pod-logs"), filepath.Join(dir, "pki")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	k.Port = ports[0]
	kubeconfig := filepath.Join(dir, "pki", "kubelet.kubeconfig")
	if err := cp.WriteNodeKubeconfig(kubeconfig, nodeName); err != nil {
		return nil, err
	}
	data := map[string]any{
		"Socket": criSocket, "CgroupV1": host.CgroupV1, "Port": ports[0], "HealthzPort": ports[1], "Dir": dir,
	}
	config := filepath.Join(dir, "kubelet.yaml")
	if err := writeTemplate(config, kubeletConfig, data); err != nil {
		return nil, err
	}
	k.args = []string{
		"--config=" + config,
		"--kubeconfig=" + kubeconfig,
		"--root-dir=" + k.RootDir,
		"--cert-dir=" + filepath.Join(dir, "pki"),
		// A hostname override that is an IP becomes the node's InternalIP
		// without the loopback check --node-ip gets.
		"--hostname-override=" + nodeName,
		"-v=4",
	}
	return k, nil
}

// start starts the kubelet process; the node's readiness is waited for by
// the caller, through the API server.
func (k *kubelet) start() error {
	p, err := cluster.StartProcess("kubelet", k.logDir, filepath.Join(k.binDir, "kubelet"), k.args, nil)
	if err != nil {
		return err
	}
	k.proc = p
	return nil
}

// PluginRegistryDir is where plugins put their registration sockets.
func (k *kubelet) PluginRegistryDir() string { return filepath.Join(k.RootDir, "plugins_registry") }

// PluginsDir is where plugins put their service sockets.
func (k *kubelet) PluginsDir() string { return filepath.Join(k.RootDir, "plugins") }

// metrics fetches the kubelet's /metrics.
func (k *kubelet) metrics(ctx context.Context) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the kubelet's self-signed serving certificate on loopback
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(k.Port)+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }() // a read response: a failed close loses nothing
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("read kubelet /metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("kubelet /metrics: %d", resp.StatusCode)
	}
	return string(body), nil
}

// freePorts reserves n distinct loopback ports by listening on them together,
// then releases them for the kubelet to take.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		// The ports are free again either way; one that stays taken makes the
		// kubelet fail to listen, which it reports.
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("reserve a loopback port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
