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
//     multi-GPU pods 1.047. A multi-GPU pod's set depends on its GPU count
//     (kindMulti8 and so on): the files pin 8-GPU pods only to G2 or G3,
//     4-GPU pods to G2 or V100s, 2-GPU pods to sets of V100s (with P100 or
//     T4). Which pods got pinned is independent of their CPU, memory and GPU
//     amount within a kind, and differs from file to file.

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
	// Multi-GPU pods by GPU count: 2 or 3, 4 to 7, 8 or more.
	kindMulti2
	kindMulti4
	kindMulti8
)

// specFactor is each kind's pinning rate per unit of the variant's X. The
// multi-GPU pods share one rate: the files' 8-, 4- and 2-GPU pods (44, 15 and
// 16 of them) are pinned at 0.90, 1.51 and 1.01 of X, within two binomial
// standard deviations of their pooled 1.047.
var specFactor = [...]float64{kindShare: 0.871, kindOne: 1.134, kindMulti2: 1.047, kindMulti4: 1.047, kindMulti8: 1.047}

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
	// The files never pin a multi-GPU pod to a set whose models have few
	// nodes of its GPU count: no 8-GPU pod to a V100 set, no 2-GPU pod to
	// G2 or G3.
	kindMulti2: {{"P100|V100M16|V100M32", 6}, {"T4|V100M16|V100M32", 3}, {"V100M16|V100M32", 3}, {"V100M32", 3}},
	kindMulti4: {{"G2", 12}, {"V100M16|V100M32", 9}},
	kindMulti8: {{"G2", 21}, {"G3", 16}},
}

func kindOf(r placement.Request) podKind {
	switch {
	case r.Shared():
		return kindShare
	case r.GPUs == 1:
		return kindOne
	case r.GPUs < 4:
		return kindMulti2
	case r.GPUs < 8:
		return kindMulti4
	default:
		return kindMulti8
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
