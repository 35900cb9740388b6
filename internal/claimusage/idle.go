package claimusage

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1ac "k8s.io/client-go/applyconfigurations/coordination/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// IdleReportFunc publishes a node's idle report: by claim UID, since when
// the claim has been idle. It is called with the whole report each time.
type IdleReportFunc func(ctx context.Context, since map[string]time.Time) error

// idleReporting follows, across samples, since when each claim is idle.
type idleReporting struct {
	threshold float64
	report    IdleReportFunc

	mu sync.Mutex
	// since is, by claim UID, the time of the first of the unbroken run of
	// samples that found the claim idle.
	since map[string]time.Time
	// sent is the report last published; nil before the first.
	sent map[string]time.Time
}

// observe takes one sample's idle claims: a claim idle before keeps its
// time, a new one starts now, every other is dropped.
func (r *idleReporting) observe(idle []string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[string]time.Time, len(idle))
	for _, uid := range idle {
		if t, ok := r.since[uid]; ok {
			next[uid] = t
		} else {
			next[uid] = now
		}
	}
	r.since = next
}

// send publishes the report when it differs from the last one published,
// so that a steady node writes nothing; a failed write is tried again
// after the next sample.
func (r *idleReporting) send(ctx context.Context) {
	r.mu.Lock()
	report := maps.Clone(r.since)
	unchanged := r.sent != nil && maps.EqualFunc(report, r.sent, time.Time.Equal)
	r.mu.Unlock()
	if unchanged {
		return
	}
	if err := r.report(ctx, report); err != nil {
		klog.FromContext(ctx).Error(err, "Publishing the idle report failed; trying again after the next sample")
		return
	}
	r.mu.Lock()
	r.sent = report
	r.mu.Unlock()
}

// LeaseIdleReport publishes a node's idle report in the Lease
// tenancyv1.IdleReportName(node) of namespace, with server-side apply. The
// controller reads it there and believes it only about claims of this
// node's pool; the chart's node-isolation policy lets a plugin write only
// its own node's Lease.
func LeaseIdleReport(client kubernetes.Interface, namespace, node string) IdleReportFunc {
	return func(ctx context.Context, since map[string]time.Time) error {
		utc := make(map[string]time.Time, len(since))
		for uid, t := range since {
			utc[uid] = t.UTC().Truncate(time.Second)
		}
		raw, err := json.Marshal(utc)
		if err != nil {
			return fmt.Errorf("encode idle report: %w", err)
		}
		lease := coordinationv1ac.Lease(tenancyv1.IdleReportName(node), namespace).
			WithAnnotations(map[string]string{tenancyv1.AnnotationIdleSince: string(raw)}).
			WithSpec(coordinationv1ac.LeaseSpec().WithHolderIdentity(node))
		if _, err := client.CoordinationV1().Leases(namespace).Apply(ctx, lease, metav1.ApplyOptions{FieldManager: fieldManager, Force: true}); err != nil {
			return fmt.Errorf("apply idle report %s/%s: %w", namespace, tenancyv1.IdleReportName(node), err)
		}
		return nil
	}
}

// fieldManager names the plugin's writes of its idle report.
const fieldManager = "tessera-kubelet-plugin"
