package localcluster

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/controller"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

const (
	// fairnessFlood over-budget claims of one tenant are allocated at once;
	// then fairnessOthers claims of another tenant, one every
	// fairnessOthersEvery, while the controller's queue still holds
	// thousands of the first tenant's.
	fairnessFlood       = 5000
	fairnessOthers      = 20
	fairnessOthersEvery = 100 * time.Millisecond
	fairnessWorkers     = 16
	// fairnessPhase bounds one queue order's run.
	fairnessPhase = 12 * time.Minute
)

// BenchmarkAdmissionFairness is the admission benchmark of docs/benchmarks.md: tenant
// "flood" has 5,000 claims allocated (written as the scheduler writes them:
// status.allocation with the binding conditions, no pods), all over its
// budget; while the controller's queue still holds thousands of them,
// tenant "steady" has 20 claims allocated, one every 100 ms. It reports the
// steady tenant's latency from its allocation write to the controller's
// decision (the condition seen by a watch), p50 and max, the queue depth
// when the steady tenant's first claim was allocated, and the controller's
// API requests per decision (its client's rest_client_requests_total over
// its decisions). The controller runs with --admission-queue=fifo (the order
// before the fair queue) and then with the fair queue, side by side in one run.
//
//	make bench-admission
func BenchmarkAdmissionFairness(b *testing.B) {
	if local == nil {
		b.Skip("no local cluster: set TESSERA_E2E=1 or run make e2e")
	}
	cfg := rest.CopyConfig(local.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		// The suite's controller again, as the chart runs it.
		if err := tenancyController.Restart(context.Background()); err != nil {
			b.Error(err)
		}
	})
	for b.Loop() {
		for _, order := range []controller.QueueOrder{controller.QueueFIFO, controller.QueueFair} {
			r := fairnessRun(b, client, order)
			b.ReportMetric(percentile(r.latencies, 50).Seconds(), string(order)+"-p50-s")
			b.ReportMetric(percentile(r.latencies, 100).Seconds(), string(order)+"-max-s")
			b.ReportMetric(r.depth, string(order)+"-queue-depth")
			b.ReportMetric(r.requestsPerDecision, string(order)+"-requests/decision")
		}
	}
}

type fairnessResult struct {
	latencies           []time.Duration
	depth               float64
	requestsPerDecision float64
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench-admission: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func fairnessRun(b *testing.B, client kubernetes.Interface, order controller.QueueOrder) fairnessResult {
	ctx, cancel := context.WithTimeout(context.Background(), fairnessPhase)
	defer cancel()
	// Plain-HTTP metrics: the benchmark reads the queue depth and the
	// request counts without a token.
	if err := tenancyController.Restart(ctx, "--admission-queue="+string(order), "--metrics-secure=false"); err != nil {
		b.Fatal(err)
	}
	metricsURL := "http://" + tenancyController.MetricsAddress + "/metrics"
	run := string(order) + "-" + rand.String(4)
	flood, steady := "flood-"+run, "steady-"+run
	var cleanups []func()
	defer func() {
		for _, f := range cleanups {
			f()
		}
	}()
	for _, t := range []struct {
		name   string
		budget tenancyv1.Budget
	}{
		// Less than one 1g.18gb partition: every claim is over budget.
		{flood, tenancyv1.Budget{GPUMemory: ptr.To(resource.MustParse("1Gi"))}},
		{steady, tenancyv1.Budget{Devices: map[string]int64{gpuapi.ClassMIG: 1000}}},
	} {
		labels := map[string]string{tenancyv1.LabelCapsuleTenant: t.name}
		tenant := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: t.name}, Spec: tenancyv1.GPUTenantSpec{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: labels}, AllowedDeviceClasses: []string{gpuapi.ClassMIG}, Budget: &t.budget,
		}}
		if err := tenants.Create(ctx, tenant); err != nil {
			b.Fatal(err)
		}
		cleanups = append(cleanups, func() { _ = tenants.Delete(context.Background(), tenant) })
		if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: t.name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		cleanups = append(cleanups, func() { deleteNamespace(b, client, t.name) })
		// The controller has seen the tenant and its namespace.
		if err := wait.PollUntilContextTimeout(ctx, pollEvery, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			got, err := getTenant(ctx, t.name)
			return err == nil && len(got.Status.Namespaces) == 1 && got.Status.Namespaces[0] == t.name, nil
		}); err != nil {
			b.Fatalf("GPUTenant %s does not show its namespace", t.name)
		}
	}
	pool, device := migDevice(ctx, b, client)

	progress("%s: creating %d claims of %s and %d of %s", order, fairnessFlood, flood, fairnessOthers, steady)
	parallel(b, fairnessFlood, func(i int) error {
		return createMIGClaim(ctx, client, flood, fmt.Sprintf("c%d", i))
	})
	for i := range fairnessOthers {
		if err := createMIGClaim(ctx, client, steady, fmt.Sprintf("s%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	decided := watchDecisions(ctx, b, client, steady)

	before := scrapeMetrics(ctx, b, metricsURL)
	progress("%s: allocating %d claims of %s", order, fairnessFlood, flood)
	parallel(b, fairnessFlood, func(i int) error {
		return allocate(ctx, client, flood, fmt.Sprintf("c%d", i), pool, device)
	})
	depth := scrapeMetrics(ctx, b, metricsURL)["tessera_admission_queue_depth"]
	progress("%s: queue depth %.0f; allocating %d claims of %s, one every %s", order, depth, fairnessOthers, steady, fairnessOthersEvery)
	if depth < 1000 {
		b.Logf("%s: the queue held only %.0f claims when the other tenant's came", order, depth)
	}
	allocated := map[string]time.Time{}
	// The other tenant's pods arrive at a steady pace, as a scheduler
	// allocates them.
	pace := time.NewTicker(fairnessOthersEvery)
	defer pace.Stop()
	for i := range fairnessOthers {
		name := fmt.Sprintf("s%d", i)
		allocated[name] = time.Now()
		if err := allocate(ctx, client, steady, name, pool, device); err != nil {
			b.Fatal(err)
		}
		<-pace.C
	}
	var latencies []time.Duration
	for range fairnessOthers {
		select {
		case d := <-decided:
			if d.state != tenancy.Admitted {
				b.Fatalf("%s: claim %s of %s was %v, want admitted", order, d.name, steady, d.state)
			}
			latencies = append(latencies, d.at.Sub(allocated[d.name]))
			progress("%s: %s decided %s after its allocation", order, d.name, d.at.Sub(allocated[d.name]).Round(time.Millisecond))
		case <-ctx.Done():
			b.Fatalf("%s: %d of %s's claims decided within %s", order, len(latencies), steady, fairnessPhase)
		}
	}
	after := scrapeMetrics(ctx, b, metricsURL)
	decisions := after["tessera_tenant_allocation_decisions_total"] - before["tessera_tenant_allocation_decisions_total"]
	requests := after["rest_client_requests_total"] - before["rest_client_requests_total"]
	progress("%s: %.0f decisions, %.0f API requests since the flood's allocation; queue depth %.0f", order, decisions, requests, after["tessera_admission_queue_depth"])
	return fairnessResult{latencies: latencies, depth: depth, requestsPerDecision: requests / max(decisions, 1)}
}

// deleteNamespace deletes ns and waits until it is gone, so that the next
// run does not share the API server with its deletion.
func deleteNamespace(b *testing.B, client kubernetes.Interface, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_ = client.ResourceV1().ResourceClaims(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	_ = client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	if err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		b.Logf("namespace %s not gone within 5 minutes", ns)
	}
}

// migDevice is a 1g.18gb partition the tenancy node publishes: every claim
// of the benchmark is allocated it (the controller decides budgets, not
// exclusivity, and no pod ever runs).
func migDevice(ctx context.Context, b *testing.B, client kubernetes.Interface) (pool, device string) {
	pool, device = publishedMIGDevice(ctx, client)
	if device == "" {
		b.Fatalf("node %s publishes no 1g.18gb partition", tenancyNode.Name)
	}
	return pool, device
}

// publishedMIGDevice is a 1g.18gb partition the tenancy node publishes now
// (device "" if none).
func publishedMIGDevice(ctx context.Context, client kubernetes.Interface) (pool, device string) {
	slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", tenancyNode.Name).String()})
	if err != nil {
		return "", ""
	}
	for _, s := range slices.Items {
		for _, d := range s.Spec.Devices {
			if strings.Contains(d.Name, "-mig-1g18gb-") {
				return s.Spec.Pool.Name, d.Name
			}
		}
	}
	return "", ""
}

func createMIGClaim(ctx context.Context, client kubernetes.Interface, ns, name string) error {
	_, err := client.ResourceV1().ResourceClaims(ns).Create(ctx, &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: claimSpec(migRequest("gpu")),
	}, metav1.CreateOptions{})
	return err
}

// allocate writes the claim's allocation as kube-scheduler does for a device
// with binding conditions.
func allocate(ctx context.Context, client kubernetes.Interface, ns, name, pool, device string) error {
	claim, err := client.ResourceV1().ResourceClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	claim.Status.Allocation = &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{Results: []resourceapi.DeviceRequestAllocationResult{{
		Request: "gpu", Driver: gpuapi.DriverName, Pool: pool, Device: device,
		BindingConditions: []string{tenancyv1.ConditionAdmitted}, BindingFailureConditions: []string{tenancyv1.ConditionRejected},
	}}}}
	_, err = client.ResourceV1().ResourceClaims(ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{})
	return err
}

// parallel runs do(0..n-1) on fairnessWorkers goroutines, with progress.
func parallel(b testing.TB, n int, do func(int) error) {
	next := make(chan int)
	errs := make(chan error, fairnessWorkers)
	var wg sync.WaitGroup
	for range fairnessWorkers {
		wg.Go(func() {
			for i := range next {
				if err := do(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for i := range n {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			wg.Wait()
			b.Fatal(err)
		}
		if (i+1)%1000 == 0 {
			progress("%d of %d", i+1, n)
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

type decision struct {
	name  string
	state tenancy.State
	at    time.Time
}

// watchDecisions reports, as a watch sees it, each claim of ns once it is
// decided.
func watchDecisions(ctx context.Context, b *testing.B, client kubernetes.Interface, ns string) <-chan decision {
	w, err := client.ResourceV1().ResourceClaims(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	out := make(chan decision, fairnessOthers)
	go func() {
		defer w.Stop()
		seen := map[string]bool{}
		for ev := range w.ResultChan() {
			c, ok := ev.Object.(*resourceapi.ResourceClaim)
			if !ok || seen[c.Name] {
				continue
			}
			if s := tenancy.ClaimState(c); s == tenancy.Admitted || s == tenancy.Rejected {
				seen[c.Name] = true
				out <- decision{name: c.Name, state: s, at: time.Now()}
			}
		}
	}()
	return out
}

// scrapeMetrics sums each metric's samples over their labels.
func scrapeMetrics(ctx context.Context, b *testing.B, url string) map[string]float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name = line[:i]
			_, rest, _ = strings.Cut(line[strings.LastIndexByte(line, '}'):], " ")
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64); err == nil {
			out[name] += v
		}
	}
	return out
}
