package realnode

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

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

// maxSocketPath is the longest path a Unix socket address holds on Linux
// (sun_path is 108 bytes with its terminating NUL); bind fails with EINVAL
// beyond it.
const maxSocketPath = 107

// checkSocketPaths fails when the plugin's service socket, which carries its
// pod's UID (<kubelet dir>/plugins/<driver>/dra-<uid>.sock, so that an old and
// a new plugin can serve side by side), would not fit a socket address.
func (l Layout) checkSocketPaths() error {
	sock := filepath.Join(l.KubeletDir, "plugins", gpuapi.DriverName, "dra-00000000-0000-0000-0000-000000000000.sock")
	if len(sock) > maxSocketPath {
		return fmt.Errorf("the plugin's socket %s would be %d bytes long, over the %d a Unix socket address holds: use a shorter work directory (TMPDIR)", sock, len(sock), maxSocketPath)
	}
	return nil
}

// TryOut is what the chart must be told about this machine, beyond its
// defaults, to run on a node of this layout.
type TryOut struct {
	// Image is the product image's repository:tag, imported into containerd.
	Image string
	// NVML is the plugin's mock NVML, e.g. "mock:dgxh200:1".
	NVML string
	// DriverMPS runs the plugin's MPS daemons from the driver root
	// (kubeletPlugin.driverMPS): the node's driver root must have a stand-in
	// MPS that runs (Options.MPSStandin).
	DriverMPS bool
	// APIServerURL is the API server's https://127.0.0.1:<port>.
	APIServerURL string
	// Ports are free ports on the node for the plugin's metrics and health
	// endpoints and the controller's, which host networking binds there.
	PluginMetrics, PluginHealth, ControllerMetrics, ControllerHealth int
}

// ChartValues are the chart's --set values for a try-out on this node, and
// nothing else: the image, imported and never pulled; mock NVML; the node's
// host paths; and host networking with the API server's loopback address,
// since nothing routes the kubernetes Service here (no kube-proxy), with
// ports free on this machine for what host networking binds.
func (l Layout) ChartValues(t TryOut) ([]string, error) {
	repo, tag, _ := SplitRef(t.Image)
	u, err := url.Parse(t.APIServerURL)
	if err != nil {
		return nil, err
	}
	values := []string{
		"image.repository=" + repo,
		"image.tag=" + tag,
		"image.pullPolicy=Never",
		"kubeletPlugin.nvml=" + t.NVML,
		"kubeletPlugin.kubeletDir=" + l.KubeletDir,
		"kubeletPlugin.cdiRoot=" + l.CDIRoot,
		"kubeletPlugin.stateDir=" + l.StateDir,
		"kubeletPlugin.driverRoot=" + l.DriverRoot,
		"kubeletPlugin.hostNetwork=true",
		"controller.hostNetwork=true",
		"apiServer.host=" + u.Hostname(),
		"apiServer.port=" + u.Port(),
		"kubeletPlugin.metricsPort=" + strconv.Itoa(t.PluginMetrics),
		"kubeletPlugin.healthcheckPort=" + strconv.Itoa(t.PluginHealth),
		"controller.metricsPort=" + strconv.Itoa(t.ControllerMetrics),
		"controller.healthPort=" + strconv.Itoa(t.ControllerHealth),
	}
	if t.DriverMPS {
		values = append(values, "kubeletPlugin.driverMPS=true")
	}
	return values, nil
}
