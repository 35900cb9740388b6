package localcluster

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
	"github.com/tessera-gpu/tessera/internal/testing/podwatch"
)

// bindingLatencyPods is how many pods each scheduler binds in each arrival
// pattern, tenanted and untenanted alternately.
const bindingLatencyPods = 50

// bindingLatencyWaves are the arrival patterns: pods created one at a time
// (each bound, deleted and gone before the next), and in waves of 10 and 20
// created at once (half tenanted; the wave bound, deleted and gone before the
// next), where the schedulers, the tenancy controller and the API server
// handle the pods of a wave side by side. The ten tenanted 1g partitions of
// the largest wave fit on the tenancy node's two GPUs (fourteen), so no pod of
// a wave waits for capacity.
var bindingLatencyWaves = []int{1, 10, 20}

// BenchmarkTenancyBindingLatency measures, pod by pod, the time from creating
// a pod with a MIG claim to its binding, under kube-scheduler and, when the
// suite runs it, tessera-scheduler, side by side in one run. Each scheduler
// binds bindingLatencyPods pods per arrival pattern (bindingLatencyWaves),
// alternately in a tenanted namespace (on the tenancy node, where the
// controller must admit the allocation through the devices' binding condition
// before the scheduler binds) and in a namespace of no tenant (on a node
// without tenancy). It reports p50 and p99 of both kinds per scheduler and
// pattern (kube-*, tessera-*; one-by-one patterns unmarked, waves as
// wave10-*). make bench-binding runs it.
func BenchmarkTenancyBindingLatency(b *testing.B) {
	if local == nil {
		b.Skip("no local cluster: set TESSERA_E2E=1 or run make e2e")
	}
	schedulers := map[string]string{"kube": corev1.DefaultSchedulerName}
	if local.TesseraSchedulerURL != "" {
		schedulers["tessera"] = cluster.TesseraSchedulerName
	} else {
		b.Logf("tessera-scheduler not running (set %s; make bench-binding does): kube-scheduler only", cluster.TesseraSchedulerEnv)
	}
	for b.Loop() {
		for _, wave := range bindingLatencyWaves {
			for _, short := range slices.Sorted(maps.Keys(schedulers)) {
				tenanted, plain := bindLatencies(b, schedulers[short], wave)
				name := short
				if wave > 1 {
					name = fmt.Sprintf("%s-wave%d", short, wave)
				}
				b.ReportMetric(percentile(tenanted, 50).Seconds(), name+"-tenancy-p50-s")
				b.ReportMetric(percentile(tenanted, 99).Seconds(), name+"-tenancy-p99-s")
				b.ReportMetric(percentile(plain, 50).Seconds(), name+"-plain-p50-s")
				b.ReportMetric(percentile(plain, 99).Seconds(), name+"-plain-p99-s")
			}
		}
	}
}

// bindLatencies binds bindingLatencyPods pods with the scheduler, wave pods
// at a time, alternately in a namespace of a tenant with ample budget and in
// one of no tenant, and returns each pod's time from creation to binding, by
// kind. Every pod of a wave is created at once and the wave is deleted, and
// gone, before the next is created, so every wave finds the same free
// devices.
func bindLatencies(b *testing.B, scheduler string, wave int) (tenanted, plain []time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	suffix := fmt.Sprintf("%s-%d", strings.TrimSuffix(scheduler, "-scheduler"), time.Now().UnixNano())
	tenantNS, plainNS := "bench-tenanted-"+suffix, "bench-plain-"+suffix
	labels := map[string]string{tenancyv1.LabelCapsuleTenant: tenantNS}
	tenant := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: tenantNS}, Spec: tenancyv1.GPUTenantSpec{
		NamespaceSelector:    metav1.LabelSelector{MatchLabels: labels},
		AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		Budget:               &tenancyv1.Budget{Devices: map[string]int64{gpuapi.ClassMIG: 100}},
	}}
	if err := tenants.Create(ctx, tenant); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tenants.Delete(context.Background(), tenant) }()
	tmpl := "mig"
	defer func() {
		for _, ns := range []string{tenantNS, plainNS} {
			_ = local.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		}
	}()
	for ns, nsLabels := range map[string]map[string]string{tenantNS: labels, plainNS: nil} {
		if _, err := local.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: nsLabels}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
			_, err := local.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
			return err == nil, nil
		}); err != nil {
			b.Fatalf("no default service account in %s", ns)
		}
		if _, err := local.Client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, &resourceapi.ResourceClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{Name: tmpl, Namespace: ns},
			Spec:       resourceapi.ResourceClaimTemplateSpec{Spec: claimSpec(migRequest("gpu"))},
		}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	bound, err := podwatch.Start(ctx, local.Client, tenantNS, plainNS)
	if err != nil {
		b.Fatal(err)
	}
	defer bound.Stop()
	for first := 0; first < bindingLatencyPods; first += wave {
		n := min(wave, bindingLatencyPods-first)
		started := make([]time.Time, n)
		names := make([]string, n)
		namespaces := make([]string, n)
		var wg sync.WaitGroup
		errs := make([]error, n)
		for j := range n {
			i := first + j
			ns, node := plainNS, nodeA
			if i%2 == 0 {
				ns, node = tenantNS, tenancyNode.Name
			}
			names[j], namespaces[j] = fmt.Sprintf("p%d", i), ns
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: names[j], Namespace: ns},
				Spec: corev1.PodSpec{
					SchedulerName:  scheduler,
					NodeSelector:   map[string]string{"kubernetes.io/hostname": node},
					Tolerations:    []corev1.Toleration{{Key: tenancyTaintKey, Operator: corev1.TolerationOpExists}},
					ResourceClaims: []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: &tmpl}},
					Containers: []corev1.Container{{
						Name: "ctr", Image: "registry.k8s.io/pause:3.10",
						Resources: corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}},
					}},
					TerminationGracePeriodSeconds: new(int64(1)),
				},
			}
			wg.Go(func() {
				started[j] = time.Now()
				_, errs[j] = local.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		for j := range n {
			at, err := bound.Wait(ctx, namespaces[j]+"/"+names[j], waitTimeout)
			if err != nil {
				b.Fatalf("%s: %v", scheduler, err)
			}
			if namespaces[j] == tenantNS {
				tenanted = append(tenanted, at.Sub(started[j]))
			} else {
				plain = append(plain, at.Sub(started[j]))
			}
		}
		for j := range n {
			if err := local.Client.CoreV1().Pods(namespaces[j]).Delete(ctx, names[j], metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		for j := range n {
			if err := wait.PollUntilContextTimeout(ctx, pollEvery, waitTimeout, true, func(ctx context.Context) (bool, error) {
				_, err := local.Client.CoreV1().Pods(namespaces[j]).Get(ctx, names[j], metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			}); err != nil {
				b.Fatalf("pod %s/%s not gone within %s", namespaces[j], names[j], waitTimeout)
			}
		}
	}
	return tenanted, plain
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

const (
	policyBenchTenants = 100
	policyBenchClaims  = 10000
	policyBenchWorkers = 8
)

// BenchmarkTenancyPolicyAdmission measures the real admission policy in the
// API server: 100 tenants (100 bindings), then 10,000 claims created (dry
// run) across their namespaces by 8 clients, half of them allowed and half
// naming a forbidden class; every answer is checked. It reports decisions
// per second, beside the same claims in namespaces of no tenant (no binding
// matches) in the same run.
//
//	make e2e E2E_FLAGS="-run '^$' -bench TenancyPolicyAdmission -benchtime 1x"
func BenchmarkTenancyPolicyAdmission(b *testing.B) {
	if local == nil {
		b.Skip("no local cluster: set TESSERA_E2E=1 or run make e2e")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	run := fmt.Sprintf("%d", time.Now().UnixNano()%100000)
	var tenantNS, freeNS []string
	for i := range policyBenchTenants {
		name := fmt.Sprintf("pb%s-%d", run, i)
		labels := map[string]string{tenancyv1.LabelCapsuleTenant: name}
		tenant := &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tenancyv1.GPUTenantSpec{
			NamespaceSelector: metav1.LabelSelector{MatchLabels: labels}, AllowedDeviceClasses: []string{gpuapi.ClassMIG},
		}}
		if err := tenants.Create(ctx, tenant); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = tenants.Delete(context.Background(), tenant) })
		for _, ns := range []struct {
			name   string
			labels map[string]string
			into   *[]string
		}{{name, labels, &tenantNS}, {name + "-free", nil, &freeNS}} {
			if _, err := local.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.name, Labels: ns.labels}}, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				_ = local.Client.CoreV1().Namespaces().Delete(context.Background(), ns.name, metav1.DeleteOptions{})
			})
			*ns.into = append(*ns.into, ns.name)
		}
	}
	// Every tenant's binding must be in force before timing.
	for _, ns := range tenantNS {
		if err := wait.PollUntilContextTimeout(ctx, pollEvery, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			return createClaim(ctx, ns, claimSpec(builder.MakeRequest("probe", gpuapi.ClassGPU).Obj())) != nil, nil
		}); err != nil {
			b.Fatalf("tenant policy not enforced in %s", ns)
		}
	}
	for b.Loop() {
		b.ReportMetric(admissionRate(ctx, b, tenantNS, true), "tenant-decisions/s")
		b.ReportMetric(admissionRate(ctx, b, freeNS, false), "untenanted-creates/s")
	}
}

// admissionRate creates policyBenchClaims dry-run claims round-robin over
// namespaces with policyBenchWorkers clients and returns creates per second.
// Odd claims name a forbidden class: refused when enforced, else allowed.
func admissionRate(ctx context.Context, b *testing.B, namespaces []string, enforced bool) float64 {
	allowed, forbidden := claimSpec(migRequest("gpu")), claimSpec(builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj())
	next := make(chan int)
	errs := make(chan error, policyBenchWorkers)
	var wg sync.WaitGroup
	start := time.Now()
	for range policyBenchWorkers {
		wg.Go(func() {
			for i := range next {
				spec := allowed
				if i%2 == 1 {
					spec = forbidden
				}
				err := createClaim(ctx, namespaces[i%len(namespaces)], spec)
				if refused := err != nil; refused != (enforced && i%2 == 1) {
					errs <- fmt.Errorf("claim %d in %s: refused=%t, error %w", i, namespaces[i%len(namespaces)], refused, err)
					return
				}
			}
		})
	}
	for i := range policyBenchClaims {
		select {
		case next <- i:
		case err := <-errs:
			close(next)
			wg.Wait()
			b.Fatal(err)
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return float64(policyBenchClaims) / elapsed.Seconds()
}
