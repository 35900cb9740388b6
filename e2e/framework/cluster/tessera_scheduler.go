package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/klog/v2"
)

// TesseraSchedulerName is the schedulerName of the profile that
// tessera-scheduler serves in the local cluster, next to the stock
// kube-scheduler's default-scheduler: pods choose it with spec.schedulerName.
const TesseraSchedulerName = "tessera-scheduler"

// TesseraSchedulerEnv names the tessera-scheduler binary for the e2e suite and
// tessera-local (make e2e and make dev-cluster set it, hack/make/placement.mk).
const TesseraSchedulerEnv = "TESSERA_SCHEDULER_BINARY"

// tesseraSchedulerConfig is tessera-scheduler's profile: the default plugins
// plus TesseraPlacement with a weight that outweighs the stock scores that
// differ between nodes, and every node scored (the stock adaptive
// percentageOfNodesToScore would hide the nodes where a share packs best).
const tesseraSchedulerConfig = `apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: %q
leaderElection:
  leaderElect: false
percentageOfNodesToScore: 100
profiles:
- schedulerName: %s
  plugins:
    multiPoint:
      enabled:
      - name: TesseraPlacement
        weight: 300
`

// StartTesseraScheduler starts tessera-scheduler as a second scheduler of the
// control plane and waits until it is ready. Stop stops it with the rest.
func (cp *ControlPlane) StartTesseraScheduler(ctx context.Context, binary string) error {
	if _, err := os.Stat(binary); err != nil {
		return fmt.Errorf("tessera-scheduler binary: %w (make tessera-scheduler builds it)", err)
	}
	config := filepath.Join(filepath.Dir(cp.LogDir), "tessera-scheduler.yaml")
	if err := os.WriteFile(config, fmt.Appendf(nil, tesseraSchedulerConfig, cp.Kubeconfig, TesseraSchedulerName), 0o644); err != nil {
		return fmt.Errorf("write tessera-scheduler config: %w", err)
	}
	ports, err := FreePorts(1)
	if err != nil {
		return err
	}
	p, err := cp.startSupervised(ctx, "tessera-scheduler", binary, []string{
		"--config=" + config,
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--authentication-kubeconfig=" + cp.Kubeconfig,
		"--authorization-kubeconfig=" + cp.Kubeconfig,
		"--bind-address=127.0.0.1",
		"-v=1",
	})
	if err != nil {
		return err
	}
	cp.TesseraSchedulerURL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
	insecure := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed loopback serving cert of our own child
	if err := waitReady(ctx, p, 2*time.Minute, httpCheck(insecure, cp.TesseraSchedulerURL+"/readyz", "ok")); err != nil {
		return err
	}
	klog.FromContext(ctx).V(1).Info("tessera-scheduler ready", "schedulerName", TesseraSchedulerName)
	return nil
}
