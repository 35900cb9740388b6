// Command tessera-scheduler is kube-scheduler 1.37 with Tessera's placement
// plugin (TesseraPlacement, package research/scheduler) registered through
// the scheduler framework's out-of-tree plugin mechanism. Enable it in a
// profile of a KubeSchedulerConfiguration (see docs/benchmarks.md); without
// one it schedules exactly as kube-scheduler does.
//
// It is a module of its own so that k8s.io/kubernetes, which it needs for
// the scheduler's command, never becomes a dependency of Tessera's module.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/tessera-gpu/tessera/research/scheduler"
)

// pluginOptions are TesseraPlacement's options in this build: with the
// patched allocator it models the placement choice (placement_choice.go).
var pluginOptions []scheduler.Option

func main() {
	os.Exit(cli.Run(app.NewSchedulerCommand(app.WithPlugin(scheduler.Name, scheduler.NewFactory(pluginOptions...)))))
}
