package realnode

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// containerdConfig is containerd's configuration (format version 3, containerd
// 2.x): everything under the node's work directory, the CRI plugin reading CDI
// specs from the plugin's CDI root, runc as the only runtime with the cgroupfs
// driver the kubelet uses, the locally imported pause image as sandbox image,
// a bridge CNI network so that ordinary (not host-network) pods start, and
// oom_score_adj clamped to containerd's own where the host forbids lowering it
// (Host.NoSysResource).
var containerdConfig = template.Must(template.New("config.toml").Parse(`version = 3
root = "{{.Dir}}/root"
state = "{{.Dir}}/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{.Socket}}"

[ttrpc]
  address = "{{.Socket}}.ttrpc"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{.Dir}}/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{{.PauseImage}}"

[plugins."io.containerd.cri.v1.runtime"]
  cdi_spec_dirs = ["{{.CDIRoot}}"]
  restrict_oom_score_adj = {{.RestrictOOMScoreAdj}}
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{{.CNIBinDir}}"]
    conf_dir = "{{.Dir}}/cni"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{{.Runc}}"
        SystemdCgroup = false
`))

// cniConfig is a bridge network private to the node; ipMasq is off because the
// test pods talk to nobody.
var cniConfig = template.Must(template.New("cni").Parse(`{
  "cniVersion": "1.0.0",
  "name": "tessera-node-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "tessera0",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "{{.Dir}}/cni-ipam",
        "ranges": [[{"subnet": "10.213.0.0/24"}]]
      }
    },
    {"type": "loopback"}
  ]
}
`))

// containerd is a running containerd.
type containerd struct {
	dir, socket, binDir string
	proc                *cluster.Process
}

// startContainerd writes the configuration and starts containerd, waiting
// until it answers.
func startContainerd(ctx context.Context, dir, binDir, logDir, cdiRoot string, host *Host) (*containerd, error) {
	c := &containerd{dir: dir, socket: filepath.Join(dir, "containerd.sock"), binDir: binDir}
	for _, d := range []string{dir, filepath.Join(dir, "cni")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	data := map[string]string{
		"Dir": dir, "Socket": c.socket, "CDIRoot": cdiRoot, "CNIBinDir": host.CNIBinDir,
		"Runc": host.Runc, "PauseImage": PauseImage, "RestrictOOMScoreAdj": strconv.FormatBool(host.NoSysResource),
	}
	if err := writeTemplate(filepath.Join(dir, "config.toml"), containerdConfig, data); err != nil {
		return nil, err
	}
	if err := writeTemplate(filepath.Join(dir, "cni", "10-tessera.conflist"), cniConfig, data); err != nil {
		return nil, err
	}
	// The shim is found on PATH; ours sits next to containerd.
	env := []string{"PATH=" + binDir + ":" + os.Getenv("PATH")}
	p, err := cluster.StartProcess("containerd", logDir, filepath.Join(binDir, "containerd"), []string{"--config", filepath.Join(dir, "config.toml")}, env)
	if err != nil {
		return nil, err
	}
	c.proc = p
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		if exited, _ := p.Exited(); exited {
			return false, fmt.Errorf("containerd exited (log: %s)", p.LogPath)
		}
		_, err := c.ctr(ctx, nil, "version")
		return err == nil, nil
	})
	if err != nil {
		_ = p.Stop(10 * time.Second)
		return nil, fmt.Errorf("containerd not ready: %w", err)
	}
	return c, nil
}

// ctr runs containerd's ctr in the CRI plugin's namespace and returns its
// standard output. Its standard error goes into the error only: ctr warns
// there (e.g. of containerd's deprecated cgroup v1 support on every call on a
// v1 host), which must not read as output such as task IDs.
func (c *containerd) ctr(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, "ctr"), append([]string{"--address", c.socket, "--namespace", "k8s.io"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stdout.String()+"\n"+stderr.String()))
	}
	return stdout.String(), nil
}

// importImage imports an OCI image archive, so that the CRI plugin finds the
// image without pulling it.
func (c *containerd) importImage(ctx context.Context, archive []byte) error {
	_, err := c.ctr(ctx, archive, "images", "import", "--no-unpack=false", "--local", "-")
	return err
}

// importArchive imports an OCI image archive from a file under img.Ref's
// repository (an archive may name its image by tag alone) and checks that
// containerd then holds img.Ref, which the pods ask for.
func (c *containerd) importArchive(ctx context.Context, img Image) error {
	repo, _, ok := SplitRef(img.Ref)
	if !ok {
		return fmt.Errorf("image %q is not repository:tag", img.Ref)
	}
	if _, err := c.ctr(ctx, nil, "images", "import", "--base-name", repo, "--local", img.Archive); err != nil {
		return fmt.Errorf("import image archive %s: %w", img.Archive, err)
	}
	out, err := c.ctr(ctx, nil, "images", "ls", "-q")
	if err != nil {
		return err
	}
	if !slices.Contains(strings.Fields(out), img.Ref) {
		return fmt.Errorf("image archive %s does not name %s: containerd holds %s", img.Archive, img.Ref, strings.Join(strings.Fields(out), ", "))
	}
	return nil
}

// SplitRef splits repository:tag; ok is false without a tag.
func SplitRef(ref string) (repo, tag string, ok bool) {
	i := strings.LastIndex(ref, ":")
	if i <= 0 || strings.Contains(ref[i:], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], true
}

// killAll kills and removes every task the CRI plugin left, so that no
// container or shim outlives the run. A shim exits once the last task of its
// sandbox is killed, and a remove racing that exit fails with "ttrpc: closed"
// although the task is gone: what counts is that no task is listed after
// (a few rounds, bounded by ctx).
func (c *containerd) killAll(ctx context.Context) error {
	var errs []string
	for {
		out, err := c.ctr(ctx, nil, "tasks", "ls", "-q")
		if err != nil {
			return err
		}
		ids := strings.Fields(out)
		if len(ids) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, id := range ids {
			if _, err := c.ctr(ctx, nil, "tasks", "kill", "--signal", "SIGKILL", id); err != nil && !strings.Contains(err.Error(), "not found") {
				errs = append(errs, err.Error())
			}
			if _, err := c.ctr(ctx, nil, "tasks", "rm", "--force", id); err != nil && !strings.Contains(err.Error(), "not found") {
				errs = append(errs, err.Error())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove containerd tasks %v: %s: %w", ids, strings.Join(errs, "; "), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func writeTemplate(path string, t *template.Template, data any) error {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return fmt.Errorf("render %s: %w", path, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
