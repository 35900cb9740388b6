package nvmlreport

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/klog/v2/ktesting"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// changes records every call that would change a GPU.
type changes struct {
	mu    sync.Mutex
	calls []string
}

func (c *changes) record(call string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

func (c *changes) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.calls...)
}

var errChange = errors.New("the report changed a GPU")

// readOnly is the Library the plugin uses, refusing and recording each of
// its methods that changes a GPU; it passes on the report's ProfileNamer.
type readOnly struct {
	tnvml.Library
	changes *changes
}

func (r readOnly) SetMIGMode(context.Context, int, bool) error {
	r.changes.record("Library.SetMIGMode")
	return errChange
}

func (r readOnly) CreateMIGDevice(context.Context, int, int, inventory.Placement) (tnvml.MIGDevice, error) {
	r.changes.record("Library.CreateMIGDevice")
	return tnvml.MIGDevice{}, errChange
}

func (r readOnly) DestroyMIGDevice(context.Context, int, int) error {
	r.changes.record("Library.DestroyMIGDevice")
	return errChange
}

func (r readOnly) NVMLProfileNames(ctx context.Context, gpu int) (map[int]string, error) {
	return r.Library.(tnvml.ProfileNamer).NVMLProfileNames(ctx, gpu)
}

// frozen returns a mock of the model with two GPUs, the second in MIG mode
// with one instance (where the model can switch MIG mode), after which
// every call that changes a GPU is refused and recorded, in the Library and
// in NVML beneath it.
func frozen(t *testing.T, model string) (tnvml.Library, *changes) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	s, err := nvmlmock.New(model, 2, "report")
	if err != nil {
		t.Fatal(err)
	}
	lib, err := tnvml.OpenMock(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := lib.SetMIGMode(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if mode, _ := lib.MIGMode(ctx, 1); mode.Enabled {
		if _, err := lib.CreateMIGDevice(ctx, 1, 0, inventory.Placement{Start: 3, Size: 1}); err != nil {
			t.Fatal(err)
		}
	}
	c := &changes{}
	s.ForbidChanges(c.record)
	return readOnly{Library: lib, changes: c}, c
}

// TestReportOnlyReads runs the report on every mock model with NVML
// wrapped so that any call that changes a GPU is refused and recorded: it
// makes none, and finds no difference between a mock and its own model.
func TestReportOnlyReads(t *testing.T) {
	for _, model := range []string{"dgxa100", "dgxh100", "dgxh200", "dgxb200"} {
		t.Run(model, func(t *testing.T) {
			_, ctx := ktesting.NewTestContext(t)
			lib, c := frozen(t, model)
			var out bytes.Buffer
			n, err := Write(ctx, &out, lib, partition.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if calls := c.list(); len(calls) > 0 {
				t.Errorf("the report changed GPUs: %v", calls)
			}
			if n != 0 {
				t.Errorf("%d differences between the mock and its own model:\n%s", n, out.String())
			}
			for _, want := range []string{"GPU 0: minor 0", "GPU 1: minor 1", "compared with the mock model " + model, "= devices published", "0 differences that matter"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("report lacks %q:\n%s", want, out.String())
				}
			}
			if model == "dgxh200" && !strings.Contains(out.String(), "MIG instances: 1") {
				t.Errorf("report lacks GPU 1's MIG instance:\n%s", out.String())
			}
		})
	}
}

// TestForbidChangesCatchesChanges: the wrapping the report's test relies on
// catches changes, in the Library and in NVML beneath it.
func TestForbidChangesCatchesChanges(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	lib, c := frozen(t, "dgxh200")
	_ = lib.SetMIGMode(ctx, 0, true)
	_ = lib.DestroyMIGDevice(ctx, 1, 0)
	inner := lib.(readOnly).Library
	_ = inner.SetMIGMode(ctx, 0, true)
	_, _ = inner.CreateMIGDevice(ctx, 1, 0, inventory.Placement{Start: 0, Size: 1})
	migs, err := inner.MIGDevices(ctx, 1)
	if err != nil || len(migs) != 1 {
		t.Fatalf("MIG devices: %v, %v", migs, err)
	}
	_ = inner.DestroyMIGDevice(ctx, 1, migs[0].GPUInstanceID)
	want := []string{"Library.SetMIGMode", "Library.DestroyMIGDevice", "SetMigMode", "CreateGpuInstanceWithPlacement", "Destroy"}
	if diff := cmp.Diff(want, c.list()); diff != "" {
		t.Errorf("changes caught (-want +got):\n%s", diff)
	}
}
