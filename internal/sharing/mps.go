// Package sharing holds the mechanics by which several containers share one
// GPU: MPS control daemons (one per claim, with the claim's limits as the
// daemon's own defaults, its own pipe directory and its own in-memory
// /dev/shm), the launcher that runs a daemon, holds its liveness lock and
// gives it that /dev/shm, and time slicing. It knows nothing of claims' allocation or the checkpoint, so the
// launcher subcommand does not pull in all of prepare.
package sharing

import (
	"context"
	"fmt"
	"path/filepath"
)

// PIDFile is the file in which nvidia-cuda-mps-control records its PID, in
// its pipe directory.
const PIDFile = "nvidia-cuda-mps-control.pid"

// Daemon is the MPS control daemon of one claim. Every claim that shares a
// GPU through MPS gets its own daemon, so that no claim can reach, slow
// down or stop another's: the control pipe is the daemon's only interface,
// and MPS runs one server per UID at a time per daemon.
type Daemon struct {
	// ID names the daemon; the claim's UID.
	ID string
	// GPUUUID is the GPU the daemon serves (its CUDA_VISIBLE_DEVICES).
	GPUUUID string
	// ActiveThreadPercentage, when positive, becomes the daemon's default
	// active thread percentage: clients can only lower it.
	ActiveThreadPercentage int64
	// PinnedMemoryLimitBytes, when positive, becomes the daemon's default
	// pinned device memory limit on the GPU: clients can only lower it.
	PinnedMemoryLimitBytes int64
	// ShmSizeBytes sizes the daemon's private /dev/shm; 0 takes the
	// control's default.
	ShmSizeBytes int64
}

// Dirs are the host directories of one daemon.
type Dirs struct {
	// Pipe holds the daemon's pipes and sockets; clients reach it through
	// CUDA_MPS_PIPE_DIRECTORY.
	Pipe string
	// Log holds the daemon's and its servers' logs.
	Log string
	// Shm is the daemon's /dev/shm, an in-memory file system of its own
	// that its clients mount at /dev/shm.
	Shm string
}

// DaemonDirs returns the directories of the daemon id under root.
func DaemonDirs(root, id string) Dirs {
	dir := filepath.Join(root, id)
	return Dirs{Pipe: filepath.Join(dir, "pipe"), Log: filepath.Join(dir, "log"), Shm: filepath.Join(dir, "shm")}
}

// Commands are the control commands that make the daemon's limits its
// defaults. They are sent before any client can connect (the claim's CDI
// spec does not exist yet), so every server the daemon starts has them,
// whatever the client's environment says.
func (d Daemon) Commands() []string {
	var cmds []string
	if d.ActiveThreadPercentage > 0 {
		cmds = append(cmds, fmt.Sprintf("set_default_active_thread_percentage %d", min(d.ActiveThreadPercentage, 100)))
	}
	if d.PinnedMemoryLimitBytes > 0 {
		// MPS takes whole mebibytes ("M"); rounding down keeps the limit
		// inside the share.
		cmds = append(cmds, fmt.Sprintf("set_default_device_pinned_mem_limit %s %dM", d.GPUUUID, d.PinnedMemoryLimitBytes>>20))
	}
	return cmds
}

// MPSControl starts, lists and stops MPS control daemons. The real one runs
// nvidia-cuda-mps-control; a simulated node keeps them in memory
// (hardware.SimulatedMPS).
type MPSControl interface {
	ProcessLister
	// Start starts the daemon with its limits; starting a live daemon is
	// not an error. A dead daemon's stale files are removed first, from
	// the same pipe directory: running containers have it mounted.
	Start(ctx context.Context, d Daemon) error
	// Stop stops the daemon, its servers included, and removes its
	// directories; stopping a stopped daemon is not an error. It runs to
	// its end even when ctx is already cancelled.
	Stop(ctx context.Context, id string) error
	// List returns every daemon that has directories, and whether it is
	// alive.
	List(ctx context.Context) (map[string]bool, error)
}

// ShmMounter gives a daemon's /dev/shm directory its own in-memory file
// system.
type ShmMounter interface {
	// Mount mounts a file system of sizeBytes on dir, unless one is
	// mounted there already.
	Mount(dir string, sizeBytes int64) error
	// Unmount unmounts dir if something is mounted on it.
	Unmount(dir string) error
}

// MPSRoot is the directory of the daemons' directories under the plugin's
// state directory.
func MPSRoot(stateDir string) string { return filepath.Join(stateDir, "mps") }

// DefaultShmSize is a daemon's /dev/shm size when none is given.
const DefaultShmSize = 256 << 20
