package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/tessera-gpu/tessera/e2e/manifests"
)

// TenancyCRD is the GPUTenant CRD as make generate writes it for the chart,
// relative to the repository root.
const TenancyCRD = "deployments/helm/tessera/crds/tenancy.tessera.dev_gputenants.yaml"

// Controller is the tenancy controller (cmd/dra-controller) running under its
// own ServiceAccount.
type Controller struct {
	// MetricsAddress serves /metrics; ProbeAddress /healthz and /readyz.
	MetricsAddress, ProbeAddress string

	binary, kubeconfig, logDir string
	args                       []string
	process                    *Process
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

// InstallTenancy installs the GPUTenant CRD, tenancy's admission policies and
// the controller's RBAC, then starts the controller (binary) with a token of
// its ServiceAccount and waits until it is ready. args are extra flags, e.g.
// --untenanted=deny.
func (l *Local) InstallTenancy(ctx context.Context, binary string, args ...string) (*Controller, error) {
	if _, err := os.Stat(binary); err != nil {
		return nil, fmt.Errorf("controller binary: %w (build it with make build)", err)
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	crd, err := os.ReadFile(filepath.Join(root, TenancyCRD))
	if err != nil {
		return nil, fmt.Errorf("read GPUTenant CRD (make generate writes it): %w", err)
	}
	for _, m := range []struct {
		what string
		data []byte
	}{{"GPUTenant CRD", crd}, {"controller RBAC", manifests.ControllerRBAC}, {"tenancy policies", manifests.TenancyPolicies},
		{"sharing RBAC", manifests.SharingRBAC}, {"sharing policies", manifests.SharingPolicies}} {
		if err := l.Apply(ctx, m.data, ""); err != nil {
			return nil, fmt.Errorf("install %s: %w", m.what, err)
		}
	}
	kubeconfig, err := l.serviceAccountKubeconfig(ctx, manifests.ControllerServiceAccount, "tessera-controller")
	if err != nil {
		return nil, err
	}
	c := &Controller{binary: binary, kubeconfig: kubeconfig, logDir: l.LogDir, args: args}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Start starts the controller process and waits until it is ready.
func (c *Controller) Start(ctx context.Context) error {
	ports, err := freePorts(2)
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
	}, c.args...)
	p, err := StartProcess("dra-controller", c.logDir, c.binary, args, nil)
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

// Kill kills the controller at once, as a crash would.
func (c *Controller) Kill() {
	if c.process != nil {
		c.process.Kill()
	}
}

// serviceAccountKubeconfig writes a kubeconfig with a token of the
// ServiceAccount sa (namespace, name).
func (l *Local) serviceAccountKubeconfig(ctx context.Context, sa [2]string, user string) (string, error) {
	var token *authenticationv1.TokenRequest
	// The token controller needs the account in its informer first.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		token, err = l.Client.CoreV1().ServiceAccounts(sa[0]).CreateToken(ctx, sa[1], &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(7 * 24 * 3600))},
		}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return "", fmt.Errorf("create token for service account %s/%s: %w", sa[0], sa[1], err)
	}
	path := filepath.Join(l.WorkDir, user+".kubeconfig")
	if err := writeKubeconfig(path, l.APIServerURL, l.Config.TLSClientConfig.CAFile, user,
		&clientcmdapi.AuthInfo{Token: token.Status.Token}); err != nil {
		return "", err
	}
	return path, nil
}
