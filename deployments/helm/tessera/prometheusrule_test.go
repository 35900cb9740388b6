package tessera

import (
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// promtool returns Prometheus's promtool that make builds from tools/promtool
// ($TESSERA_PROMTOOL).
func promtool(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TESSERA_PROMTOOL")
	if path == "" {
		t.Skip("TESSERA_PROMTOOL is not set: run the chart tests with make unit, which builds promtool from tools/promtool")
	}
	return path
}

// TestRecordingRules runs the recording rules' unit tests with Prometheus's
// own rule tester: each rule's value on a hand-computed set of series.
func TestRecordingRules(t *testing.T) {
	out, err := exec.Command(promtool(t), "test", "rules", "files/recording-rules_test.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestPrometheusRule: the PrometheusRule is off by default, refused without
// its CRD, and when on carries exactly the tested rules file, with the extra
// labels.
func TestPrometheusRule(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	if got := prometheusRules(objects(t, manifest)); len(got) != 0 {
		t.Errorf("PrometheusRules by default: %d, want none", len(got))
	}
	if _, err := render(t, "--set", "prometheusRule.enabled=true"); err == nil {
		t.Errorf("rendered a PrometheusRule on a cluster without its CRD")
	}
	manifest, err = render(t, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kube-prometheus",
		"--api-versions", "monitoring.coreos.com/v1/PrometheusRule")
	if err != nil {
		t.Fatal(err)
	}
	rules := prometheusRules(objects(t, manifest))
	if len(rules) != 1 {
		t.Fatalf("%d PrometheusRules, want 1", len(rules))
	}
	if got := rules[0].GetLabels()["release"]; got != "kube-prometheus" {
		t.Errorf("label release = %q, want kube-prometheus", got)
	}
	raw, err := os.ReadFile("files/recording-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := yaml.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	got, _, _ := unstructured.NestedFieldNoCopy(rules[0].Object, "spec")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PrometheusRule spec is not files/recording-rules.yaml (-want +got):\n%s", diff)
	}
}

func prometheusRules(objs []runtime.Object) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, u := range find[*unstructured.Unstructured](objs) {
		if u.GetKind() == "PrometheusRule" {
			out = append(out, u)
		}
	}
	return out
}

// TestClaimMetricsInterval: the plugin samples claims at the chart's interval.
func TestClaimMetricsInterval(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"default": {want: "--claim-metrics-interval=10s"},
		"off":     {args: []string{"--set", "kubeletPlugin.claimMetricsInterval=0s"}, want: "--claim-metrics-interval=0s"},
	} {
		t.Run(name, func(t *testing.T) {
			if args := pluginPodSpec(t, tc.args...).Containers[0].Args; !slices.Contains(args, tc.want) {
				t.Errorf("plugin args %v lack %s", args, tc.want)
			}
		})
	}
}
