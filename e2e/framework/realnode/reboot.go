package realnode

import (
	"context"
	"fmt"
	"time"
)

// Reboot simulates the node's reboot as far as one machine can: the kubelet
// is killed, then every container (containerd's tasks: the pods' and the
// plugin's, so also the mock NVML that lives in the plugin's process), then
// wipe runs with nothing on the node running (to lose what a reboot loses:
// the GPU's state, /var/run/cdi), and the kubelet starts again. It returns
// once the node is Ready, the plugin serves and the kubelet holds its pods.
// The kubelet's and containerd's own state on disk stays, as it does across
// a reboot.
func (n *Node) Reboot(ctx context.Context, wipe func() error) error {
	n.kubelet.proc.Kill()
	killCtx, cancel := context.WithTimeout(ctx, time.Minute)
	err := n.containerd.killAll(killCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("kill the node's containers: %w", err)
	}
	if err := wipe(); err != nil {
		return err
	}
	restarted := time.Now().Truncate(time.Second)
	if err := n.kubelet.start(); err != nil {
		return err
	}
	if err := n.waitReady(ctx, restarted); err != nil {
		return err
	}
	if err := n.WaitPlugin(ctx, ""); err != nil {
		return err
	}
	return n.waitPodsHeld(ctx)
}
