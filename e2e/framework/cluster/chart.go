package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ReleaseNamespace is where the local cluster installs Tessera's chart.
const ReleaseNamespace = "tessera-system"

// ReleaseName is the Helm release name of the local install.
const ReleaseName = "tessera"

// Install is Tessera as the chart installed it: what the local cluster needs to
// run each component the way the chart configures it.
type Install struct {
	// Manifest is the rendered chart, as applied.
	Manifest []byte
	// Plugin is the kubelet plugin DaemonSet.
	Plugin *appsv1.DaemonSet
	// Controller is the controller Deployment, nil when the chart has none.
	Controller *appsv1.Deployment
}

// DefaultHelm is $TESSERA_HELM, the Helm CLI make builds from tools/helm.
func DefaultHelm() string { return os.Getenv("TESSERA_HELM") }

// ChartDir is the chart in the repository.
func ChartDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "deployments", "helm", "tessera"), nil
}

// RenderChart runs helm template on Tessera's chart with the given --set values.
func RenderChart(ctx context.Context, helm string, values []string) ([]byte, error) {
	if helm == "" {
		return nil, errors.New("no Helm CLI: set TESSERA_HELM (make builds it from tools/helm: hack/go-tool.sh helm tools/helm helm.sh/helm/v4/cmd/helm)")
	}
	dir, err := ChartDir()
	if err != nil {
		return nil, err
	}
	args := []string{"template", ReleaseName, dir, "--namespace", ReleaseNamespace, "--include-crds"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.CommandContext(ctx, helm, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("helm template: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// InstallChart renders the chart and applies every object to the cluster, as
// helm install would.
func (l *Local) InstallChart(ctx context.Context, helm string, values []string) (*Install, error) {
	manifest, err := RenderChart(ctx, helm, values)
	if err != nil {
		return nil, err
	}
	ns := fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n", ReleaseNamespace)
	if err := l.Apply(ctx, []byte(ns), ""); err != nil {
		return nil, fmt.Errorf("create release namespace: %w", err)
	}
	if err := l.Apply(ctx, manifest, ReleaseNamespace); err != nil {
		return nil, fmt.Errorf("install the chart: %w", err)
	}
	in := &Install{Manifest: manifest}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read rendered chart: %w", err)
		}
		var meta metav1.TypeMeta
		if err := utilyaml.Unmarshal(doc, &meta); err != nil {
			return nil, fmt.Errorf("decode rendered chart: %w", err)
		}
		switch meta.Kind {
		case "DaemonSet":
			in.Plugin = &appsv1.DaemonSet{}
			err = utilyaml.Unmarshal(doc, in.Plugin)
		case "Deployment":
			in.Controller = &appsv1.Deployment{}
			err = utilyaml.Unmarshal(doc, in.Controller)
		}
		if err != nil {
			return nil, fmt.Errorf("decode rendered %s: %w", meta.Kind, err)
		}
	}
	if in.Plugin == nil {
		return nil, errors.New("the rendered chart has no kubelet plugin DaemonSet")
	}
	return in, nil
}

// PodOn waits until the controller of owner has a pod bound to nodeName (any
// node when empty) and returns it. The local cluster runs each component as a
// process with a token bound to the pod the chart's workload created for it, so
// the API server sees the same identity, node included, as in a real cluster.
func (l *Local) PodOn(ctx context.Context, selector *metav1.LabelSelector, nodeName string) (*corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		return nil, err
	}
	opts := metav1.ListOptions{LabelSelector: sel.String()}
	if nodeName != "" {
		opts.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	}
	var pod *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := l.Client.CoreV1().Pods(ReleaseNamespace).List(ctx, opts)
		if err != nil {
			return false, nil
		}
		for i := range list.Items {
			if p := &list.Items[i]; p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
				pod = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("wait for a pod of %s on node %q: %w", sel, nodeName, err)
	}
	return pod, nil
}

// PodKubeconfig writes a kubeconfig with a token of pod's ServiceAccount bound
// to pod: the API server adds the pod's node to the user's extra info, which the
// chart's node-isolation policy checks.
func (l *Local) PodKubeconfig(ctx context.Context, pod *corev1.Pod, name string) (string, error) {
	var token *authenticationv1.TokenRequest
	// The token controller needs the account in its informer first.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		token, err = l.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{
				ExpirationSeconds: new(int64(7 * 24 * 3600)),
				BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			},
		}, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return "", fmt.Errorf("create token for service account %s/%s bound to pod %s: %w", pod.Namespace, pod.Spec.ServiceAccountName, pod.Name, err)
	}
	path := filepath.Join(l.WorkDir, name+".kubeconfig")
	if err := writeKubeconfig(path, l.APIServerURL, l.Config.CAFile, name, &clientcmdapi.AuthInfo{Token: token.Status.Token}); err != nil {
		return "", err
	}
	return path, nil
}

// ContainerArgs returns the first container's arguments with the flags named in
// drop removed: the local cluster replaces host paths and ports with its own.
func ContainerArgs(spec corev1.PodSpec, drop ...string) []string {
	var out []string
	for _, a := range spec.Containers[0].Args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		keep := true
		for _, d := range drop {
			if name == d {
				keep = false
			}
		}
		if keep {
			out = append(out, a)
		}
	}
	return out
}
