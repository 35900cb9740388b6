package tessera

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// metricsContainers are the controller's and the plugin's containers and
// pod volumes.
func metricsContainers(t *testing.T, objs []runtime.Object) map[string]corev1.PodSpec {
	t.Helper()
	out := map[string]corev1.PodSpec{}
	for _, d := range find[*appsv1.Deployment](objs) {
		out["controller"] = d.Spec.Template.Spec
	}
	for _, d := range find[*appsv1.DaemonSet](objs) {
		out["kubelet-plugin"] = d.Spec.Template.Spec
	}
	if len(out) != 2 {
		t.Fatalf("want the controller Deployment and the plugin DaemonSet, got %v", out)
	}
	return out
}

// canReview says whether a ClusterRole lets its holder create TokenReviews
// and SubjectAccessReviews, which delegated authentication needs.
func canReview(role *rbacv1.ClusterRole) bool {
	var token, access bool
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "create") && len(r.ResourceNames) == 0 {
			token = token || slices.Contains(r.APIGroups, "authentication.k8s.io") && slices.Contains(r.Resources, "tokenreviews")
			access = access || slices.Contains(r.APIGroups, "authorization.k8s.io") && slices.Contains(r.Resources, "subjectaccessreviews")
		}
	}
	return token && access
}

// endpoint is the first endpoint of a ServiceMonitor.
func endpoint(t *testing.T, sm *unstructured.Unstructured) map[string]any {
	t.Helper()
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor %s has %d endpoints, want 1", sm.GetName(), len(eps))
	}
	return eps[0].(map[string]any)
}

// TestServiceMonitorsHonorLabels: both ServiceMonitors keep the namespace
// and pod labels of the series (the claim's, not the target's), which the
// recording rules and docs/observability.md's queries group by.
func TestServiceMonitorsHonorLabels(t *testing.T) {
	manifest, err := render(t, "--set", "serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, sm := range find[*unstructured.Unstructured](objects(t, manifest)) {
		if sm.GetKind() != "ServiceMonitor" {
			continue
		}
		seen++
		if got := endpoint(t, sm)["honorLabels"]; got != true {
			t.Errorf("ServiceMonitor %s honorLabels = %v, want true: without it Prometheus renames the series' namespace and pod to exported_namespace and exported_pod", sm.GetName(), got)
		}
	}
	if seen != 2 {
		t.Errorf("%d ServiceMonitors, want 2", seen)
	}
}

// TestSecureMetrics: by default both components serve /metrics only to
// authorised tokens over TLS, may review tokens, ship the role scrapers
// need, and the ServiceMonitors scrape over HTTPS with a bearer token.
func TestSecureMetrics(t *testing.T) {
	monitors := []string{"--set", "serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}
	for name, tc := range map[string]struct {
		args []string
		// secure: https, token reviews, the reader role.
		secure bool
		// certDir: the pods mount metrics.tlsSecret and the monitors verify it.
		certDir bool
		// token: the monitors' endpoint fields that carry the token.
		token map[string]any
		// readerBoundTo names the ServiceAccount the reader role is bound to.
		readerBoundTo string
	}{
		"default": {
			secure: true,
			token:  map[string]any{"bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"},
		},
		"a certificate, a token Secret and Prometheus's account": {
			args: []string{"--set", "metrics.tlsSecret=tessera-metrics-tls",
				"--set", "serviceMonitor.bearerTokenSecret.name=scraper-token",
				"--set", "serviceMonitor.prometheusServiceAccount.name=prometheus", "--set", "serviceMonitor.prometheusServiceAccount.namespace=monitoring"},
			secure: true, certDir: true,
			token:         map[string]any{"authorization": map[string]any{"type": "Bearer", "credentials": map[string]any{"name": "scraper-token", "key": "token"}}},
			readerBoundTo: "monitoring/prometheus",
		},
		"plain HTTP for try-outs": {args: []string{"--set", "metrics.secure=false"}},
	} {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, append(slices.Clone(monitors), tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, manifest)
			for component, spec := range metricsContainers(t, objs) {
				args := spec.Containers[0].Args
				want := "--metrics-secure=false"
				if tc.secure {
					want = "--metrics-secure=true"
				}
				if !slices.Contains(args, want) {
					t.Errorf("%s args %v lack %s", component, args, want)
				}
				if got := slices.Contains(args, "--metrics-cert-dir=/metrics-certs"); got != tc.certDir {
					t.Errorf("%s reads a certificate directory: %v, want %v", component, got, tc.certDir)
				}
				var mounted bool
				for _, v := range spec.Volumes {
					if v.Secret != nil && v.Secret.SecretName == "tessera-metrics-tls" {
						mounted = true
					}
				}
				if mounted != tc.certDir {
					t.Errorf("%s mounts the metrics certificate Secret: %v, want %v", component, mounted, tc.certDir)
				}
			}
			reviewers := map[string]bool{}
			var reader *rbacv1.ClusterRole
			for _, r := range find[*rbacv1.ClusterRole](objs) {
				reviewers[r.Name] = canReview(r)
				if r.Name == "tessera-metrics-reader" {
					reader = r
				}
			}
			for _, role := range []string{"tessera-controller", "tessera-kubelet-plugin"} {
				if reviewers[role] != tc.secure {
					t.Errorf("ClusterRole %s may create TokenReviews and SubjectAccessReviews: %v, want %v", role, reviewers[role], tc.secure)
				}
			}
			if tc.secure {
				want := []rbacv1.PolicyRule{{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}}}
				if reader == nil {
					t.Error("no tessera-metrics-reader ClusterRole for scrapers")
				} else if diff := cmp.Diff(want, reader.Rules); diff != "" {
					t.Errorf("tessera-metrics-reader rules (-want +got):\n%s", diff)
				}
			} else if reader != nil {
				t.Error("a metrics-reader ClusterRole although metrics are open")
			}
			var boundTo string
			for _, b := range find[*rbacv1.ClusterRoleBinding](objs) {
				if b.RoleRef.Name == "tessera-metrics-reader" {
					boundTo = b.Subjects[0].Namespace + "/" + b.Subjects[0].Name
				}
			}
			if boundTo != tc.readerBoundTo {
				t.Errorf("metrics reader bound to %q, want %q", boundTo, tc.readerBoundTo)
			}

			var seen int
			for _, sm := range find[*unstructured.Unstructured](objs) {
				if sm.GetKind() != "ServiceMonitor" {
					continue
				}
				seen++
				ep := endpoint(t, sm)
				if !tc.secure {
					if ep["scheme"] != "http" || ep["bearerTokenFile"] != nil || ep["authorization"] != nil {
						t.Errorf("ServiceMonitor %s endpoint %v, want plain http without a token", sm.GetName(), ep)
					}
					continue
				}
				if ep["scheme"] != "https" {
					t.Errorf("ServiceMonitor %s scheme %v, want https", sm.GetName(), ep["scheme"])
				}
				got := map[string]any{}
				for _, k := range []string{"bearerTokenFile", "authorization"} {
					if v, ok := ep[k]; ok {
						got[k] = v
					}
				}
				if diff := cmp.Diff(tc.token, got); diff != "" {
					t.Errorf("ServiceMonitor %s token (-want +got):\n%s", sm.GetName(), diff)
				}
				component := strings.TrimPrefix(sm.GetName(), "tessera-")
				wantTLS := map[string]any{"insecureSkipVerify": true}
				if tc.certDir {
					wantTLS = map[string]any{
						"ca":         map[string]any{"secret": map[string]any{"name": "tessera-metrics-tls", "key": "ca.crt"}},
						"serverName": "tessera-" + component + "-metrics.tessera-system.svc",
					}
				}
				if diff := cmp.Diff(wantTLS, ep["tlsConfig"]); diff != "" {
					t.Errorf("ServiceMonitor %s tlsConfig (-want +got):\n%s", sm.GetName(), diff)
				}
			}
			if seen != 2 {
				t.Errorf("%d ServiceMonitors, want 2", seen)
			}
			// The monitors verify against the Services the chart makes.
			services := map[string]bool{}
			for _, s := range find[*corev1.Service](objs) {
				services[s.Name] = true
			}
			for _, s := range []string{"tessera-controller-metrics", "tessera-kubelet-plugin-metrics"} {
				if !services[s] {
					t.Errorf("no Service %s", s)
				}
			}
		})
	}
}

// Several controllers without leader election would decide the same
// allocations against the same budgets at once.
func TestReplicasNeedLeaderElection(t *testing.T) {
	_, err := render(t, "--set", "controller.replicas=2", "--set", "controller.leaderElection.enabled=false")
	if err == nil || !strings.Contains(err.Error(), "controller.leaderElection.enabled=true") {
		t.Errorf("two replicas without leader election: %v, want a refusal naming controller.leaderElection.enabled=true", err)
	}
	for _, args := range [][]string{
		{"--set", "controller.replicas=2"},
		{"--set", "controller.replicas=1", "--set", "controller.leaderElection.enabled=false"},
	} {
		if _, err := render(t, args...); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
}
