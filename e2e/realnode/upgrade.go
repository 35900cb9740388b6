package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// UpgradeChart upgrades the release installed by InstallChart with the Helm
// CLI, as docs/install.md tells a user to: helm upgrade with the values the
// release has (--reuse-values) changed by values. It returns once Helm has
// applied the objects; the DaemonSet's rolling update goes on after.
func UpgradeChart(ctx context.Context, helm, kubeconfig string, values []string) error {
	if helm == "" {
		return errors.New("no Helm CLI: set TESSERA_HELM (make builds it from tools/helm)")
	}
	dir, err := cluster.ChartDir()
	if err != nil {
		return err
	}
	args := []string{"upgrade", cluster.ReleaseName, dir, "--namespace", cluster.ReleaseNamespace, "--reuse-values", "--kubeconfig", kubeconfig}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("helm upgrade: %w: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// PluginPods returns every plugin pod the API server has bound to the node,
// those being deleted included: during a rolling update the old and the new.
func (n *Node) PluginPods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := n.cp.Client.CoreV1().Pods(cluster.ReleaseNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: PluginPodSelector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", n.Name).String(),
	})
	if err != nil {
		return nil, err
	}
	return list.Items, nil
}
