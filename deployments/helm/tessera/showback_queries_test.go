package tessera

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The monthly report's queries (docs/observability.md, "Showback") run in
// Prometheus's own engine (promtool test rules) over a scripted month of
// series, and each result is checked against a figure computed by hand.
//
// The timeline starts at 2026-10-31 00:00 UTC (hour 0, minute 0), a day of
// the previous month that the report must leave out; the report runs at
// 2026-12-01 00:00 UTC (hour 744) over [30d]: November, hours (24, 744].
//
// The controller's counters, scraped every hour (a coarse scrape, so that
// Prometheus's extrapolation shows in whole figures; at the chart's 30 s
// the same arithmetic applies to 30 s):
//
//	hours (0, 425]    pod tessera-controller-0 leads; it counts from 0
//	hours (425, 625]  the same pod's controller restarted: its counters
//	                  start from 0 again (a counter reset in the same series)
//	hours (625, 768]  the lease went to tessera-controller-1, which counts
//	                  from 0 (new series); tessera-controller-0's go stale
//
// What the tenants hold (devices per DeviceClass; 80 GiB per GPU and 10 GiB
// per 1g.10gb MIG partition):
//
//	team-a gpu.tessera.dev      2 until hour 625, then 4; of them 1 reported
//	                            idle in hours (100, 200]
//	team-a mig.gpu.tessera.dev  3 all along
//	team-b gpu.tessera.dev      1 from hour 300 (its first claim: its series
//	                            start then)
//
// How increase(x[30d]) at hour 744 reads one series (Prometheus's
// extrapolatedRate): the increase between the first and last samples in
// (24, 744], a reset adding the value before it, then extrapolated at the
// series' average rate: to the range's edge when a sample lies within 1.1
// scrape intervals of it, else by half an interval (and at the start never
// to before the counter's zero). So:
//
//   - tessera-controller-0's series, samples 25..625: extrapolated 1 h back
//     to hour 24 and 0.5 h forward past hour 625 (it went stale): the
//     sampled 600 h count as 601.5 h. team-b's, samples 301..625, start 0.5 h
//     before hour 301: its 324 h count as 325 h.
//   - tessera-controller-1's, samples 626..744: extrapolated 0.5 h back (its
//     zero, 1 h back, is farther): its 118 h count as 118.5 h.
//
// Device-hours (query 1):
//
//	team-a gpu  601.5 h × 2 + 118.5 h × 4 = 1203 + 474           = 1677
//	            (held: 601 × 2 + 119 × 4 = 1678; the half hour at the
//	            change of leader is counted at the old leader's rate)
//	team-a mig  601.5 h × 3 + 118.5 h × 3                        = 2160 (exact)
//	team-b gpu  325 h × 1 + 118.5 h × 1                          = 443.5 (held: 444)
//
// Active device-hours (query 2): team-a's gpu series on tessera-controller-0
// grew by 1200 − 100 (1 device idle for 100 h) = 1100 over its 600 sampled
// hours: 1100 × 601.5 / 600 = 1102.75; with tessera-controller-1's 474,
// 1576.75. The others are as in query 1.
//
// GiB-hours (query 3): team-a holds 2 × 80 + 3 × 10 = 190 GiB, then
// 4 × 80 + 3 × 10 = 350 GiB: 601.5 × 190 + 118.5 × 350 = 114285 + 41475 =
// 155760. team-b holds 80 GiB for 443.5 h (as its device-hours): 35480.
//
// Busy device-hours (query 4), from the plugin's utilization, scraped every
// minute; the subquery samples it at each minute of (Nov 1 00:00, Dec 1
// 00:00], 43200 steps, a series counting from its first sample to the step
// before its staleness marker:
//
//	team-a-train  claim train, a whole GPU at 0.5, reserved for two pods
//	              (two equal series: counted once), minute 1000 (Oct 31) to
//	              its marker at 15841: steps 1441..15840, 14400 × 0.5 / 60 = 120
//	              claim tune, a MIG partition at 0.25, minutes 5000 to 33800:
//	              28800 × 0.25 / 60 = 120                            → 240
//	team-b-infer  claim serve, a share at 0.75 all along, its pod label
//	              empty until minute 2000 (no pod known yet), then s1:
//	              43200 × 0.75 / 60 = 540
//	              claim batch, a whole GPU at 1.0, minutes 20000 to 21440:
//	              1440 / 60 = 24                                     → 564
var showbackWant = [][]expSample{
	{
		{`{tenant="team-a",class="gpu.tessera.dev"}`, 1677},
		{`{tenant="team-a",class="mig.gpu.tessera.dev"}`, 2160},
		{`{tenant="team-b",class="gpu.tessera.dev"}`, 443.5},
	},
	{
		{`{tenant="team-a",class="gpu.tessera.dev"}`, 1576.75},
		{`{tenant="team-a",class="mig.gpu.tessera.dev"}`, 2160},
		{`{tenant="team-b",class="gpu.tessera.dev"}`, 443.5},
	},
	{
		{`{tenant="team-a"}`, 155760},
		{`{tenant="team-b"}`, 35480},
	},
	{
		{`{namespace="team-a-train"}`, 240},
		{`{namespace="team-b-infer"}`, 564},
	},
}

const (
	showbackStart = "2026-10-31T00:00:00Z"
	// showbackMonthEnd is 2026-12-01 00:00 UTC, hour 744 of the timeline.
	showbackMonthEnd = 1796083200
	// showbackEnd is the timeline's last hour (Dec 2 00:00): the queries
	// pinned with @ to the month's end run then, over data that goes on.
	showbackEnd = 768
)

type expSample struct {
	Labels string  `json:"labels"`
	Value  float64 `json:"value"`
}

// TestShowbackQueries evaluates the queries of docs/observability.md's
// monthly report, taken from the doc itself, with promtool over the month
// above: at the month's end with [30d], and pinned to it with @ (as the doc
// says) a day later.
func TestShowbackQueries(t *testing.T) {
	queries := showbackQueries(t)
	if len(queries) != len(showbackWant) {
		t.Fatalf("docs/observability.md's monthly report has %d queries, this test expects %d: %q", len(queries), len(showbackWant), queries)
	}
	var counterTests, utilizationTests []promqlTest
	for i, q := range queries {
		if strings.Contains(q, "[30d:1m]") {
			// promtool's engine loads at most 10,000 samples, and this
			// subquery takes one per minute of the month for each series:
			// the month is added up from its 60 half-days, each the doc's
			// query over [12h:1m] pinned with @ to the half-day's end, run
			// a day after the month's end.
			var halves []string
			for k := 1; k <= 60; k++ {
				half := strings.ReplaceAll(q, "[30d:1m]", fmt.Sprintf("[12h:1m] @ %d", showbackMonthEnd-(60-k)*12*3600))
				halves = append(halves, fmt.Sprintf(`label_replace(%s, "half", "%d", "", "")`, half, k))
			}
			utilizationTests = append(utilizationTests, promqlTest{
				Expr:     "round(sum by (namespace) (" + strings.Join(halves, " or ") + "), 2^-10)",
				EvalTime: fmt.Sprintf("%dh", showbackEnd), ExpSamples: showbackWant[i],
			})
			continue
		}
		for _, at := range []struct {
			expr string
			hour int
		}{
			{q, 744},
			{pinToMonthEnd(q), showbackEnd},
		} {
			// Rounded to 1/1024 (exact in binary) so that only the last
			// bits of extrapolation's floating point are ignored.
			test := promqlTest{Expr: "round(" + at.expr + ", 2^-10)", EvalTime: fmt.Sprintf("%dh", at.hour), ExpSamples: showbackWant[i]}
			if strings.Contains(q, "tessera_claim_gpu_utilization_ratio") {
				utilizationTests = append(utilizationTests, test)
			} else {
				counterTests = append(counterTests, test)
			}
		}
	}
	file := ruleTestFile{
		// No rules: a coarse interval keeps promtool's rule loop short.
		EvaluationInterval: "1d",
		Tests: []ruleTestGroup{
			{Name: "controller counters", Interval: "1h", StartTimestamp: showbackStart, InputSeries: controllerCounters(), PromqlExprTests: counterTests},
			{Name: "plugin utilization", Interval: "1m", StartTimestamp: showbackStart, InputSeries: pluginUtilization(), PromqlExprTests: utilizationTests},
		},
	}
	raw, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "showback_test.yaml")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool(t), "test", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules on docs/observability.md's monthly report queries: %v\n%s", err, out)
	}
}

// showbackQueries are the queries of the ```promql block of
// docs/observability.md's section "Showback", without their comments.
func showbackQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../../../docs/observability.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	_, section, ok := strings.Cut(doc, "\n## Showback:")
	if !ok {
		t.Fatal(`docs/observability.md has no section "## Showback:"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "```promql\n")
	if !ok {
		t.Fatal("docs/observability.md's Showback section has no ```promql block")
	}
	block, _, _ = strings.Cut(block, "```")
	var out []string
	for _, para := range strings.Split(block, "\n\n") {
		var lines []string
		for _, l := range strings.Split(para, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			out = append(out, strings.Join(lines, "\n"))
		}
	}
	return out
}

// pinToMonthEnd adds "@ <the month's end>" after each range,
// as the doc says.
func pinToMonthEnd(q string) string {
	return regexp.MustCompile(`\[30d\]`).ReplaceAllString(q, fmt.Sprintf("$0 @ %d", showbackMonthEnd))
}

type ruleTestFile struct {
	EvaluationInterval string          `json:"evaluation_interval"`
	Tests              []ruleTestGroup `json:"tests"`
}

type ruleTestGroup struct {
	Name            string        `json:"name"`
	Interval        string        `json:"interval"`
	StartTimestamp  string        `json:"start_timestamp"`
	InputSeries     []inputSeries `json:"input_series"`
	PromqlExprTests []promqlTest  `json:"promql_expr_test"`
}

type inputSeries struct {
	Series string `json:"series"`
	Values string `json:"values"`
}

type promqlTest struct {
	Expr       string      `json:"expr"`
	EvalTime   string      `json:"eval_time"`
	ExpSamples []expSample `json:"exp_samples"`
}

// leaderProcess is one controller process while it leads: it counts from
// hour from and is scraped at hours from+1 .. to.
type leaderProcess struct {
	pod      string
	from, to int
}

// controllerCounters are the controller's showback counters as Prometheus
// scraped them every hour over the timeline, with the scrape's target
// labels.
func controllerCounters() []inputSeries {
	leaders := []leaderProcess{
		{"tessera-controller-0", 0, 425},
		{"tessera-controller-0", 425, 625},
		{"tessera-controller-1", 625, showbackEnd},
	}
	gpus := func(tenant string, h int) float64 {
		switch {
		case tenant == "team-a" && h <= 625:
			return 2
		case tenant == "team-a":
			return 4
		case h > 300:
			return 1
		}
		return 0
	}
	migs := func(tenant string, _ int) float64 {
		if tenant == "team-a" {
			return 3
		}
		return 0
	}
	idleGPUs := func(tenant string, h int) float64 {
		if tenant == "team-a" && h > 100 && h <= 200 {
			return 1
		}
		return 0
	}
	const gib = 1 << 30
	type counter struct {
		name, labels string
		// perHour is what is counted in hour h, (h-1, h].
		perHour func(h int) float64
	}
	var counters []counter
	for _, tenant := range []string{"team-a", "team-b"} {
		for class, held := range map[string]func(string, int) float64{"gpu.tessera.dev": gpus, "mig.gpu.tessera.dev": migs} {
			l := fmt.Sprintf(`tenant=%q,class=%q`, tenant, class)
			counters = append(counters,
				counter{"tessera_tenant_device_hours_total", l, func(h int) float64 { return held(tenant, h) }},
				counter{"tessera_tenant_active_device_hours_total", l, func(h int) float64 {
					if class == "gpu.tessera.dev" {
						return held(tenant, h) - idleGPUs(tenant, h)
					}
					return held(tenant, h)
				}})
		}
		counters = append(counters, counter{"tessera_tenant_gpu_memory_byte_hours_total", fmt.Sprintf(`tenant=%q`, tenant), func(h int) float64 {
			return (80*gpus(tenant, h) + 10*migs(tenant, h)) * gib
		}})
	}
	var out []inputSeries
	for _, c := range counters {
		for _, pod := range []string{"tessera-controller-0", "tessera-controller-1"} {
			values := make([]string, showbackEnd+1)
			for i := range values {
				values[i] = "_"
			}
			exported := false
			for _, p := range leaders {
				if p.pod != pod {
					continue
				}
				// A counter is exported from its first increment: the
				// process's first hour of usage.
				total, started := 0.0, false
				for h := p.from + 1; h <= p.to; h++ {
					total += c.perHour(h)
					started = started || c.perHour(h) > 0
					switch {
					case started:
						values[h] = strconv.FormatFloat(total, 'f', -1, 64)
						exported = true
					case exported:
						values[h], exported = "stale", false
					}
				}
				if exported && p.to < showbackEnd && (p.to+1 == len(values) || values[p.to+1] == "_") {
					values[p.to+1] = "stale"
				}
			}
			if strings.Trim(strings.Join(values, ""), "_") == "" {
				continue
			}
			out = append(out, inputSeries{
				Series: fmt.Sprintf(`%s{%s,job="tessera-controller",namespace="tessera",pod=%q}`, c.name, c.labels, pod),
				Values: compress(values),
			})
		}
	}
	return out
}

// pluginUtilization are the plugin's tessera_claim_gpu_utilization_ratio
// series scraped every minute over the timeline, their namespace and pod
// labels the claim's (the chart's ServiceMonitors honor them).
func pluginUtilization() []inputSeries {
	minutes := showbackEnd * 60
	series := []struct {
		namespace, claim, device, typ, pod string
		value                              string
		// from is the first sample's minute; until the staleness marker's
		// (none when past the timeline).
		from, until int
	}{
		{"team-a-train", "train", "gpu-0", "gpu", "p1", "0.5", 1000, 15841},
		{"team-a-train", "train", "gpu-0", "gpu", "p2", "0.5", 1000, 15841},
		{"team-a-train", "tune", "gpu-1-mig-1g10gb-0", "mig", "t1", "0.25", 5000, 33800},
		{"team-b-infer", "serve", "gpu-2-shared", "share", "", "0.75", 0, 2000},
		{"team-b-infer", "serve", "gpu-2-shared", "share", "s1", "0.75", 2000, minutes + 1},
		{"team-b-infer", "batch", "gpu-3", "gpu", "b1", "1", 20000, 21440},
	}
	var out []inputSeries
	for _, s := range series {
		values := make([]string, minutes+1)
		for m := range values {
			switch {
			case m >= s.from && m < s.until:
				values[m] = s.value
			case m == s.until:
				values[m] = "stale"
			default:
				values[m] = "_"
			}
		}
		out = append(out, inputSeries{
			Series: fmt.Sprintf(`tessera_claim_gpu_utilization_ratio{namespace=%q,pod=%q,claim=%q,request="gpu",device=%q,type=%q,job="tessera-kubelet-plugin"}`,
				s.namespace, s.pod, s.claim, s.device, s.typ),
			Values: compress(values),
		})
	}
	return out
}

// compress writes values in promtool's series notation, runs of one value
// as "vxN" (N+1 samples) and of missing samples as "_xN" (N samples).
func compress(values []string) string {
	var out []string
	for i := 0; i < len(values); {
		j := i
		for j < len(values) && values[j] == values[i] {
			j++
		}
		switch n := j - i; {
		case n == 1 || values[i] == "stale":
			for range n {
				out = append(out, values[i])
			}
		case values[i] == "_":
			out = append(out, fmt.Sprintf("_x%d", n))
		default:
			out = append(out, fmt.Sprintf("%sx%d", values[i], n-1))
		}
		i = j
	}
	return strings.Join(out, " ")
}
