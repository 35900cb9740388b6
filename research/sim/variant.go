package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// The openb workload variants of the FGD paper (Weng et al., USENIX ATC
// 2023), derived from the default trace the way the files of its artifact
// (github.com/hkust-adsl/kubernetes-scheduler-simulator, data/csv/
// openb_pod_list_{gpuspec,gpushare}*.csv) were, which that repository ships
// without the script that made them:
//
//   - gpushareX: the CPU-only pods are kept; the GPU pods are replaced by as
//     many pods drawn at random with replacement, from the default's shares
//     and from its whole-GPU pods, with the number of shares chosen so that
//     shares make X % of the GPU demand. (Their files: the same 1,088 CPU-only
//     pods; every other row is a default GPU pod's, repeated; share demand
//     20.0, 40.1, ... 100 % of the total.)
//   - gpuspecX: every pod is kept; each GPU pod is pinned, independently, to
//     a GPU model set with probability X % times its kind's factor, the set
//     drawn from its kind's distribution (specSets). Shares, single whole GPUs
//     and multi-GPU pods are pinned at different rates and to different
//     models in their files; the factors and distributions are those of
//     their five gpuspec files (5, 10, 20, 25, 33 %) pooled: shares 0.871 of
//     X and only T4 or P100 (a few to any of five models), single GPUs 1.134,
//     multi-GPU pods 1.047. Which pods got pinned is independent of their
//     CPU, memory and GPU amount within a kind, and differs from file to file.

// specSet is a GPU model set and how many pinned pods of a kind got it in the
// FGD artifact's gpuspec files.
type specSet struct {
	models string
	count  int
}

type podKind int

const (
	kindShare podKind = iota
	kindOne
	kindMulti
)

// specFactor is each kind's pinning rate per unit of the variant's X.
var specFactor = [...]float64{kindShare: 0.871, kindOne: 1.134, kindMulti: 1.047}

// specSets are the model sets of each kind, as counted over the FGD
// artifact's five gpuspec files.
var specSets = [...][]specSet{
	kindShare: {{"T4", 1609}, {"P100", 839}, {"G2|P100|T4|V100M16|V100M32", 45}},
	kindOne: {
		{"T4", 1865}, {"G2", 933}, {"V100M16|V100M32", 498}, {"P100|V100M16|V100M32", 268}, {"G3", 209},
		{"P100|T4|V100M16|V100M32", 76}, {"G2|P100|T4|V100M16|V100M32", 74}, {"A10|G2|T4|V100M16|V100M32", 64},
		{"V100M32", 48}, {"P100|V100M16", 31}, {"A10|T4", 21}, {"V100M16", 17}, {"P100", 10},
		{"A10|G2|P100|T4|V100M16|V100M32", 10}, {"P100|T4", 1}, {"T4|V100M16|V100M32", 1},
	},
	kindMulti: {
		{"G2", 33}, {"G3", 16}, {"V100M16|V100M32", 12}, {"P100|V100M16|V100M32", 6},
		{"T4|V100M16|V100M32", 3}, {"V100M32", 3},
	},
}

func kindOf(r placement.Request) podKind {
	switch {
	case r.Shared():
		return kindShare
	case r.GPUs == 1:
		return kindOne
	default:
		return kindMulti
	}
}

// Variant derives the named openb variant ("default", "gpuspec<X>",
// "gpushare<X>", X a per cent in 0..100) from the pods of the default trace,
// with the given seed: the same pods and seed give the same variant.
func Variant(pods []Pod, name string, seed uint64) ([]Pod, error) {
	rng := rand.New(rand.NewPCG(seed, 0x7a41a7))
	switch {
	case name == "" || name == "default":
		return pods, nil
	case strings.HasPrefix(name, "gpuspec"):
		x, err := variantPercent(name, "gpuspec")
		if err != nil {
			return nil, err
		}
		return gpuSpecVariant(pods, x, rng), nil
	case strings.HasPrefix(name, "gpushare"):
		x, err := variantPercent(name, "gpushare")
		if err != nil {
			return nil, err
		}
		return gpuShareVariant(pods, x, rng)
	}
	return nil, fmt.Errorf("unknown variant %q (want default, gpuspec<per cent> or gpushare<per cent>)", name)
}

func variantPercent(name, prefix string) (float64, error) {
	x, err := strconv.Atoi(strings.TrimPrefix(name, prefix))
	if err != nil || x < 0 || x > 100 {
		return 0, fmt.Errorf("variant %q: want %s followed by a per cent, 0 to 100", name, prefix)
	}
	return float64(x) / 100, nil
}

func gpuSpecVariant(pods []Pod, x float64, rng *rand.Rand) []Pod {
	var totals [len(specSets)]int
	for k, sets := range specSets {
		for _, s := range sets {
			totals[k] += s.count
		}
	}
	out := make([]Pod, len(pods))
	for i, p := range pods {
		out[i] = p
		if p.Request.GPUs == 0 {
			continue
		}
		k := kindOf(p.Request)
		// Both draws are made for every GPU pod, so that a larger X pins a
		// superset of the pods a smaller one pins, to the same models.
		pin := rng.Float64() < x*specFactor[k]
		pick := rng.IntN(totals[k])
		if !pin {
			continue
		}
		for _, s := range specSets[k] {
			if pick < s.count {
				out[i].setModels(strings.Split(s.models, "|"))
				break
			}
			pick -= s.count
		}
	}
	return out
}

func gpuShareVariant(pods []Pod, x float64, rng *rand.Rand) ([]Pod, error) {
	var cpuOnly, shares, whole []Pod
	var shareDemand, wholeDemand float64
	for _, p := range pods {
		switch {
		case p.Request.GPUs == 0:
			cpuOnly = append(cpuOnly, p)
		case p.Request.Shared():
			shares = append(shares, p)
			shareDemand += float64(p.Request.Demand())
		default:
			whole = append(whole, p)
			wholeDemand += float64(p.Request.Demand())
		}
	}
	n := len(shares) + len(whole)
	if x > 0 && len(shares) == 0 || x < 1 && len(whole) == 0 {
		return nil, fmt.Errorf("variant gpushare%.0f: the trace needs shares and whole-GPU pods to draw from", 100*x)
	}
	// k shares of the mean share demand make x of the demand of k shares and
	// n-k whole-GPU pods of the mean whole demand.
	k := n
	if x < 1 {
		ms, mw := shareDemand/max(float64(len(shares)), 1), wholeDemand/float64(len(whole))
		k = int(math.Round(x * float64(n) * mw / (ms*(1-x) + x*mw)))
	}
	out := append([]Pod(nil), cpuOnly...)
	for i := range n {
		p := whole
		if i < k {
			p = shares
		}
		pod := p[rng.IntN(len(p))]
		pod.Name = fmt.Sprintf("%s-%d", pod.Name, i)
		out = append(out, pod)
	}
	return out, nil
}
