package sim

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func burstCommand() *cobra.Command {
	opts := DefaultBurstOptions()
	var schedulers string
	bindingConditions := true
	cmd := &cobra.Command{
		Use:   "burst",
		Short: "Shares created at once against the same shares one by one: GPUs touched and left free per scheduler",
		Long: `Places each seed's shares on one node of H200 GPUs whose devices carry the
tenancy controller's binding condition, first one by one (each after the one
before is bound), then in a burst (each filtered while the earlier ones wait in
PreBind, in flight and, but for the --unwritten placed last, written to the
claim cache; with --binding-conditions=false, a node without tenancy, each
leaves flight as soon as its allocation is written, for its PreBind waits for
nothing), with kube-scheduler's accounting (an in-flight share the cache
shows allocated consumes its capacity twice) and tessera-scheduler's
(count-once.patch: once). Seed i draws the share sizes as the e2e's
TestShareBurstPacksLikeOneByOne does. The defaults are the e2e's first setup
(the tenancy node of two GPUs); make sim-burst runs its others too. Prints
one JSON object per scheduler on stdout (GPUs touched and left free, summed
over seeds, and per seed), and a summary line per scheduler on stderr.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.WithoutBindingConditions = !bindingConditions
			var list []BurstScheduler
			for _, name := range strings.Split(schedulers, ",") {
				s, err := ParseBurstScheduler(strings.TrimSpace(name))
				if err != nil {
					return err
				}
				list = append(list, s)
			}
			results, err := RunBurst(cmd.Context(), opts, list)
			if err != nil {
				return err
			}
			out := json.NewEncoder(cmd.OutOrStdout())
			for _, r := range results {
				_, _ = fmt.Fprintf(cmd.ErrOrStderr(),
					"%s: %d seeds of %d shares (%d-%dGi, compute %d %%) on %d free of %d GPUs%s: GPUs touched one by one %d, in bursts %d (bursts on more GPUs: %d); GPUs left free %d / %d\n",
					r.Name, r.Seeds, r.Shares, opts.MemoryMinGiB, opts.MemoryMaxGiB, opts.ComputePercent, r.GPUs-r.BusyGPUs, r.GPUs, noConditions(r),
					r.OneByOneGPUsTouched, r.BurstGPUsTouched, r.BurstsOnMoreGPUs, r.OneByOneGPUsLeftFree, r.BurstGPUsLeftFree)
				if err := out.Encode(r); err != nil {
					return fmt.Errorf("write result: %w", err)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&opts.Seeds, "seeds", opts.Seeds, "seeded sets of shares")
	f.IntVar(&opts.GPUs, "gpus", opts.GPUs, "H200 GPUs of the node (1-8)")
	f.IntVar(&opts.BusyGPUs, "busy-gpus", opts.BusyGPUs, "GPUs taken by whole-GPU claims before the shares come")
	f.IntVar(&opts.Shares, "shares", opts.Shares, "shares per seed")
	f.Int64Var(&opts.MemoryMinGiB, "memory-min-gib", opts.MemoryMinGiB, "least memory of a share, GiB")
	f.Int64Var(&opts.MemoryMaxGiB, "memory-max-gib", opts.MemoryMaxGiB, "most memory of a share, GiB")
	f.Int64Var(&opts.ComputePercent, "compute", opts.ComputePercent, "compute of a share, per cent")
	f.IntVar(&opts.Unwritten, "unwritten", opts.Unwritten, "pods placed just before a pod of the burst whose allocation is not yet written when it is filtered")
	f.BoolVar(&bindingConditions, "binding-conditions", bindingConditions, "the node's devices carry the tenancy controller's binding condition (a node with tenancy on); false: a node without, where a pod's PreBind waits for nothing")
	f.StringVar(&schedulers, "schedulers", "kube-scheduler,tessera-scheduler", "schedulers, comma-separated: kube-scheduler, tessera-scheduler")
	return cmd
}

func noConditions(r BurstResult) string {
	if r.BindingConditions {
		return ""
	}
	return " without binding conditions"
}
