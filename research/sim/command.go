package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tessera-gpu/tessera/pkg/placement"
)

// DefaultWeight is the weight of tessera-scheduler's fragmentation score in
// its profile: one point of it (a place in the node order among the best
// nodes, or placement.Tolerance of fragmentation below them) outweighs the
// stock scores that differ between nodes (two plugins of weight 1, each at
// most 100), so fragmentation and then the node order decide and the stock
// scores only break their ties.
const DefaultWeight = 300

// NewCommand returns tessera-sim's command line.
func NewCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "tessera-sim",
		Short:         "Capacity simulator: replay a GPU workload on a fleet with kube-scheduler's allocator",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(traceCommand(), whatIfCommand(), plotCommand(), timelineCommand(), burstCommand())
	return root
}

type inputs struct {
	pods, nodes string
	policies    string
	weight      int64
	variant     string
	variantSeed uint64
}

func (in *inputs) flags(cmd *cobra.Command, defaultPolicy string) {
	cmd.Flags().StringVar(&in.pods, "pods", "", "pods CSV (openb format: name,cpu_milli,memory_mib,num_gpu,gpu_milli[,gpu_spec,...])")
	cmd.Flags().StringVar(&in.nodes, "nodes", "", "nodes CSV (openb format: sn,cpu_milli,memory_mib,gpu,model)")
	cmd.Flags().StringVar(&in.policies, "policy", defaultPolicy, "policies, comma-separated: whole, stock, tessera, fgd")
	cmd.Flags().Int64Var(&in.weight, "weight", DefaultWeight, "weight of tessera-scheduler's score plugin in its profile")
	cmd.Flags().StringVar(&in.variant, "variant", "default", "derive an openb variant of the FGD paper from the pods: gpuspec<X> (X % of GPU pods pinned to GPU models) or gpushare<X> (shares make X % of GPU demand); see docs/benchmarks.md")
	cmd.Flags().Uint64Var(&in.variantSeed, "variant-seed", 42, "seed of the variant's derivation")
	_ = cmd.MarkFlagRequired("pods")
	_ = cmd.MarkFlagRequired("nodes")
}

func (in *inputs) load() ([]Pod, []NodeSpec, []Policy, error) {
	var policies []Policy
	for _, name := range strings.Split(in.policies, ",") {
		p, err := ParsePolicy(strings.TrimSpace(name))
		if err != nil {
			return nil, nil, nil, err
		}
		policies = append(policies, p)
	}
	if in.weight < 1 {
		return nil, nil, nil, fmt.Errorf("--weight must be at least 1")
	}
	pf, err := os.Open(in.pods)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open pods: %w", err)
	}
	defer func() { _ = pf.Close() }() // read only: a failed close loses nothing
	pods, err := ReadPods(pf)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", in.pods, err)
	}
	if pods, err = Variant(pods, in.variant, in.variantSeed); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", in.pods, err)
	}
	nf, err := os.Open(in.nodes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open nodes: %w", err)
	}
	defer func() { _ = nf.Close() }() // read only: a failed close loses nothing
	nodes, err := ReadNodes(nf)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", in.nodes, err)
	}
	return pods, nodes, policies, nil
}

func traceCommand() *cobra.Command {
	var in inputs
	var seeds, workers int
	var arrivals float64
	var plot string
	var shuffle bool
	var tolerance float64
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Monte-Carlo replay (FGD paper's method): unallocated GPU share at the given arrivals, mean over seeds",
		Long: `Draws pods from the trace at random (with replacement, seed i for run i) and
places them one by one until the arriving GPU demand reaches --arrivals per cent
of the fleet's GPU capacity. Prints one JSON object per policy on stdout
(policy, seeds, unallocatedPercent, the allocation curve, ...); progress goes
to stderr. --plot writes a PNG of allocation against arrivals per policy.
--shuffle replays as FGD's own simulator does: every pod of the trace once, in
an order drawn from the seed, before drawing with replacement.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pods, nodes, policies, err := in.load()
			if err != nil {
				return err
			}
			if seeds < 1 || arrivals <= 0 || !(tolerance > 0) {
				return fmt.Errorf("--seeds must be at least 1, --arrivals and --tolerance positive")
			}
			fleet := NewFleet(nodes)
			var results []Result
			out := json.NewEncoder(cmd.OutOrStdout())
			for _, p := range policies {
				_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "%s: %d seeds, %d pods in the trace, %d nodes, %d GPUs\n",
					p, seeds, len(pods), len(nodes), fleet.Capacity/1000)
				r, err := Run(cmd.Context(), fleet, pods, Options{
					Policy: p, Seeds: seeds, Arrivals: arrivals / 100, Weight: in.weight,
					Workers: workers, Progress: cmd.ErrOrStderr(), Shuffle: shuffle, Tolerance: tolerance,
				})
				if err != nil {
					return err
				}
				results = append(results, r)
				if err := out.Encode(r); err != nil {
					return fmt.Errorf("write result: %w", err)
				}
			}
			if plot == "" {
				return nil
			}
			return writePlotFile(plot, fmt.Sprintf("%d pods drawn from %s, %d GPUs, mean of %d seeds", len(pods), baseName(in.pods), fleet.Capacity/1000, seeds), results)
		},
	}
	in.flags(cmd, string(PolicyTessera))
	cmd.Flags().IntVar(&seeds, "seeds", 10, "Monte-Carlo runs")
	cmd.Flags().Float64Var(&arrivals, "arrivals", 100, "stop when arriving GPU demand reaches this per cent of capacity")
	cmd.Flags().IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "seeds run in parallel")
	cmd.Flags().StringVar(&plot, "plot", "", "write a PNG plot of allocation against arrivals to this file")
	cmd.Flags().Float64Var(&tolerance, "tolerance", placement.Tolerance, "tessera policy: milli-GPUs of fragmentation within which nodes count as equally good and the node order chooses (tessera-scheduler's is fixed; this tries others)")
	cmd.Flags().BoolVar(&shuffle, "shuffle", false, "replay every pod of the trace once, in a seeded order, before drawing with replacement (FGD's own simulator)")
	return cmd
}

func whatIfCommand() *cobra.Command {
	var in inputs
	cmd := &cobra.Command{
		Use:   "whatif",
		Short: "Place every pod of a CSV, in order, on a fleet and report how many GPUs it needs per policy",
		Long: `Places the pods in file order on the nodes under each policy and prints one JSON
object per policy: pods placed and failed on the whole fleet, GPUs in use, and
gpusNeeded, the GPUs of the fewest nodes (taken in file order) that place as
many pods as the whole fleet (every pod, when podsFailed is 0).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pods, nodes, policies, err := in.load()
			if err != nil {
				return err
			}
			out := json.NewEncoder(cmd.OutOrStdout())
			for _, p := range policies {
				_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "%s: sizing %d pods on up to %d nodes\n", p, len(pods), len(nodes))
				s, err := Size(cmd.Context(), nodes, pods, p, in.weight)
				if err != nil {
					return err
				}
				if err := out.Encode(s); err != nil {
					return fmt.Errorf("write result: %w", err)
				}
			}
			return nil
		},
	}
	in.flags(cmd, "whole,stock,tessera")
	return cmd
}

func plotCommand() *cobra.Command {
	var in, out, title string
	cmd := &cobra.Command{
		Use:   "plot",
		Short: "Draw the PNG plot from the JSON lines a trace run printed",
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := os.Open(in)
			if err != nil {
				return fmt.Errorf("open results: %w", err)
			}
			defer func() { _ = f.Close() }() // read only: a failed close loses nothing
			var results []Result
			dec := json.NewDecoder(f)
			for dec.More() {
				var r Result
				if err := dec.Decode(&r); err != nil {
					return fmt.Errorf("%s: decode result %d: %w", in, len(results)+1, err)
				}
				if _, err := ParsePolicy(string(r.Policy)); err != nil || len(r.Curve) == 0 {
					return fmt.Errorf("%s: result %d is not a trace result with a curve", in, len(results)+1)
				}
				results = append(results, r)
			}
			if len(results) == 0 {
				return fmt.Errorf("%s: no results", in)
			}
			return writePlotFile(out, title, results)
		},
	}
	cmd.Flags().StringVar(&in, "results", "", "JSON lines printed by tessera-sim trace")
	cmd.Flags().StringVar(&out, "out", "", "PNG file to write")
	cmd.Flags().StringVar(&title, "title", "", "title of the plot")
	_ = cmd.MarkFlagRequired("results")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func writePlotFile(path, title string, results []Result) (err error) {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create plot: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write plot: %w", cerr)
		}
	}()
	return WritePlot(io.Writer(f), title, results)
}

func baseName(path string) string {
	return path[strings.LastIndex(path, "/")+1:]
}
