// Command dra-kubelet-plugin is Tessera's kubelet plugin: it publishes the
// node's GPUs as ResourceSlices and prepares allocated devices. Its
// "slices" subcommand prints, without a cluster, the slices it would publish;
// its "nvml-report" subcommand compares what discovery sees with the mocks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/cli"
	"github.com/tessera-gpu/tessera/internal/hardware"
	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvmlreport"
	"github.com/tessera-gpu/tessera/internal/plugin"
	"github.com/tessera-gpu/tessera/internal/sharing"
	"github.com/tessera-gpu/tessera/pkg/resourceslice"
)

// openNVML opens the --nvml backend's NVML alone, its mock state in memory.
func openNVML(c *plugin.Config) (tnvml.Library, error) {
	hw := c.Hardware("")
	lib, err := hardware.OpenNVML(hw)
	return lib, openFailed(c, hw, err)
}

// openFailed says where real NVML was looked for when it failed to load.
func openFailed(c *plugin.Config, hw hardware.Config, err error) error {
	if err == nil || hw.NVML.Mock != "" {
		return err
	}
	roots := "--container-driver-root=" + hw.DriverRoot
	if c.DriverRoot != "" && c.DriverRoot != hw.DriverRoot {
		roots += ", where the host's --driver-root=" + c.DriverRoot + " is mounted"
	}
	return fmt.Errorf("%w (%s): is the NVIDIA driver installed under the driver root (chart value kubeletPlugin.driverRoot)?", err, roots)
}

func main() {
	signalled, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal kills the process at once.
		<-signalled.Done()
		stop()
	}()
	ctx := klog.NewContext(signalled, klog.Background())
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	o := &plugin.Config{}
	root := &cobra.Command{
		Use:           "dra-kubelet-plugin",
		Short:         "Tessera's DRA kubelet plugin for NVIDIA GPUs",
		SilenceUsage:  true,
		SilenceErrors: true,
		PreRunE:       func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE:          func(cmd *cobra.Command, _ []string) error { return run(cmd.Context(), o) },
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	root.PersistentFlags().AddGoFlagSet(klogFlags)
	o.AddFlags(root.PersistentFlags())
	o.AddRunFlags(root.Flags())

	root.AddCommand(&cobra.Command{
		Use:     "slices",
		Short:   "Print the ResourceSlices this node would publish, as a YAML stream",
		Example: "  dra-kubelet-plugin slices --nvml=mock:dgxh200 --node-name=n1",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.NodeName == "" {
				return fmt.Errorf("--node-name is required")
			}
			lib, err := openNVML(o)
			if err != nil {
				return err
			}
			defer func() { _ = lib.Shutdown() }()
			node, err := lib.Discover(cmd.Context())
			if err != nil {
				return fmt.Errorf("discover GPUs: %w", err)
			}
			res := resourceslice.Build(o.NodeName, node, o.SliceOptions())
			return resourceslice.WriteYAML(cmd.OutOrStdout(), resourceslice.Objects(o.NodeName, res))
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "nvml-report",
		Short: "Print what discovery sees on this node's GPUs and compare each with the mock's model of its product; changes nothing",
		Long: "Print, for each GPU, what Tessera's discovery sees (identity, memory, MIG mode current and pending, MIG instances, " +
			"the MIG profiles and placements, NVML's own profile names, the devices Tessera would publish) and compare it, line by line, " +
			"with the mock model of the GPU's product that Tessera's tests run on: \"=\" agrees, \"!\" differs in a way that matters " +
			"(the tests prove less than they seem to), \"~\" differs in a way that does not. Exits non-zero on any difference that matters. " +
			"Only reads from NVML: no MIG mode change, no instance created or destroyed.",
		Example: "  dra-kubelet-plugin nvml-report --driver-root=/run/nvidia/driver",
		Args:    cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, _ []string) error { return cli.FromEnv(cmd.Flags()) },
		RunE: func(cmd *cobra.Command, _ []string) error {
			lib, err := openNVML(o)
			if err != nil {
				return err
			}
			defer func() { _ = lib.Shutdown() }()
			n, err := nvmlreport.Write(cmd.Context(), cmd.OutOrStdout(), lib, o.SliceOptions().Partition)
			if err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("%d differences that matter between this node's GPUs and Tessera's mock models", n)
			}
			return nil
		},
	})
	root.AddCommand(newMPSLaunchCommand())
	return root
}

// newMPSLaunchCommand is how the plugin starts an MPS control daemon: it
// runs the daemon with a private /dev/shm and holds the daemon's liveness
// lock until the daemon exits (see sharing.Launch).
func newMPSLaunchCommand() *cobra.Command {
	var shm string
	cmd := &cobra.Command{
		Use:    "mps-launch --shm DIR -- COMMAND [ARG...]",
		Short:  "Run COMMAND in a private mount namespace whose /dev/shm is DIR, holding the lock on descriptor 3 while it runs (used to start MPS daemons)",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if shm == "" {
				return fmt.Errorf("--shm is required")
			}
			return sharing.Launch(shm, args, os.Environ())
		},
	}
	cmd.Flags().StringVar(&shm, "shm", "", "directory to mount on /dev/shm")
	return cmd
}

func run(ctx context.Context, o *plugin.Config) error {
	if err := o.Validate(); err != nil {
		return err
	}
	config, err := cli.KubeConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	// Every real MPS daemon is started through this binary's launcher,
	// whether the GPUs are real or mocked (--driver-mps).
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable for the MPS launcher: %w", err)
	}
	o.MPSLauncher = []string{exe, "mps-launch"}
	// A mock's MIG instances outlive a plugin restart, as on hardware, so
	// that restarts on simulated nodes test the checkpoint against what the
	// GPUs really hold.
	hwConfig := o.Hardware(o.StateDir)
	hw, err := hardware.Open(ctx, hwConfig)
	if err != nil {
		return openFailed(o, hwConfig, err)
	}
	defer func() { _ = hw.Close() }()
	return plugin.RunNode(ctx, *o, client, hw)
}
