package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
)

// trackerPanic is how kube-scheduler v1.37.2 dies in the ResourceSlice
// tracker (seen in a CI run's kube-scheduler log), abridged.
const trackerPanic = `panic: runtime error: index out of range [1] with length 1

goroutine 412 [running]:
k8s.io/dynamic-resource-allocation/resourceslice/tracker.(*Tracker).syncSlice(0xc000a1e000, {0x2f1c8e8, 0xc0004f2d20}, {0xc00123a000, 0x21}, 0x1)
	k8s.io/dynamic-resource-allocation@v0.37.2/resourceslice/tracker/tracker.go:551 +0x1a5
`

// crashOnce writes a script that, on its first run, writes log to stderr and
// exits 2, and on later runs sleeps until killed.
func crashOnce(t *testing.T, log string) string {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "crash.txt")
	if err := os.WriteFile(logFile, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "component.sh")
	body := "#!/bin/sh\nif [ ! -e " + dir + "/ran ]; then touch " + dir + "/ran; cat " + logFile + " >&2; exit 2; fi\nexec sleep 60\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script
}

func waitRestarts(t *testing.T, cp *ControlPlane, n int) []Restart {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if r := cp.Restarts(); len(r) >= n {
			return r
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("want %d restarts within 20s, have %d", n, len(cp.Restarts()))
	return nil
}

func TestSupervisedComponentRestarts(t *testing.T) {
	restartDelay = 10 * time.Millisecond
	t.Cleanup(func() { restartDelay = time.Second })

	for _, tc := range []struct {
		name, component, log string
		known                bool
	}{
		{"the upstream tracker crash", "kube-scheduler", "I1206 starting\n" + trackerPanic, true},
		{"the same crash in tessera-scheduler", "tessera-scheduler", trackerPanic, false},
		{"another panic", "kube-scheduler", "panic: assignment to entry in nil map\n\ngoroutine 1 [running]:\nmain.main()\n", false},
		{"an exit without a panic", "kube-scheduler", "E1206 could not bind\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := &ControlPlane{LogDir: t.TempDir()}
			first, err := cp.startSupervised(klog.NewContext(t.Context(), ktesting.NewLogger(t, ktesting.NewConfig())), tc.component, crashOnce(t, tc.log), nil)
			if err != nil {
				t.Fatal(err)
			}
			r := waitRestarts(t, cp, 1)
			if r[0].KnownUpstream() != tc.known {
				t.Errorf("KnownUpstream() = %v, want %v; restart: %s", r[0].KnownUpstream(), tc.known, r[0])
			}
			if r[0].Err == nil {
				t.Error("the restart does not say how the process ended")
			}
			// The restarted process replaces the crashed one and keeps running.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && cp.Processes()[0] == first {
				time.Sleep(20 * time.Millisecond)
			}
			running := cp.Processes()[0]
			if running == first {
				t.Fatal("the crashed process was not replaced")
			}
			if exited, err := running.Exited(); exited {
				t.Fatalf("the restarted process exited: %v", err)
			}
			var out bytes.Buffer
			if fail := JudgeRestarts(&out, r); fail == tc.known {
				t.Errorf("judged fail=%v for a known=%v restart:\n%s", fail, tc.known, out.String())
			}
			if err := cp.Stop(); err != nil {
				t.Fatal(err)
			}
			if exited, _ := running.Exited(); !exited {
				t.Error("Stop left the restarted process running")
			}
			time.Sleep(50 * time.Millisecond)
			if n := len(cp.Restarts()); n != 1 {
				t.Errorf("Stop was followed by a restart: %d restarts", n)
			}
		})
	}
}

func TestSupervisedRestartsAreBounded(t *testing.T) {
	restartDelay = time.Millisecond
	t.Cleanup(func() { restartDelay = time.Second })
	cp := &ControlPlane{LogDir: t.TempDir()}
	if _, err := cp.startSupervised(klog.NewContext(t.Context(), ktesting.NewLogger(t, ktesting.NewConfig())), "kube-scheduler", "/bin/false", nil); err != nil {
		t.Fatal(err)
	}
	waitRestarts(t, cp, maxRestarts)
	time.Sleep(200 * time.Millisecond)
	if n := len(cp.Restarts()); n != maxRestarts {
		t.Errorf("%d restarts, want at most %d", n, maxRestarts)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cp.Restarts()[0].String(), "kube-scheduler exited") {
		t.Errorf("restart reads %q", cp.Restarts()[0])
	}
}
