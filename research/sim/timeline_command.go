package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func timelineCommand() *cobra.Command {
	var in inputs
	var seeds, workers int
	var budgets, plot string
	var timeout time.Duration
	var every int
	opts := TimelineOptions{}
	cmd := &cobra.Command{
		Use:   "timeline",
		Short: "Time-driven replay: pods arrive and end as the trace says, split among tenants with hard or elastic budgets",
		Long: `Replays the trace in time: each pod arrives at its creation_time (divided by
--speedup) and, once placed, runs for as long as it ran in the trace
(deletion_time minus scheduled_time, or minus creation_time if the trace never
scheduled it; to the end without a deletion_time). Pods that do not fit wait
and are retried when a node they may use is freed. The pods are split among
--tenants tenants at random (seed i for run i), each guaranteed an equal part
of the fleet's GPU memory. With hard budgets a tenant never holds more than its
guarantee; with elastic ones it borrows up to --elastic-budget of the fleet
while GPUs are free, and a tenant below its guarantee whose pod does not fit
evicts borrowed pods (tenancy.ChooseVictims); evicted pods wait again.
Prints one JSON object per budget mode on stdout; --plot writes a PNG of
demand and allocation over time.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pods, nodes, err := loadTimeline(in)
			if err != nil {
				return err
			}
			policy, err := ParsePolicy(strings.TrimSpace(in.policies))
			if err != nil {
				return err
			}
			if in.weight < 1 {
				return fmt.Errorf("--weight must be at least 1")
			}
			if timeout <= 0 || every < 1 {
				return fmt.Errorf("--timeout must be positive and --node-every at least 1")
			}
			nodes = EveryNth(nodes, every)
			if len(opts.Split) > 0 {
				opts.Tenants = len(opts.Split)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			fleet := NewFleet(nodes)
			opts.Policy, opts.Weight = policy, in.weight
			var results []TimelineResult
			out := json.NewEncoder(cmd.OutOrStdout())
			for _, b := range strings.Split(budgets, ",") {
				opts.Budgets = Budgets(strings.TrimSpace(b))
				_, _ = fmt.Fprintf(cmd.ErrOrStderr(), "%s budgets, %s: %d seeds, %d pods, %d tenants, %d GPUs, speedup %g\n",
					opts.Budgets, policy, seeds, len(pods), opts.Tenants, fleet.Capacity/1000, opts.Speedup)
				r, err := RunTimeline(ctx, fleet, pods, seeds, workers, opts, cmd.ErrOrStderr())
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
			f, err := os.Create(plot)
			if err != nil {
				return fmt.Errorf("create plot: %w", err)
			}
			tenants := fmt.Sprintf("%d tenants", opts.Tenants)
			if len(opts.Split) > 0 {
				tenants = fmt.Sprintf("tenants %s", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(opts.Split)), ":"), "[]"))
			}
			title := fmt.Sprintf("%s, %s, %d GPUs, arrivals x%g, mean of %d seeds", baseName(in.pods), tenants, fleet.Capacity/1000, opts.Speedup, seeds)
			if err := WriteTimelinePlot(f, title, results); err != nil {
				_ = f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("write plot: %w", err)
			}
			return nil
		},
	}
	in.flags(cmd, string(PolicyTessera))
	cmd.Flags().IntVar(&seeds, "seeds", 10, "runs; seed i splits the pods among tenants")
	cmd.Flags().IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "seeds run in parallel")
	cmd.Flags().StringVar(&budgets, "budgets", "hard,elastic", "budget modes, comma-separated: hard, elastic")
	cmd.Flags().IntVar(&opts.Tenants, "tenants", 4, "tenants sharing the pods and the fleet")
	cmd.Flags().Float64SliceVar(&opts.Split, "split", nil, "weights of the tenants' shares of the pods, one per tenant (sets --tenants); default equal")
	cmd.Flags().Float64Var(&opts.ElasticBudget, "elastic-budget", 1, "an elastic tenant's budget, as a share of the fleet's GPU memory")
	cmd.Flags().Float64Var(&opts.Speedup, "speedup", 200, "divide the trace's arrival times by this (runtimes are kept)")
	cmd.Flags().Float64Var(&opts.ReclaimDelay, "reclaim-delay", 30, "seconds from eviction to the devices being free (termination grace period)")
	cmd.Flags().Float64Var(&opts.ReclaimInterval, "reclaim-interval", 5, "least seconds between two reclaims for one waiting pod (the controller passes every 5 s)")
	cmd.Flags().IntVar(&opts.MaxEvents, "max-events", 1_000_000, "fail a run that needs more events")
	cmd.Flags().Float64Var(&opts.SeriesStep, "series-step", 600, "seconds between points of the recorded series (0: none)")
	cmd.Flags().IntVar(&every, "node-every", 1, "use every n-th node of the nodes CSV (the first, the n+1-th, ...): a smaller fleet with the same mix")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	cmd.Flags().StringVar(&plot, "plot", "", "write a PNG plot of demand and allocation over time to this file")
	return cmd
}

func loadTimeline(in inputs) ([]TimedPod, []NodeSpec, error) {
	pf, err := os.Open(in.pods)
	if err != nil {
		return nil, nil, fmt.Errorf("open pods: %w", err)
	}
	defer func() { _ = pf.Close() }() // read only: a failed close loses nothing
	pods, err := ReadTimedPods(pf)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", in.pods, err)
	}
	nf, err := os.Open(in.nodes)
	if err != nil {
		return nil, nil, fmt.Errorf("open nodes: %w", err)
	}
	defer func() { _ = nf.Close() }() // read only: a failed close loses nothing
	nodes, err := ReadNodes(nf)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", in.nodes, err)
	}
	return pods, nodes, nil
}
