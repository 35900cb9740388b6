package demo

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/demo/manifests"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/controller"
)

// tenancyDemo applies the two demo tenants and their workloads, shows a claim
// the API server refuses, waits until team-b's budget holds its second pod
// back, and prints the tenants as kubectl get gput would.
func tenancyDemo(ctx context.Context, l *cluster.Local, out io.Writer) error {
	scheme, err := controller.Scheme()
	if err != nil {
		return err
	}
	c, err := crclient.New(l.Config, crclient.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	if err := l.Apply(ctx, manifests.TenancyDemoTenants, ""); err != nil {
		return fmt.Errorf("apply demo tenants: %w", err)
	}
	for _, name := range []string{"team-a", "team-b"} {
		if err := waitReady(ctx, c, name); err != nil {
			return err
		}
	}
	if err := l.Apply(ctx, manifests.TenancyDemoWorkloads, ""); err != nil {
		return fmt.Errorf("apply demo tenants' workloads: %w", err)
	}
	p := &progress{w: out}
	p.printf("\nTenants team-a (MIG and shares, 40Gi of GPU memory) and team-b (whole GPUs, one at a time) applied (demo/manifests/tenancy-demo).\n")

	// team-a asks for a whole GPU, which it may not use. The API server's
	// policy plugin picks up a new tenant's binding within about a second.
	var refusal error
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, refusal = l.Client.ResourceV1().ResourceClaims("team-a").Create(ctx, &resourceapi.ResourceClaim{
			ObjectMeta: metav1.ObjectMeta{Name: "wants-a-whole-gpu"},
			Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
				Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{DeviceClassName: gpuapi.ClassGPU},
			}}}},
		}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return refusal != nil, nil
	})
	if err != nil {
		return fmt.Errorf("team-a's claim for a whole GPU is still accepted")
	}
	err = refusal
	p.printf("team-a asks for a whole GPU; the API server says:\n  %v\n", err)

	var held string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		evs, err := l.Client.CoreV1().Events("team-b").List(ctx, metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.kind": "Pod", "reason": tenancyv1.ReasonOverBudget}.String(),
		})
		if err != nil || len(evs.Items) == 0 {
			return false, nil
		}
		e := evs.Items[len(evs.Items)-1]
		held = e.InvolvedObject.Name + ": " + e.Message
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("team-b's budget never held a pod back")
	}
	p.printf("team-b starts two training pods; its budget holds one back:\n  %s\n\n", held)
	if p.err != nil {
		return fmt.Errorf("write the tenancy demo: %w", p.err)
	}
	// team-a's two partitions are admitted within a scheduler re-check (5 s).
	_ = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		t := &tenancyv1.GPUTenant{}
		return c.Get(ctx, crclient.ObjectKey{Name: "team-a"}, t) == nil && t.Status.Usage.Devices[gpuapi.ClassMIG] == 2, nil
	})
	return printTenants(ctx, c, out)
}

func waitReady(ctx context.Context, c crclient.Client, name string) error {
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		t := &tenancyv1.GPUTenant{}
		if err := c.Get(ctx, crclient.ObjectKey{Name: name}, t); err != nil {
			return false, nil
		}
		return meta.IsStatusConditionTrue(t.Status.Conditions, tenancyv1.TenantReady), nil
	})
	if err != nil {
		return fmt.Errorf("GPUTenant %s not ready: %w", name, err)
	}
	return nil
}

// printTenants prints what kubectl get gput shows, plus device usage.
func printTenants(ctx context.Context, c crclient.Client, out io.Writer) error {
	var list tenancyv1.GPUTenantList
	if err := c.List(ctx, &list); err != nil {
		return fmt.Errorf("list GPUTenants: %w", err)
	}
	w := &progress{w: tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)}
	w.printf("%s\n", "TENANT\tNAMESPACES\tMEMORY\tBUDGET\tDEVICES\tREADY\tBUDGET EXHAUSTED")
	for _, t := range list.Items {
		budget := "-"
		if b := t.Spec.Budget; b != nil {
			var parts []string
			if b.GPUMemory != nil {
				parts = append(parts, b.GPUMemory.String())
			}
			for class, n := range b.Devices {
				parts = append(parts, fmt.Sprintf("%s=%d", class, n))
			}
			budget = strings.Join(parts, ",")
		}
		var devices []string
		for class, n := range t.Status.Usage.Devices {
			devices = append(devices, fmt.Sprintf("%s=%d", class, n))
		}
		w.printf("%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, strings.Join(t.Status.Namespaces, ","), t.Status.Usage.GPUMemory.String(),
			budget, strings.Join(devices, ","), conditionStatus(t, tenancyv1.TenantReady), conditionStatus(t, tenancyv1.TenantBudgetExhausted))
	}
	if w.err != nil {
		return fmt.Errorf("print GPUTenants: %w", w.err)
	}
	return w.w.(*tabwriter.Writer).Flush()
}

func conditionStatus(t tenancyv1.GPUTenant, typ string) string {
	if c := meta.FindStatusCondition(t.Status.Conditions, typ); c != nil {
		return string(c.Status)
	}
	return "-"
}
