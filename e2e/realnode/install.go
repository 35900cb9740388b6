package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// InstallChart installs Tessera's chart with the Helm CLI, as docs/install.md
// tells a user to: helm install into the release namespace, with values.
func InstallChart(ctx context.Context, helm, kubeconfig string, values []string) error {
	if helm == "" {
		return errors.New("no Helm CLI: set TESSERA_HELM (make builds it from tools/helm)")
	}
	dir, err := cluster.ChartDir()
	if err != nil {
		return err
	}
	args := []string{"install", cluster.ReleaseName, dir, "--namespace", cluster.ReleaseNamespace, "--create-namespace", "--kubeconfig", kubeconfig}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helm install: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}
