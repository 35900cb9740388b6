package schedulerbench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// attemptMetric is the scheduler's histogram of scheduling attempts.
const attemptMetric = "scheduler_scheduling_attempt_duration_seconds"

// metricsReader scrapes a scheduler's /metrics (kube-scheduler's or
// tessera-scheduler's) with the admin client certificate (the scheduler
// delegates authorization to the API server).
type metricsReader struct {
	url    string
	client *http.Client
}

func newMetricsReader(cp *cluster.ControlPlane, schedulerURL string) (*metricsReader, error) {
	cert, err := tls.LoadX509KeyPair(cp.Config.CertFile, cp.Config.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load admin client certificate: %w", err)
	}
	transport := &http.Transport{TLSClientConfig: &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, //nolint:gosec // the scheduler's self-signed loopback serving certificate
	}}
	return &metricsReader{url: schedulerURL + "/metrics", client: &http.Client{Timeout: 10 * time.Second, Transport: transport}}, nil
}

// histogram is cumulative bucket counts by upper bound, in seconds.
type histogram map[float64]uint64

// attempts returns the histogram of successful scheduling attempts.
func (m *metricsReader) attempts(ctx context.Context) (histogram, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape scheduler metrics: %w", err)
	}
	defer func() { _ = resp.Body.Close() }() // a read response: a failed close loses nothing
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape scheduler metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("parse scheduler metrics: %w", err)
	}
	h := histogram{}
	fam := families[attemptMetric]
	if fam == nil {
		return h, nil
	}
	for _, metric := range fam.GetMetric() {
		if label(metric, "result") != "scheduled" {
			continue
		}
		for _, b := range metric.GetHistogram().GetBucket() {
			h[b.GetUpperBound()] += b.GetCumulativeCount()
		}
	}
	return h, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func (h histogram) minus(o histogram) histogram {
	out := histogram{}
	for b, n := range h {
		out[b] = n - o[b]
	}
	return out
}

// quantile interpolates linearly inside the bucket that holds it.
func (h histogram) quantile(q float64) time.Duration {
	bounds := make([]float64, 0, len(h))
	for b := range h {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 || h[bounds[len(bounds)-1]] == 0 {
		return 0
	}
	total := float64(h[bounds[len(bounds)-1]])
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bounds {
		n := float64(h[b])
		if n >= rank {
			if b > 1e300 { // +Inf bucket
				return time.Duration(lower * float64(time.Second))
			}
			frac := 0.0
			if n > below {
				frac = (rank - below) / (n - below)
			}
			return time.Duration((lower + frac*(b-lower)) * float64(time.Second))
		}
		lower, below = b, n
	}
	return time.Duration(lower * float64(time.Second))
}
