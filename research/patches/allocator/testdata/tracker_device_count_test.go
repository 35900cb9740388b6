package tracker

import (
	"testing"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2/ktesting"
)

// TestTaintRuleChangeBeforeTheSliceEvent replays the order in which a
// DeviceTaintRule's update reaches the tracker between a ResourceSlice's
// update in the informer's store and that update's own event: the rule's
// handler then syncs a slice with more devices than its cached patched copy.
// Unpatched, syncSlice indexes past the copy's devices and panics; patched, a
// changed device count is a change, and the tracker's listeners hear it with
// every device tainted.
func TestTaintRuleChangeBeforeTheSliceEvent(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	client := fake.NewSimpleClientset()
	factory := informers.NewSharedInformerFactory(client, 0)
	tr, err := newTracker(ctx, Options{
		EnableDeviceTaintRules: true,
		SliceInformer:          factory.Resource().V1().ResourceSlices(),
		TaintInformer:          factory.Resource().V1().DeviceTaintRules(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var updates []*resourceapi.ResourceSlice
	if _, err := tr.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, newObj any) { updates = append(updates, newObj.(*resourceapi.ResourceSlice)) },
	}); err != nil {
		t.Fatal(err)
	}

	slice := func(devices ...string) *resourceapi.ResourceSlice {
		s := &resourceapi.ResourceSlice{
			ObjectMeta: metav1.ObjectMeta{Name: "node-a-gpu"},
			Spec: resourceapi.ResourceSliceSpec{
				Driver: "gpu.tessera.dev",
				Pool:   resourceapi.ResourcePool{Name: "node-a", ResourceSliceCount: 1},
			},
		}
		for _, d := range devices {
			s.Spec.Devices = append(s.Spec.Devices, resourceapi.Device{Name: d})
		}
		return s
	}
	rule := func(value string) *resourceapi.DeviceTaintRule {
		return &resourceapi.DeviceTaintRule{
			ObjectMeta: metav1.ObjectMeta{Name: "sharing"},
			Spec: resourceapi.DeviceTaintRuleSpec{
				DeviceSelector: &resourceapi.DeviceTaintSelector{Driver: new("gpu.tessera.dev")},
				Taint:          resourceapi.DeviceTaint{Key: "sharing.tessera.dev/tenant", Value: value, Effect: resourceapi.DeviceTaintEffectNoSchedule},
			},
		}
	}

	slices, rules := tr.resourceSlices.GetStore(), tr.deviceTaints.GetStore()
	one, two := slice("gpu-0"), slice("gpu-0", "gpu-1")
	if err := slices.Add(one); err != nil {
		t.Fatal(err)
	}
	tr.resourceSliceAdd(ctx)(one)
	old, changed := rule("team-a"), rule("team-b")
	if err := rules.Add(old); err != nil {
		t.Fatal(err)
	}
	tr.deviceTaintAdd(ctx)(old)

	// The slice gains a device in the store; its event has not been handled
	// when the rule's update is.
	if err := slices.Update(two); err != nil {
		t.Fatal(err)
	}
	if err := rules.Update(changed); err != nil {
		t.Fatal(err)
	}
	updates = nil
	tr.deviceTaintUpdate(ctx)(old, changed)

	if len(updates) != 1 {
		t.Fatalf("listeners heard %d updates of the slice, want 1", len(updates))
	}
	got := updates[0]
	if len(got.Spec.Devices) != 2 {
		t.Fatalf("the patched slice has %d devices, want 2", len(got.Spec.Devices))
	}
	for _, d := range got.Spec.Devices {
		if len(d.Taints) != 1 || d.Taints[0].Value != "team-b" {
			t.Errorf("device %s has taints %v, want the rule's team-b", d.Name, d.Taints)
		}
	}
}
