package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// InstallChart installs Tessera's chart with the Helm CLI, as docs/install.md
// tells a user to: helm install into the release namespace, with values.
func InstallChart(ctx context.Context, helm, kubeconfig string, values []string) error {
	return runHelm(ctx, helm, kubeconfig, values, "install", "--create-namespace")
}

// UpgradeChart upgrades the release installed by InstallChart with the Helm
// CLI, as docs/install.md tells a user to: helm upgrade with the values the
// release has (--reuse-values) changed by values. It returns once Helm has
// applied the objects; the DaemonSet's rolling update goes on after.
func UpgradeChart(ctx context.Context, helm, kubeconfig string, values []string) error {
	return runHelm(ctx, helm, kubeconfig, values, "upgrade", "--reuse-values")
}

// runHelm runs `helm <verb>` of the release on the repository's chart, with
// flags and values (--set each).
func runHelm(ctx context.Context, helm, kubeconfig string, values []string, verb string, flags ...string) error {
	if helm == "" {
		return errors.New("no Helm CLI: set TESSERA_HELM (make builds it from tools/helm)")
	}
	dir, err := cluster.ChartDir()
	if err != nil {
		return err
	}
	args := append([]string{verb, cluster.ReleaseName, dir, "--namespace", cluster.ReleaseNamespace, "--kubeconfig", kubeconfig}, flags...)
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helm %s: %w: %s", verb, err, strings.TrimSpace(out.String()))
	}
	return nil
}
