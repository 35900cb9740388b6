package sharing

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2/ktesting"

	"github.com/tessera-gpu/tessera/internal/sharing/mpsstandin"
)

// limits reads a daemon's defaults back from it.
func limits(ctx context.Context, t *testing.T, m *MPSDaemons, id, gpu string) []string {
	t.Helper()
	var out []string
	for _, q := range []string{"get_default_active_thread_percentage", "get_default_device_pinned_mem_limit " + gpu} {
		got, err := m.Query(ctx, id, q)
		if err != nil {
			t.Fatalf("daemon %s: %v", id, err)
		}
		out = append(out, got)
	}
	return out
}

// TestMPSDaemonPerClaimWithServerSideLimits: two claims on one GPU get two
// daemons, each with its own directories and the claim's limits set as
// the daemon's defaults (so a client that unsets its environment still
// gets them); starting a live daemon again starts nothing; stopping one
// leaves the other alone and, once listed, nothing of its directories.
func TestMPSDaemonPerClaimWithServerSideLimits(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	a := Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30, PinnedMemoryLimitBytes: 20 << 30}
	b := Daemon{ID: "claim-b", GPUUUID: "GPU-1", ActiveThreadPercentage: 70, PinnedMemoryLimitBytes: 10<<30 + 100}
	for _, d := range []Daemon{a, b, a} {
		if err := m.Start(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"30.0", "20480M"}, limits(ctx, t, m, "claim-a", "GPU-1")); diff != "" {
		t.Errorf("claim-a's defaults (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"70.0", "10240M"}, limits(ctx, t, m, "claim-b", "GPU-1")); diff != "" {
		t.Errorf("claim-b's defaults (-want +got):\n%s", diff)
	}
	if n := starts(t, m, "claim-a"); n != 1 {
		t.Errorf("claim-a's daemon started %d times, want 1", n)
	}
	if got, _ := m.List(ctx); !cmp.Equal(map[string]bool{"claim-a": true, "claim-b": true}, got) {
		t.Errorf("List = %v, want both alive", got)
	}
	for range 2 { // stopping a stopped daemon is not an error
		if err := m.Stop(ctx, "claim-a"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(m.Root, "claim-a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("claim-a's directories left after stop: %v", err)
	}
	if got, _ := m.List(ctx); !cmp.Equal(map[string]bool{"claim-b": true}, got) {
		t.Errorf("List after stopping claim-a = %v, want only claim-b alive", got)
	}
	// Stop only renames what a container may have filled (it runs under
	// the node's state lock); List, which does not, deletes it.
	if entries, err := os.ReadDir(m.Root); err != nil || len(entries) != 1 || entries[0].Name() != "claim-b" {
		t.Errorf("after Stop and List, the daemons' root holds %v (%v), want only claim-b", entries, err)
	}
	if _, err := m.Query(ctx, "claim-b", "get_default_active_thread_percentage"); err != nil {
		t.Errorf("claim-b's daemon after stopping claim-a: %v", err)
	}
}

// TestMPSRestartServesMountedPipeDirectory: after the plugin's container
// ends (its daemons with it) and a new plugin starts the daemon again, a
// running container, which holds the pipe directory it had mounted, reaches
// the new daemon through it and gets the claim's limits.
func TestMPSRestartServesMountedPipeDirectory(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	d := Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30, PinnedMemoryLimitBytes: 20 << 30}
	if err := m.Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	mounted, err := os.Open(DaemonDirs(m.Root, d.ID).Pipe)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mounted.Close() }()
	var before unix.Stat_t
	if err := unix.Fstat(int(mounted.Fd()), &before); err != nil {
		t.Fatal(err)
	}
	if got, err := containerQuery(t, m, mounted, "get_default_active_thread_percentage"); err != nil || got != "30.0" {
		t.Fatalf("container's query before the restart = %q, %v", got, err)
	}

	mpsstandin.EndPlugin(t, m.Root) // the plugin's container ends
	restarted := instance(m, "")
	if got, _ := restarted.List(ctx); !cmp.Equal(map[string]bool{d.ID: false}, got) {
		t.Errorf("List after the plugin's end = %v, want claim-a dead", got)
	}
	if err := restarted.Start(ctx, d); err != nil {
		t.Fatal(err)
	}
	var after unix.Stat_t
	if err := unix.Stat(DaemonDirs(m.Root, d.ID).Pipe, &after); err != nil || after.Ino != before.Ino || after.Dev != before.Dev {
		t.Errorf("pipe directory after the restart: inode %d (%v), want the mounted %d", after.Ino, err, before.Ino)
	}
	for q, want := range map[string]string{
		"get_default_active_thread_percentage":      "30.0",
		"get_default_device_pinned_mem_limit GPU-1": "20480M",
	} {
		if got, err := containerQuery(t, m, mounted, q); err != nil || got != want {
			t.Errorf("container's %s after the restart = %q, %v; want %q", q, got, err, want)
		}
	}
	if n := starts(t, m, d.ID); n != 2 {
		t.Errorf("daemon started %d times, want 2", n)
	}
	if err := restarted.Stop(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
}

// TestMPSTwoInstancesShareDaemons: during a rolling update two plugin
// instances, in separate PID namespaces, serve one node. The new one
// neither stops nor duplicates the daemons the old one started, and can
// stop one for an unprepare.
func TestMPSTwoInstancesShareDaemons(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	oldPlugin := standIn(t)
	// The new instance's /proc shows none of the old one's processes.
	newPlugin := instance(oldPlugin, t.TempDir())
	a := Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30}
	b := Daemon{ID: "claim-b", GPUUUID: "GPU-2", ActiveThreadPercentage: 40}
	for _, d := range []Daemon{a, b} {
		if err := oldPlugin.Start(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		got, err := newPlugin.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(map[string]bool{"claim-a": true, "claim-b": true}, got) {
			t.Errorf("new instance: List = %v, want both alive", got)
		}
		for _, d := range []Daemon{a, b} { // as SyncMPS does
			if err := newPlugin.Start(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, id := range []string{"claim-a", "claim-b"} {
		if n := starts(t, oldPlugin, id); n != 1 {
			t.Errorf("%s's daemon started %d times, want 1", id, n)
		}
	}
	if got, err := newPlugin.Query(ctx, "claim-a", "get_default_active_thread_percentage"); err != nil || got != "30.0" {
		t.Errorf("claim-a's daemon = %q, %v; want 30.0", got, err)
	}
	// An unprepare served by the new instance stops the daemon.
	if err := newPlugin.Stop(ctx, "claim-a"); err != nil {
		t.Fatal(err)
	}
	if pids := mpsstandin.ProcessesUnder(filepath.Join(oldPlugin.Root, "claim-a")); len(pids) != 0 {
		t.Errorf("processes of claim-a's daemon remain: %v", pids)
	}
	if got, _ := oldPlugin.List(ctx); !cmp.Equal(map[string]bool{"claim-b": true}, got) {
		t.Errorf("old instance: List = %v, want claim-b alive", got)
	}
}

// TestMPSStopWithCancelledContext: an unprepare whose context is already
// cancelled still stops the daemon and its servers.
func TestMPSStopWithCancelledContext(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1"}); err != nil {
		t.Fatal(err)
	}
	answer, err := m.Query(ctx, "claim-a", "start_server -uid 1000") // as a client's first CUDA call does
	if err != nil {
		t.Fatal(err)
	}
	server, err := strconv.Atoi(answer)
	if err != nil {
		t.Fatalf("start_server answered %q", answer)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.Stop(cancelled, "claim-a"); err != nil {
		t.Fatal(err)
	}
	if mpsstandin.Running(server) {
		t.Errorf("MPS server %d still runs", server)
	}
	if pids := mpsstandin.ProcessesUnder(m.Root); len(pids) != 0 {
		t.Errorf("processes of the daemon remain: %v", pids)
	}
}

// TestMPSStopKillsServersOfAKilledDaemon: a control daemon killed outright
// leaves its server holding GPU memory; stopping the daemon kills it.
func TestMPSStopKillsServersOfAKilledDaemon(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1"}); err != nil {
		t.Fatal(err)
	}
	answer, err := m.Query(ctx, "claim-a", "start_server -uid 1000")
	if err != nil {
		t.Fatal(err)
	}
	server, _ := strconv.Atoi(answer)
	if err := unix.Kill(daemonPID(t, m, "claim-a"), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx, "claim-a"); err != nil {
		t.Fatal(err)
	}
	if mpsstandin.Running(server) {
		t.Errorf("MPS server %d still runs", server)
	}
}

// TestMPSUntrustedPipeDirectory: a container that has the pipe directory
// mounted can put anything there. Whatever it puts, the plugin neither
// blocks, nor reads without bound, nor kills or commands anything but the
// claim's own daemon, and other daemons start meanwhile.
func TestMPSUntrustedPipeDirectory(t *testing.T) {
	for name, plant := range map[string]func(t *testing.T, pipe string, other int, otherControl string){
		"FIFO as PID file": func(t *testing.T, pipe string, _ int, _ string) {
			replace(t, filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error { return unix.Mkfifo(p, 0o644) })
		},
		"PID file linked to /dev/zero": func(t *testing.T, pipe string, _ int, _ string) {
			replace(t, filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error { return os.Symlink("/dev/zero", p) })
		},
		"another claim's daemon in the PID file": func(t *testing.T, pipe string, other int, _ string) {
			replace(t, filepath.Join(pipe, mpsstandin.PIDFile), func(p string) error {
				return os.WriteFile(p, []byte(strconv.Itoa(other)+"\n"), 0o644)
			})
		},
		"control linked to another claim's socket": func(t *testing.T, pipe string, _ int, otherControl string) {
			replace(t, filepath.Join(pipe, "control"), func(p string) error { return os.Symlink(otherControl, p) })
		},
		"FIFO as control": func(t *testing.T, pipe string, _ int, _ string) {
			replace(t, filepath.Join(pipe, "control"), func(p string) error { return unix.Mkfifo(p, 0o644) })
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			m := standIn(t)
			m.StartTimeout = 2 * time.Second
			other := Daemon{ID: "other", GPUUUID: "GPU-1", ActiveThreadPercentage: 50}
			attacker := Daemon{ID: "attacker", GPUUUID: "GPU-1", ActiveThreadPercentage: 10}
			for _, d := range []Daemon{other, attacker} {
				if err := m.Start(ctx, d); err != nil {
					t.Fatal(err)
				}
			}
			otherPID := daemonPID(t, m, other.ID)
			pipe := DaemonDirs(m.Root, attacker.ID).Pipe
			otherControl := filepath.Join(DaemonDirs(m.Root, other.ID).Pipe, "control")

			done := make(chan error, 1)
			go func() {
				// What the plugin does with the attacker's daemon: list,
				// stop it, start it again after it died, stop it for good.
				plant(t, pipe, otherPID, otherControl)
				_, err := m.List(ctx)
				if err == nil {
					err = m.Stop(ctx, attacker.ID)
				}
				if err == nil {
					err = m.Start(ctx, attacker)
				}
				if err == nil {
					var pid int
					if pid, err = readPID(m, attacker.ID); err != nil {
						done <- err
						return
					}
					_ = unix.Kill(pid, unix.SIGKILL)
					plant(t, pipe, otherPID, otherControl)
					_ = m.Start(ctx, attacker) // may fail: the container broke its own daemon
					err = m.Stop(ctx, attacker.ID)
				}
				done <- err
			}()
			// Other claims are served meanwhile.
			if err := m.Start(ctx, Daemon{ID: "bystander", GPUUUID: "GPU-2"}); err != nil {
				t.Errorf("another daemon could not start meanwhile: %v", err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("handling the attacker's daemon: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("handling the attacker's daemon did not return")
			}
			if !mpsstandin.Running(otherPID) {
				t.Fatal("the other claim's daemon was killed")
			}
			if got, err := m.Query(ctx, other.ID, "get_default_active_thread_percentage"); err != nil || got != "50.0" {
				t.Errorf("the other claim's daemon = %q, %v; want its own 50.0", got, err)
			}
			if n := starts(t, m, other.ID); n != 1 {
				t.Errorf("the other claim's daemon started %d times, want 1", n)
			}
		})
	}
}

// replace puts what create makes at path, as a container would.
func replace(t *testing.T, path string, create func(string) error) {
	_ = os.Remove(path)
	if err := create(path); err != nil && !strings.Contains(err.Error(), "exists") {
		t.Error(err)
	}
}

// TestMPSControlReachedDespiteManyFiles: the plugin looks at a bounded
// number of the pipe directory's names, but a container that adds
// thousands does not cut it off from its daemon's control socket.
func TestMPSControlReachedDespiteManyFiles(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	m := standIn(t)
	if err := m.Start(ctx, Daemon{ID: "claim-a", GPUUUID: "GPU-1", ActiveThreadPercentage: 30}); err != nil {
		t.Fatal(err)
	}
	pipe := DaemonDirs(m.Root, "claim-a").Pipe
	for i := range 4 * maxPipeEntries {
		if err := os.WriteFile(filepath.Join(pipe, "f"+strconv.Itoa(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := m.Query(ctx, "claim-a", "get_default_active_thread_percentage"); err != nil || got != "30.0" {
		t.Errorf("query = %q, %v; want 30.0", got, err)
	}
}
