package localcluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// floodClaims is the flood of attackFlood: a few hundred claims are several
// seconds of the controller's decisions (its status writes are bounded by
// the chart's --kube-api-qps=50), while allocating them takes about one.
const floodClaims = 400

// attackFlood: tenant flood (whose budget holds no claim) has floodClaims
// claims allocated at once, written as kube-scheduler writes them, no pods;
// right after, tenant steady has one claim allocated. The attacker's goal
// is that steady's claim waits behind every one of the flood's decisions.
// The order is what is checked, not a time: when steady's decision
// appears, some of the flood's claims are still undecided.
func attackFlood(ctx context.Context, t *testing.T, flood, steady string) {
	t.Helper()
	cfg := rest.CopyConfig(local.Config)
	cfg.QPS, cfg.Burst = 1000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// The tenancy node publishes its MIG partitions again once earlier
	// cases' shares are gone.
	waitTenancyGPUsFree(ctx, t)
	var pool, device string
	err = wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
		pool, device = publishedMIGDevice(ctx, client)
		return device != "", nil
	})
	if err != nil {
		t.Fatalf("node %s publishes no 1g.18gb partition", tenancyNode.Name)
	}
	parallel(t, floodClaims, func(i int) error { return createMIGClaim(ctx, client, flood, fmt.Sprintf("c%d", i)) })
	if err := createMIGClaim(ctx, client, steady, "steady"); err != nil {
		t.Fatal(err)
	}
	w, err := client.ResourceV1().ResourceClaims(steady).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	parallel(t, floodClaims, func(i int) error { return allocate(ctx, client, flood, fmt.Sprintf("c%d", i), pool, device) })
	queued, err := undecided(ctx, client, flood)
	if err != nil {
		t.Fatal(err)
	}
	if queued == 0 {
		t.Fatalf("the controller decided all %d of the flood's claims before the other tenant's came, so this does not try the attack", floodClaims)
	}
	if err := allocate(ctx, client, steady, "steady", pool, device); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch of the other tenant's claim ended")
			}
			c, isClaim := ev.Object.(*resourceapi.ResourceClaim)
			if !isClaim {
				continue
			}
			switch s := tenancy.ClaimState(c); s {
			case tenancy.Admitted:
				left, err := undecided(ctx, client, flood)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("the other tenant's claim was admitted with %d of the flood's %d claims undecided (%d when it was allocated)", left, floodClaims, queued)
				if left == 0 {
					t.Errorf("the other tenant's claim was decided only after every one of the flood's %d claims", floodClaims)
				}
				return
			case tenancy.Rejected:
				t.Fatalf("the other tenant's claim was refused: %v", c.Status.Devices)
			}
		case <-ctx.Done():
			t.Fatalf("the other tenant's claim was not decided: %v", ctx.Err())
		}
	}
}

// undecided counts ns's allocated claims that wait for the controller.
func undecided(ctx context.Context, client kubernetes.Interface, ns string) (int, error) {
	list, err := client.ResourceV1().ResourceClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for i := range list.Items {
		if tenancy.ClaimState(&list.Items[i]) == tenancy.Pending {
			n++
		}
	}
	return n, nil
}
