package plugin_test

import (
	"context"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/plugin"
)

// fakeEntries is a checkpoint of claims that records what is unprepared.
type fakeEntries struct {
	mu         sync.Mutex
	entries    []kubeletplugin.NamespacedObject
	unprepared []string
}

func (f *fakeEntries) CheckpointedClaims(context.Context) ([]kubeletplugin.NamespacedObject, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.entries, nil
}

func (f *fakeEntries) Unprepare(_ context.Context, c kubeletplugin.NamespacedObject) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unprepared = append(f.unprepared, string(c.UID))
	return nil
}

func entry(name, uid string) kubeletplugin.NamespacedObject {
	return kubeletplugin.NamespacedObject{NamespacedName: types.NamespacedName{Namespace: "ns", Name: name}, UID: types.UID(uid)}
}

func apiClaim(name, uid string) *resourceapi.ResourceClaim {
	return &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(uid)}}
}

// podUsing is a pod on node, in phase, that refers to claim by its spec
// (fromSpec) or, as a template's claim, by its status.
func podUsing(namespace, node, claim string, phase corev1.PodPhase, fromSpec bool) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-" + claim + "-" + node, Namespace: namespace},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
	if fromSpec {
		pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimName: &claim}}
	} else {
		pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr("tmpl")}}
		pod.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "gpu", ResourceClaimName: &claim}}
	}
	return pod
}

// TestCleanStaleClaims: a checkpoint entry is unprepared only when its claim
// no longer exists (or is another claim of the same name) AND no pod on the
// node that has not terminated refers to it.
func TestCleanStaleClaims(t *testing.T) {
	tests := map[string]struct {
		objects []runtime.Object
		want    []string // UIDs unprepared
	}{
		"claim exists, no pod": {
			objects: []runtime.Object{apiClaim("c", "c-uid")},
		},
		"claim gone, no pod": {
			want: []string{"c-uid"},
		},
		"claim gone, its pod still runs": {
			objects: []runtime.Object{podUsing("ns", "n1", "c", corev1.PodRunning, true)},
		},
		"claim gone, its pod still runs, claim from a template": {
			objects: []runtime.Object{podUsing("ns", "n1", "c", corev1.PodRunning, false)},
		},
		"claim gone, its pod pending (containers may start)": {
			objects: []runtime.Object{podUsing("ns", "n1", "c", corev1.PodPending, true)},
		},
		"claim gone, its pod succeeded": {
			objects: []runtime.Object{podUsing("ns", "n1", "c", corev1.PodSucceeded, true)},
			want:    []string{"c-uid"},
		},
		"claim gone, its pod failed": {
			objects: []runtime.Object{podUsing("ns", "n1", "c", corev1.PodFailed, false)},
			want:    []string{"c-uid"},
		},
		"claim gone, a pod on another node uses the name": {
			objects: []runtime.Object{podUsing("ns", "n2", "c", corev1.PodRunning, true)},
			want:    []string{"c-uid"},
		},
		"claim gone, a pod of another namespace uses the name": {
			objects: []runtime.Object{podUsing("other", "n1", "c", corev1.PodRunning, true)},
			want:    []string{"c-uid"},
		},
		"claim recreated under another UID, no pod": {
			objects: []runtime.Object{apiClaim("c", "new-uid")},
			want:    []string{"c-uid"},
		},
		"claim recreated under another UID, a pod uses the name": {
			objects: []runtime.Object{apiClaim("c", "new-uid"), podUsing("ns", "n1", "c", corev1.PodRunning, true)},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			client := fake.NewClientset(tc.objects...)
			entries := &fakeEntries{entries: []kubeletplugin.NamespacedObject{entry("c", "c-uid")}}
			cleaned, err := plugin.CleanStaleClaims(ctx, client, "n1", entries)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, entries.unprepared); diff != "" {
				t.Errorf("unprepared (-want +got):\n%s", diff)
			}
			if len(cleaned) != len(tc.want) {
				t.Errorf("reported %d cleaned, want %d", len(cleaned), len(tc.want))
			}
		})
	}
}
