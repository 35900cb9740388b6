package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/client-go/kubernetes/scheme"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/plugin"
)

// TestSlicesCommand runs `slices` as a user would and decodes its output as
// a YAML stream of resource.k8s.io/v1 ResourceSlices.
func TestSlicesCommand(t *testing.T) {
	tests := map[string]struct {
		args        []string
		wantSlices  int
		wantDevices int
		wantErr     string
	}{
		// A counter slice, then one slice per GPU (withdrawal's layout).
		"8 x H200": {args: []string{"slices", "--nvml=mock:dgxh200", "--node-name=n1"}, wantSlices: 9, wantDevices: 8 * 27},
		// Without withdrawal, the devices packed into slices of 64.
		"8 x H200, packed": {args: []string{"slices", "--nvml=mock:dgxh200", "--node-name=n1", "--withdraw-blocked=false"}, wantSlices: 5, wantDevices: 8 * 27},
		// The A100s are in MIG mode and cannot leave it without a reset:
		// partitions only.
		"2 x A100":      {args: []string{"slices", "--nvml=mock:dgxa100:2", "--node-name=n1"}, wantSlices: 3, wantDevices: 2 * 25},
		"MIG off":       {args: []string{"slices", "--nvml=mock:dgxh100:1", "--node-name=n1", "--disable-mig"}, wantSlices: 2, wantDevices: 2},
		"no node name":  {args: []string{"slices", "--nvml=mock:dgxh200"}, wantErr: "--node-name is required"},
		"bad backend":   {args: []string{"slices", "--nvml=mock:dgx9", "--node-name=n1"}, wantErr: `unknown mock model "dgx9"`},
		"unknown flags": {args: []string{"slices", "--frobnicate"}, wantErr: "unknown flag"},
		// Real NVML is loaded from the driver root by path, and a root
		// without it is named with the paths tried.
		"real NVML, no driver under the root": {
			args:    []string{"slices", "--nvml=real", "--node-name=n1", "--container-driver-root=/nonexistent-driver-root"},
			wantErr: "libnvidia-ml.so.1 not found under driver root /nonexistent-driver-root (tried /nonexistent-driver-root/usr/lib/",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			cmd := newCommand()
			cmd.SetArgs(tc.args)
			cmd.SetOut(&out)
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			docs := strings.Split(strings.TrimPrefix(out.String(), "---\n"), "\n---\n")
			if len(docs) != tc.wantSlices {
				t.Fatalf("%d documents, want %d", len(docs), tc.wantSlices)
			}
			devices := 0
			for _, doc := range docs {
				obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
				if err != nil {
					t.Fatalf("decode: %v\n%s", err, doc)
				}
				slice, ok := obj.(*resourceapi.ResourceSlice)
				if !ok || gvk.GroupVersion() != resourceapi.SchemeGroupVersion {
					t.Fatalf("got %v, want a resource.k8s.io/v1 ResourceSlice", gvk)
				}
				if slice.Spec.Driver != gpuapi.DriverName || slice.Spec.Pool.Name != "n1" {
					t.Errorf("slice %s: driver %q pool %q", slice.Name, slice.Spec.Driver, slice.Spec.Pool.Name)
				}
				devices += len(slice.Spec.Devices)
			}
			if devices != tc.wantDevices {
				t.Errorf("%d devices, want %d", devices, tc.wantDevices)
			}
		})
	}
}

// TestMain lets a test run this binary's command line in a child process.
func TestMain(m *testing.M) {
	if os.Getenv("TESSERA_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestMPSLaunchGivesPrivateShm starts a command the way the plugin starts an
// MPS daemon and checks that what it writes to /dev/shm lands in the
// daemon's directory and not in the node's /dev/shm.
func TestMPSLaunchGivesPrivateShm(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mps-launch needs root to unshare the mount namespace, as the plugin's DaemonSet has")
	}
	shm := t.TempDir()
	name := fmt.Sprintf("tessera-probe-%d", os.Getpid())
	cmd := exec.Command(os.Args[0], "mps-launch", "--shm", shm, "--", "/bin/sh", "-c", "echo ok > /dev/shm/"+name)
	cmd.Env = append(os.Environ(), "TESSERA_TEST_RUN_MAIN=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mps-launch: %v: %s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(shm, name)); err != nil || strings.TrimSpace(string(got)) != "ok" {
		t.Errorf("file in the private /dev/shm = %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join("/dev/shm", name)); !os.IsNotExist(err) {
		_ = os.Remove(filepath.Join("/dev/shm", name))
		t.Errorf("the command wrote to the node's /dev/shm (stat: %v)", err)
	}
}

func TestMPSLaunchNeedsShm(t *testing.T) {
	cmd := newCommand()
	cmd.SetArgs([]string{"mps-launch", "--", "/bin/true"})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--shm is required") {
		t.Errorf("err = %v, want --shm is required", err)
	}
}

// The metrics endpoint is authenticated over TLS unless told otherwise.
func TestMetricsSecureByDefault(t *testing.T) {
	for name, tc := range map[string]struct {
		args   []string
		secure bool
	}{
		"default":  {secure: true},
		"plain":    {args: []string{"--metrics-secure=false"}, secure: false},
		"cert dir": {args: []string{"--metrics-cert-dir=/certs"}, secure: true},
	} {
		t.Run(name, func(t *testing.T) {
			o := &plugin.Config{}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.AddRunFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if got := o.MetricsSecure; got != tc.secure {
				t.Errorf("secure metrics = %v, want %v", got, tc.secure)
			}
		})
	}
}

// Claims' GPU usage is sampled every 10 s unless told otherwise; 0 turns
// the sampling off.
func TestClaimMetricsInterval(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want time.Duration
	}{
		"default":  {want: 10 * time.Second},
		"disabled": {args: []string{"--claim-metrics-interval=0"}, want: 0},
		"set":      {args: []string{"--claim-metrics-interval=1m"}, want: time.Minute},
	} {
		t.Run(name, func(t *testing.T) {
			o := &plugin.Config{}
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			o.AddRunFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if o.ClaimMetricsInterval != tc.want {
				t.Errorf("interval = %v, want %v", o.ClaimMetricsInterval, tc.want)
			}
		})
	}
}
