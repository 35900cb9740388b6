package sim

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// variantTrace is a trace in the proportions of openb's: 1,000 CPU-only
// pods, 3,000 shares, 4,000 single whole GPUs and 1,000 pods of 8 GPUs.
func variantTrace() []Pod {
	var pods []Pod
	add := func(n int, r placement.Request) {
		for range n {
			pods = append(pods, Pod{Name: "p", Request: r})
		}
	}
	add(1000, placement.Request{CPU: 1000, Memory: 1024})
	add(3000, placement.Request{CPU: 1000, Memory: 1024, GPUs: 1, Milli: 500})
	add(4000, placement.Request{CPU: 1000, Memory: 1024, GPUs: 1, Milli: placement.WholeGPU})
	add(1000, placement.Request{CPU: 1000, Memory: 1024, GPUs: 8, Milli: placement.WholeGPU})
	return pods
}

// TestGPUSpecVariant: the share of each kind of GPU pod pinned to models is
// the variant's per cent times the kind's factor, shares only go to the
// models the FGD artifact's files pin them to, CPU-only pods stay unpinned,
// and the same seed gives the same variant.
func TestGPUSpecVariant(t *testing.T) {
	pods := variantTrace()
	got, err := Variant(pods, "gpuspec33", 7)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Variant(pods, "gpuspec33", 7)
	if diff := cmp.Diff(got, again); diff != "" {
		t.Errorf("same seed, different variant:\n%s", diff)
	}
	pinned, total := map[podKind]float64{}, map[podKind]float64{}
	for i, p := range got {
		if p.Request.Models != strings.Join(p.Models, "|") {
			t.Fatalf("pod %d: request models %q, pod models %v", i, p.Request.Models, p.Models)
		}
		if p.Request.GPUs == 0 {
			if p.Models != nil {
				t.Fatalf("CPU-only pod %d pinned to %v", i, p.Models)
			}
			continue
		}
		k := kindOf(p.Request)
		total[k]++
		if p.Models == nil {
			continue
		}
		pinned[k]++
		if k == kindShare && !strings.Contains("T4 P100 G2|P100|T4|V100M16|V100M32", p.Request.Models) {
			t.Errorf("share pinned to %q", p.Request.Models)
		}
		p.Models, p.Request.Models = nil, ""
		if !cmp.Equal(p, pods[i]) {
			t.Fatalf("pod %d changed beyond its models: %+v, was %+v", i, p, pods[i])
		}
	}
	for k, f := range specFactor {
		if total[podKind(k)] == 0 {
			continue
		}
		want := 0.33 * f
		// Four standard deviations of a binomial share.
		if rate := pinned[podKind(k)] / total[podKind(k)]; math.Abs(rate-want) > 4*math.Sqrt(want*(1-want)/total[podKind(k)]) {
			t.Errorf("kind %d: %.3f pinned, want %.3f", k, rate, want)
		}
	}
	if _, err := Variant(pods, "gpuspec200", 0); err == nil {
		t.Error("gpuspec200 accepted")
	}
}

// TestGPUShareVariant: CPU-only pods are kept, the GPU pods are as many as
// before, and shares make the variant's per cent of their GPU demand.
func TestGPUShareVariant(t *testing.T) {
	pods := variantTrace()
	for _, x := range []int{20, 60, 100} {
		got, err := Variant(pods, "gpushare"+strconv.Itoa(x), 1)
		if err != nil {
			t.Fatal(err)
		}
		var cpuOnly, gpuPods int
		var share, all float64
		for _, p := range got {
			if p.Request.GPUs == 0 {
				cpuOnly++
				continue
			}
			gpuPods++
			all += float64(p.Request.Demand())
			if p.Request.Shared() {
				share += float64(p.Request.Demand())
			}
		}
		if cpuOnly != 1000 || gpuPods != 8000 {
			t.Errorf("gpushare%d: %d CPU-only and %d GPU pods, want 1000 and 8000", x, cpuOnly, gpuPods)
		}
		if got := 100 * share / all; math.Abs(got-float64(x)) > 1 {
			t.Errorf("gpushare%d: shares make %.1f %% of GPU demand", x, got)
		}
	}
	if _, err := Variant(pods, "gpushare", 0); err == nil {
		t.Error("gpushare without a per cent accepted")
	}
	if _, err := Variant(pods, "multigpu20", 0); err == nil {
		t.Error("unknown variant accepted")
	}
}

// TestGPUSpecVariantMultiGPUSets: a multi-GPU pod is pinned only to the model
// sets the FGD artifact's gpuspec files give pods of its GPU count (8-GPU pods
// to G2 or G3, never to the V100s with their few 8-GPU nodes), and each count
// is pinned at the multi-GPU rate.
func TestGPUSpecVariantMultiGPUSets(t *testing.T) {
	allowed := map[int][]string{
		2: {"P100|V100M16|V100M32", "T4|V100M16|V100M32", "V100M16|V100M32", "V100M32"},
		3: {"P100|V100M16|V100M32", "T4|V100M16|V100M32", "V100M16|V100M32", "V100M32"},
		4: {"G2", "V100M16|V100M32"},
		8: {"G2", "G3"},
	}
	var pods []Pod
	for _, gpus := range []int{2, 3, 4, 8} {
		for range 2000 {
			pods = append(pods, Pod{Name: "p", Request: placement.Request{CPU: 1000, Memory: 1024, GPUs: gpus, Milli: placement.WholeGPU}})
		}
	}
	got, err := Variant(pods, "gpuspec33", 3)
	if err != nil {
		t.Fatal(err)
	}
	pinned := map[int]float64{}
	seen := map[string]bool{}
	for _, p := range got {
		if p.Models == nil {
			continue
		}
		pinned[p.Request.GPUs]++
		seen[strconv.Itoa(p.Request.GPUs)+" "+p.Request.Models] = true
		if !slices.Contains(allowed[p.Request.GPUs], p.Request.Models) {
			t.Fatalf("%d-GPU pod pinned to %q", p.Request.GPUs, p.Request.Models)
		}
	}
	for gpus, sets := range allowed {
		want := 0.33 * specFactor[kindOf(placement.Request{GPUs: gpus, Milli: placement.WholeGPU})]
		if rate := pinned[gpus] / 2000; math.Abs(rate-want) > 4*math.Sqrt(want*(1-want)/2000) {
			t.Errorf("%d-GPU pods: %.3f pinned, want %.3f", gpus, rate, want)
		}
		for _, s := range sets {
			if !seen[strconv.Itoa(gpus)+" "+s] {
				t.Errorf("no %d-GPU pod pinned to %q", gpus, s)
			}
		}
	}
}
