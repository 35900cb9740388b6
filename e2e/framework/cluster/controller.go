package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// Controller is the tenancy controller (cmd/dra-controller) running under its
// own ServiceAccount.
type Controller struct {
	// MetricsAddress serves /metrics; ProbeAddress /healthz and /readyz.
	MetricsAddress, ProbeAddress string

	binary, kubeconfig, logDir string
	// chartArgs come from the chart's Deployment; args, from the test, win.
	chartArgs, args []string
	process         *Process
	// name names its process and log; "" is dra-controller.
	name string
}

// DefaultControllerBinary is $TESSERA_CONTROLLER_BINARY, or bin/dra-controller
// in the repository.
func DefaultControllerBinary() string {
	if p := os.Getenv("TESSERA_CONTROLLER_BINARY"); p != "" {
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		return filepath.Join("bin", "dra-controller")
	}
	return filepath.Join(root, "bin", "dra-controller")
}

// InstallTenancy starts the tenancy controller (binary) as the chart runs it
// and waits until it is ready; the chart has installed the GPUTenant CRD,
// tenancy's admission policies and the controller's RBAC. args are extra
// flags, e.g. --untenanted=deny.
func (l *Local) InstallTenancy(ctx context.Context, binary string, args ...string) (*Controller, error) {
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("controller binary: %w (build it with make build)", err)
	}
	// The chart's Deployment has a pod: the controller runs with a token of the
	// chart's ServiceAccount bound to that pod, and the chart's arguments less
	// the ports and verbosity the local cluster sets.
	if l.Install.Controller == nil {
		return nil, errors.New("the chart was rendered without the controller (controller.enabled=false)")
	}
	pod, err := l.PodOn(ctx, l.Install.Controller.Spec.Selector, "")
	if err != nil {
		return nil, err
	}
	kubeconfig, err := l.PodKubeconfig(ctx, pod, "tessera-controller")
	if err != nil {
		return nil, err
	}
	chartArgs := ContainerArgs(l.Install.Controller.Spec.Template.Spec, "metrics-bind-address", "health-probe-bind-address", "v")
	c := &Controller{binary: binary, kubeconfig: kubeconfig, logDir: l.LogDir, chartArgs: chartArgs, args: args}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Replica is another replica of the controller, as the chart's Deployment
// with more than one replica runs it: same ServiceAccount and flags, ports
// of its own. It is not started.
func (c *Controller) Replica() *Controller {
	return &Controller{binary: c.binary, kubeconfig: c.kubeconfig, logDir: c.logDir, chartArgs: c.chartArgs, args: slices.Clone(c.args), name: "dra-controller-replica"}
}

// Start starts the controller process and waits until it is ready.
func (c *Controller) Start(ctx context.Context) error {
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	c.MetricsAddress = "127.0.0.1:" + strconv.Itoa(ports[0])
	c.ProbeAddress = "127.0.0.1:" + strconv.Itoa(ports[1])
	args := append([]string{
		"--kubeconfig=" + c.kubeconfig,
		"--metrics-bind-address=" + c.MetricsAddress,
		"--health-probe-bind-address=" + c.ProbeAddress,
		"-v=2",
	}, append(slices.Clone(c.chartArgs), c.args...)...)
	name := c.name
	if name == "" {
		name = "dra-controller"
	}
	p, err := StartProcess(name, c.logDir, c.binary, args, nil)
	if err != nil {
		return err
	}
	c.process = p
	client := &http.Client{Timeout: 2 * time.Second}
	return waitReady(ctx, p, time.Minute, httpCheck(client, "http://"+c.ProbeAddress+"/readyz", "ok"))
}

// Restart stops the controller and starts it again with args as its extra
// flags.
func (c *Controller) Restart(ctx context.Context, args ...string) error {
	if err := c.Stop(); err != nil {
		return err
	}
	c.args = args
	return c.Start(ctx)
}

// Stop stops the controller (SIGTERM, then SIGKILL after a grace period).
func (c *Controller) Stop() error {
	if c.process == nil {
		return nil
	}
	return c.process.Stop(10 * time.Second)
}

// Freeze stops the controller process (SIGSTOP) until Thaw. Past its
// leader-election renew deadline (10 s) a frozen leader loses the lease and
// exits when thawed: keep freezes shorter.
func (c *Controller) Freeze() error { return c.process.Freeze() }

// Thaw lets a frozen controller go on.
func (c *Controller) Thaw() error { return c.process.Thaw() }

// Kill kills the controller at once, as a crash would.
func (c *Controller) Kill() {
	if c.process != nil {
		c.process.Kill()
	}
}

// Kubeconfig is the controller's kubeconfig: its ServiceAccount's token.
func (c *Controller) Kubeconfig() string { return c.kubeconfig }
