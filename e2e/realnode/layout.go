package realnode

import "path/filepath"

// Layout is where a real node keeps everything, under one work directory. The
// chart's host paths are pointed at it (ChartValues), so that what the kubelet
// creates for the plugin's DaemonSet pod stays inside it too.
type Layout struct {
	// Dir is the node's work directory.
	Dir string
	// KubeletDir is the kubelet's --root-dir.
	KubeletDir string
	// CDIRoot is where the plugin writes CDI specs and containerd reads them.
	CDIRoot string
	// StateDir is the plugin's checkpoint directory.
	StateDir string
	// DriverRoot is the fake driver root, laid out as Driver says.
	DriverRoot string
	// Driver is the fake driver install's layout.
	Driver DriverLayout
}

// NewLayout lays a node out under dir, which must be absolute, with a fake
// driver installed as driver lays it out.
func NewLayout(dir string, driver DriverLayout) Layout {
	return Layout{
		Dir:        dir,
		KubeletDir: filepath.Join(dir, "kubelet", "root"),
		CDIRoot:    filepath.Join(dir, "cdi"),
		StateDir:   filepath.Join(dir, "plugin-state"),
		DriverRoot: filepath.Join(dir, driver.Root),
		Driver:     driver,
	}
}

// ChartValues are the chart's --set values for a cluster with this node: its
// host paths, and an image pull policy that keeps the real kubelet from trying
// to pull the plugin image (the plugin runs as a process beside it, with a
// token bound to the DaemonSet's pod, which stays waiting for its image).
func (l Layout) ChartValues() []string {
	return []string{
		"kubeletPlugin.kubeletDir=" + l.KubeletDir,
		"kubeletPlugin.cdiRoot=" + l.CDIRoot,
		"kubeletPlugin.stateDir=" + l.StateDir,
		"kubeletPlugin.driverRoot=" + l.DriverRoot,
		"image.pullPolicy=Never",
	}
}
