package mpsstandin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/wait"
)

// ProcessesUnder returns the processes whose MPS pipe directory
// (CUDA_MPS_PIPE_DIRECTORY, set by the plugin at launch) is under root.
func ProcessesUnder(root string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if strings.HasPrefix(string(kv), "CUDA_MPS_PIPE_DIRECTORY="+root+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// Running reports whether the process runs (and is no zombie).
func Running(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndex(stat, []byte(") "))
	return i >= 0 && stat[i+2] != 'Z'
}

// EndPlugin kills every process of the daemons under root, as the end of the
// plugin's container does, and waits until they have exited and released
// their daemons' locks. An exiting process drops its environment before its
// files (and locks), so it is waited for until it is a zombie or gone.
func EndPlugin(t testing.TB, root string) {
	t.Helper()
	killed := ProcessesUnder(root)
	for _, pid := range killed {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		for _, pid := range killed {
			if Running(pid) {
				return false, nil
			}
		}
		return len(ProcessesUnder(root)) == 0, nil
	})
	if err != nil {
		t.Errorf("processes of MPS daemons remain: %v", ProcessesUnder(root))
	}
	WaitLocksFree(t, root)
}
