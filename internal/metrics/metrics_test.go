package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/klog/v2/ktesting"
)

func TestMetrics(t *testing.T) {
	m := New()
	m.ObservePrepare("mig", 3*time.Millisecond, nil)
	m.ObservePrepare("gpu", time.Millisecond, errors.New("boom"))
	m.ObserveUnprepare("mig", time.Millisecond, nil)
	m.SetPrepared(map[string]int{"mig": 2, "shared": 1}, 2, 1)
	m.CountXID(3, 79)

	for name, tc := range map[string]struct {
		metric string
		want   string
	}{
		"errors": {"tessera_prepare_errors_total", `
# HELP tessera_prepare_errors_total Claims whose prepare or unprepare failed, by operation.
# TYPE tessera_prepare_errors_total counter
tessera_prepare_errors_total{operation="prepare"} 1
`},
		"devices": {"tessera_prepared_devices", `
# HELP tessera_prepared_devices Devices of prepared claims, by kind.
# TYPE tessera_prepared_devices gauge
tessera_prepared_devices{kind="gpu"} 0
tessera_prepared_devices{kind="mig"} 2
tessera_prepared_devices{kind="shared"} 1
`},
		"xid": {"tessera_xid_events_total", `
# HELP tessera_xid_events_total Critical XID events seen, by GPU index and XID.
# TYPE tessera_xid_events_total counter
tessera_xid_events_total{gpu="3",xid="79"} 1
`},
	} {
		t.Run(name, func(t *testing.T) {
			if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(tc.want), tc.metric); err != nil {
				t.Error(err)
			}
		})
	}
	if n := testutil.CollectAndCount(m.prepareDuration); n != 2 {
		t.Errorf("prepare histograms = %d, want one per kind (2)", n)
	}
	var nilMetrics *Metrics
	nilMetrics.ObservePrepare("gpu", time.Second, nil) // must not panic
}

func TestServe(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	m := New()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.serve(ctx, lis) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if !strings.Contains(string(body), "tessera_mig_instances") {
		t.Errorf("/metrics does not list tessera_mig_instances")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve after cancel: %v", err)
	}
}
