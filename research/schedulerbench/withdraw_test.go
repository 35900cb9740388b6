package schedulerbench

import (
	"context"
	"io"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestRepublishKeepsGenerationForOneGPU: a claim allocated on one GPU makes
// the republisher write one slice under the same pool generation, as the
// publication controller does, and freeing it writes that slice back.
func TestRepublishKeepsGenerationForOneGPU(t *testing.T) {
	ctx := context.Background()
	inv, err := h200Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset()
	r := newRepublisher(client, inv, io.Discard)
	first := r.slices("n1")
	for _, s := range first {
		if _, err := client.ResourceV1().ResourceSlices().Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r.current["n1"] = first

	steps := []struct {
		name    string
		devices []string
	}{
		{"allocate a 3g partition of GPU 2", []string{"gpu-2-mig-3g71gb-4"}},
		{"free it", nil},
		{"allocate GPU 5 whole", []string{"gpu-5"}},
	}
	for _, step := range steps {
		before := r.updates
		if step.devices == nil {
			delete(r.claims, "c")
		} else {
			r.claims["c"] = allocation{node: "n1", devices: step.devices}
		}
		if err := r.republish(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		if got := r.updates - before; got != 1 {
			t.Errorf("%s: %d slice writes, want 1", step.name, got)
		}
	}
	if r.bumps != 0 {
		t.Errorf("%d new pool generations, want 0", r.bumps)
	}
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != len(first) {
		t.Errorf("%d slices published, want %d", len(list.Items), len(first))
	}
	for _, s := range list.Items {
		if s.Spec.Pool.Generation != 0 {
			t.Errorf("slice %s has pool generation %d, want 0", s.Name, s.Spec.Pool.Generation)
		}
		for _, d := range s.Spec.Devices {
			if d.Name == "gpu-5-shared" {
				t.Errorf("slice %s still publishes %s next to the allocated whole GPU", s.Name, d.Name)
			}
		}
	}
}
