package realnode

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

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
