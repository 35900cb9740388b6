package localcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// The chart's dashboard and recording rules, which name the metrics checked
// here.
const (
	dashboardFile = "../../deployments/helm/tessera/files/grafana-dashboard.json"
	rulesFile     = "../../deployments/helm/tessera/files/recording-rules.yaml"
)

// externalMetric names the metrics of other exporters that a query may join
// (dcgm-exporter's); no Tessera endpoint serves them.
var externalMetric = regexp.MustCompile(`^DCGM_`)

// TestDashboardNamesServedMetrics scrapes the controller and the tenancy
// node's kubelet plugin, authenticated as a scraper bound to the chart's
// metrics-reader role, while a tenant with budgets holds a whole GPU there,
// and checks that every metric the chart's Grafana dashboard and recording
// rules name is served by one of them: recording rules' outputs are the
// rules' own, and dcgm-exporter's DCGM_* names are external. A renamed
// metric leaves a panel silently empty; this fails instead.
func TestDashboardNamesServedMetrics(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	queries, recorded := chartQueries(t)

	budget := resource.MustParse("1Ti")
	tenant := newTenant(t, "dashboard", tenancyv1.GPUTenantSpec{
		AllowedDeviceClasses: []string{gpuapi.ClassGPU},
		Budget:               &tenancyv1.Budget{GPUMemory: &budget, Devices: map[string]int64{gpuapi.ClassGPU: 1}},
	})
	ns := tenantNamespace(t, tenant.Name)
	createTemplate(t, ns, "gpu", builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
	waitRunning(t, createPod(t, ns, "held", "gpu", onTenancyNodes))
	// The API server takes the status's showback summary (the CRD's schema
	// holds it): a calendar month's window, from a first day's 00:00 UTC.
	waitTenant(t, tenant.Name, "a showback window of the month", func(g *tenancyv1.GPUTenant) bool {
		sb := g.Status.Showback
		if sb == nil || sb.Month == nil {
			return false
		}
		start := sb.Month.Start.UTC()
		return start.Day() == 1 && start.Equal(start.Truncate(24*time.Hour))
	})

	reader := serviceAccountToken(t, ctx, "e2e-dashboard-"+rand.String(4), metricsReader)
	endpoints := map[string]string{"controller": tenancyController.MetricsAddress, "plugin " + tenancyNode.Name: node(t, tenancyNode.Name).MetricsAddress}
	// Per-claim series come with the plugin's next sample (10 s) and the
	// showback counters with the tenant's next reconcile or flush (a
	// minute): poll until nothing is missing. Scrapes take the test's
	// context, not the poll's, so that one at the poll's deadline does not
	// fail the test before the missing names are listed.
	var missing map[string][]string
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, 2*waitTimeout, true, func(context.Context) (bool, error) {
		served := map[string]bool{}
		for _, addr := range endpoints {
			maps.Copy(served, servedMetrics(scrapeAuthorised(t, ctx, addr, reader)))
		}
		missing = map[string][]string{}
		for q, where := range queries {
			for _, name := range metricNames(q) {
				if !recorded[name] && !externalMetric.MatchString(name) && !served[name] {
					missing[name] = append(missing[name], where)
				}
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil {
		for _, name := range slices.Sorted(maps.Keys(missing)) {
			t.Errorf("%s is named by %s but served by no live endpoint (%v)", name, strings.Join(slices.Compact(slices.Sorted(slices.Values(missing[name]))), ", "), slices.Sorted(maps.Keys(endpoints)))
		}
	}
}

// chartQueries returns every query of the chart's dashboard and recording
// rules, each with where it is, and the names the rules record.
func chartQueries(t *testing.T) (queries map[string]string, recorded map[string]bool) {
	t.Helper()
	queries, recorded = map[string]string{}, map[string]bool{}
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries[tg.Expr] = fmt.Sprintf("dashboard panel %q", p.Title)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			queries[v.Definition] = fmt.Sprintf("dashboard variable %q", v.Name)
		}
	}
	raw, err = os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Record string `json:"record"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(raw, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			recorded[r.Record] = true
			queries[r.Expr] = fmt.Sprintf("recording rule %s", r.Record)
		}
	}
	if len(queries) == 0 {
		t.Fatal("the chart's dashboard and rules hold no query")
	}
	return queries, recorded
}

// PromQL's parts that are no metric names: strings, label matchers,
// ranges, label lists of aggregations and vector matching, and keywords.
var (
	promStrings    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers   = regexp.MustCompile(`\{[^}]*\}`)
	promRanges     = regexp.MustCompile(`\[[^\]]*\]`)
	promLabelLists = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promLabelValue = regexp.MustCompile(`\blabel_values\s*\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)[^)]*\)`)
	promName       = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promKeywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// metricNames are the metric names a PromQL query (or a Grafana
// label_values variable) selects, sorted: every name that is neither a
// function or aggregation (followed by "(") nor a keyword, outside strings,
// matchers, ranges and label lists.
func metricNames(query string) []string {
	q := promLabelValue.ReplaceAllString(query, "$1")
	for _, re := range []*regexp.Regexp{promStrings, promMatchers, promRanges, promLabelLists} {
		q = re.ReplaceAllString(q, " ")
	}
	names := map[string]bool{}
	for _, loc := range promName.FindAllStringIndex(q, -1) {
		name := q[loc[0]:loc[1]]
		if loc[0] > 0 && (isDigit(q[loc[0]-1]) || q[loc[0]-1] == '.') {
			continue // the exponent or suffix of a number
		}
		if promKeywords[strings.ToLower(name)] || strings.HasPrefix(strings.TrimLeft(q[loc[1]:], " \t\n"), "(") {
			continue
		}
		names[name] = true
	}
	return slices.Sorted(maps.Keys(names))
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// servedMetrics are the metric names of a Prometheus text exposition, with
// a series or at least described.
func servedMetrics(body string) map[string]bool {
	out := map[string]bool{}
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				out[f[0]] = true
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			out[line[:i]] = true
		}
	}
	return out
}

// TestMetricNamesOfQueries: the names TestDashboardNamesServedMetrics
// checks are the metrics a query selects, no more (functions, labels,
// keywords, numbers) and no fewer. It needs no cluster.
func TestMetricNamesOfQueries(t *testing.T) {
	for query, want := range map[string][]string{
		`sum by (tenant, class) (increase(tessera_tenant_device_hours_total[24h]))`:               {"tessera_tenant_device_hours_total"},
		`label_values(tessera_claim_gpu_memory_limit_bytes, namespace)`:                           {"tessera_claim_gpu_memory_limit_bytes"},
		`tessera:namespace_gpu_busy_ratio{namespace=~"$namespace"}`:                               {"tessera:namespace_gpu_busy_ratio"},
		`max by (ns) (a) * on (ns, claim) group_left(pod) max by (ns, claim) (b) and c offset 5m`: {"a", "b", "c"},
		`sum(increase(x_total[30d])) / 2^30 + 1e3 * rate(y[5m] @ end())`:                          {"x_total", "y"},
		`DCGM_FI_DEV_GPU_UTIL{GPU_I_ID=""} > bool 0.5`:                                            {"DCGM_FI_DEV_GPU_UTIL"},
	} {
		if got := metricNames(query); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %v, want %v", query, got, want)
		}
	}
	queries, _ := chartQueries(t)
	for q, where := range queries {
		if len(metricNames(q)) == 0 {
			t.Errorf("%s: no metric found in %q", where, q)
		}
	}
}
