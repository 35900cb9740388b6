package tessera

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
)

// nodeEvent is an Event as the plugin's recorder writes it (client-go's
// tools/events, regarding the Node as the kubelet names it).
func nodeEvent(kind, name string) *eventsv1.Event {
	return &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: name + ".1", Namespace: metav1.NamespaceDefault},
		Regarding:           corev1.ObjectReference{APIVersion: "v1", Kind: kind, Name: name, UID: "u"},
		Type:                corev1.EventTypeWarning,
		Reason:              "MIGDestroyDeferred",
		Action:              "DestroyMIGInstance",
		ReportingController: "gpu.tessera.dev/kubelet-plugin",
		ReportingInstance:   "gpu.tessera.dev/kubelet-plugin-pod",
	}
}

// TestNodeEventsPolicy: the plugin's account may record (and patch) Events
// about its own Node only; other users are not the policy's concern.
func TestNodeEventsPolicy(t *testing.T) {
	policy := deniedPolicy(t, "tessera-kubelet-plugin-node-events")
	related := nodeEvent("Node", "n1")
	related.Related = &corev1.ObjectReference{Kind: "Pod", Namespace: "ns", Name: "p"}
	gvr := eventsv1.SchemeGroupVersion.WithResource("events")
	tests := map[string]struct {
		user     user.Info
		op       admission.Operation
		obj, old runtime.Object
		allowed  bool
	}{
		"its Node":                   {pluginOnNode("n1"), admission.Create, nodeEvent("Node", "n1"), nil, true},
		"a repeat of its Node's":     {pluginOnNode("n1"), admission.Update, nodeEvent("Node", "n1"), nodeEvent("Node", "n1"), true},
		"another Node":               {pluginOnNode("n1"), admission.Create, nodeEvent("Node", "n2"), nil, false},
		"a Pod of its name":          {pluginOnNode("n1"), admission.Create, nodeEvent("Pod", "n1"), nil, false},
		"another Node's, patched":    {pluginOnNode("n1"), admission.Update, nodeEvent("Node", "n1"), nodeEvent("Node", "n2"), false},
		"about its Node and a Pod":   {pluginOnNode("n1"), admission.Create, related, nil, false},
		"a token without node":       {pluginOnNode(""), admission.Create, nodeEvent("Node", "n1"), nil, false},
		"another user, another Node": {&user.DefaultInfo{Name: "system:node:n2"}, admission.Create, nodeEvent("Node", "n2"), nil, true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			matched, denials := admitsUser(t, policy, tc.user, tc.op, gvr, "Event", tc.obj, tc.old)
			if allowed := !matched || len(denials) == 0; allowed != tc.allowed {
				t.Errorf("allowed = %v, want %v (denials %q)", allowed, tc.allowed, denials)
			}
		})
	}
}

// TestPluginMayRecordEvents: the plugin's RBAC lets it create and patch
// events.k8s.io Events, and nothing more of them (no reading others'
// Events, no deleting).
func TestPluginMayRecordEvents(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	var got []rbacv1.PolicyRule
	for _, r := range find[*rbacv1.ClusterRole](objects(t, manifest)) {
		if r.Name != "tessera-kubelet-plugin" {
			continue
		}
		for _, rule := range r.Rules {
			if slices.Contains(rule.Resources, "events") {
				got = append(got, rule)
			}
		}
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the plugin's rules on Events (-want +got):\n%s", diff)
	}
}
