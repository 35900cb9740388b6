package claimusage_test

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/claimusage"
)

// TestPodsOfClaimsPreparedBeforeRestart: a claim the sampler did not see
// prepared (the plugin restarted since) is labelled with the pods the API
// server has it reserved for, and only if it is still the claim of that
// UID; until the lookup succeeds its series carry an empty pod.
func TestPodsOfClaimsPreparedBeforeRestart(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	known := claim("k").Device("g", "gpu-0").ReservedFor("pod-k1", "p1").ReservedFor("pod-k2", "p2").Obj()
	// A claim of the same name as r, but a new one (another UID).
	replaced := claim("r").Device("g", "gpu-1").Obj()
	replacedNow := replaced.DeepCopy()
	replacedNow.UID = "new"
	replacedNow.Status.ReservedFor = known.Status.ReservedFor
	client := fake.NewClientset(known, replacedNow)
	n := newNode(t, ctx, "dgxh100", 3, claimusage.WithPodLookup(claimusage.ClaimPods(client), 0))
	// Prepared by the plugin's previous run: the sampler never saw them.
	if res := n.preparer.Prepare(ctx, known); res.Err != nil {
		t.Fatal(res.Err)
	}
	if res := n.preparer.Prepare(ctx, replaced); res.Err != nil {
		t.Fatal(res.Err)
	}
	gone := claim("g").Device("g", "gpu-2").ReservedFor("pod-g", "pg").Obj()
	if res := n.preparer.Prepare(ctx, gone); res.Err != nil {
		t.Fatal(res.Err)
	}
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	pods := map[string][]string{}
	mfs, err := n.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tessera_claim_gpu_utilization_ratio" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			key := l["namespace"] + "/" + l["claim"]
			pods[key] = append(pods[key], l["pod"])
			sort.Strings(pods[key])
		}
	}
	want := map[string][]string{"ns-k/claim-k": {"pod-k1", "pod-k2"}, "ns-r/claim-r": {""}, "ns-g/claim-g": {""}}
	if diff := cmp.Diff(want, pods); diff != "" {
		t.Errorf("pods by claim (-want +got):\n%s", diff)
	}
}

// TestPodsJoiningASharedClaim: a pod that joins a claim after the kubelet
// prepared it for the first pod (no prepare call for it) shows once the
// claim's pods are looked up again.
func TestPodsJoiningASharedClaim(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	c := claim("s").Device("g", "gpu-0").ReservedFor("first", "p1").Obj()
	client := fake.NewClientset(c)
	n := newNode(t, ctx, "dgxh100", 1, claimusage.WithPodLookup(claimusage.ClaimPods(client), time.Nanosecond))
	n.prepare(t, ctx, c)
	joined := c.DeepCopy()
	joined.Status.ReservedFor = append(joined.Status.ReservedFor, resourceapi.ResourceClaimConsumerReference{Resource: "pods", Name: "second", UID: "p2"})
	if _, err := client.ResourceV1().ResourceClaims(c.Namespace).UpdateStatus(ctx, joined, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := n.sampler.Sample(ctx); err != nil {
		t.Fatal(err)
	}
	var pods []string
	for key := range n.scrape(t) {
		if strings.HasPrefix(key, "utilization_ratio") {
			pods = append(pods, strings.Fields(key)[1])
		}
	}
	sort.Strings(pods)
	if diff := cmp.Diff([]string{"pod=first", "pod=second"}, pods); diff != "" {
		t.Errorf("pods (-want +got):\n%s", diff)
	}
}
