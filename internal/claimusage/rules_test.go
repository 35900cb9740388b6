package claimusage_test

import (
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tessera-gpu/tessera/internal/claimusage"
)

// TestRecordingRulesNameServedMetrics: every tessera_claim_gpu_* metric the
// chart's recording rules and docs/observability.md name is one the sampler
// serves, so that a renamed metric cannot leave a rule or a documented query
// silently empty.
func TestRecordingRulesNameServedMetrics(t *testing.T) {
	served := map[string]bool{}
	ch := make(chan *prometheus.Desc, 16)
	claimusage.New(nil, nil).Describe(ch)
	close(ch)
	name := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		served[name.FindStringSubmatch(d.String())[1]] = true
	}
	for _, file := range []string{"../../deployments/helm/tessera/files/recording-rules.yaml", "../../docs/observability.md"} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		named := regexp.MustCompile(`tessera_claim_gpu_[a-z_]+`).FindAllString(string(raw), -1)
		if len(named) == 0 {
			t.Errorf("%s names no tessera_claim_gpu_* metric", file)
		}
		for _, n := range named {
			if !served[n] {
				t.Errorf("%s names %s, which the sampler does not serve (it serves %v)", file, n, served)
			}
		}
	}
}
