package realnode

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// kubeletConfig is the kubelet's configuration file. Beyond the socket, ports
// and directories it says: the cgroupfs driver (no systemd on the test host),
// start on cgroup v1 where the host has it, anonymous read access on loopback
// (the API server reads logs through it without a client certificate, and the
// harness reads its plugin-manager metrics), no swap check, and no disk
// eviction or image GC: evicting the imported images or pods would make the
// tests flaky, and a busy development disk reached even 1 % free (a run here
// lost two tests to the DiskPressure taint). kind configures its nodes the
// same way ("0%").
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
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
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
	ports, err := cluster.FreePorts(2)
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
	body, err := k.get(ctx, "/metrics")
	return string(body), err
}

// pods returns the pods the kubelet's pod manager holds (its /pods): the ones
// it serves exec, logs and port-forward for. A freshly started kubelet holds
// none until it has synced its pods from the API server, some time after it
// reports the node Ready.
func (k *kubelet) pods(ctx context.Context) ([]corev1.Pod, error) {
	body, err := k.get(ctx, "/pods")
	if err != nil {
		return nil, err
	}
	var list corev1.PodList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("decode kubelet /pods: %w", err)
	}
	return list.Items, nil
}

// get reads a path of the kubelet's HTTPS server on loopback (anonymous
// access is allowed there, see kubeletConfig).
func (k *kubelet) get(ctx context.Context, path string) ([]byte, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the kubelet's self-signed serving certificate on loopback
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(k.Port)+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }() // a read response: a failed close loses nothing
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read kubelet %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("kubelet %s: %d", path, resp.StatusCode)
	}
	return body, nil
}
