package tessera

import (
	"encoding/json"
	"os"
	"regexp"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// dashboardExprs returns every query of the dashboard, its variables' too.
func dashboardExprs(t *testing.T, raw []byte) []string {
	t.Helper()
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	var out []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		out = append(out, v.Definition)
	}
	return out
}

// TestGrafanaDashboard: the dashboard's ConfigMap is off by default, carries
// the dashboard file with the sidecar's label when on, and every metric a
// query names is recorded by the chart's rules or served by Tessera (the
// names of served metrics that the rules and docs/observability.md use are
// checked against what the plugin and the controller serve by their tests).
func TestGrafanaDashboard(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range find[*corev1.ConfigMap](objects(t, manifest)) {
		if _, ok := cm.Data["tessera-gpu-usage.json"]; ok {
			t.Errorf("dashboard ConfigMap %s rendered by default", cm.Name)
		}
	}
	manifest, err = render(t, "--set", "grafanaDashboard.enabled=true")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("files/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, cm := range find[*corev1.ConfigMap](objects(t, manifest)) {
		data, ok := cm.Data["tessera-gpu-usage.json"]
		if !ok {
			continue
		}
		found = true
		if data+"\n" != string(raw) {
			t.Errorf("ConfigMap %s does not hold files/grafana-dashboard.json as is", cm.Name)
		}
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Errorf("ConfigMap %s labels %v lack grafana_dashboard=1", cm.Name, cm.Labels)
		}
	}
	if !found {
		t.Fatal("no dashboard ConfigMap with grafanaDashboard.enabled=true")
	}

	known := map[string]bool{}
	rules, err := os.ReadFile("files/recording-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := os.ReadFile("../../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`tessera[_:][a-z_:]*[a-z]`)
	for _, n := range names.FindAllString(string(rules)+string(docs), -1) {
		known[n] = true
	}
	for _, expr := range dashboardExprs(t, raw) {
		for _, n := range names.FindAllString(expr, -1) {
			if !known[n] {
				t.Errorf("dashboard query %q names %s, which no rule records and the docs do not list", expr, n)
			}
		}
	}
}
