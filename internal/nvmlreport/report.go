// Package nvmlreport prints what Tessera's discovery sees on a node's GPUs
// and compares each GPU, line by line, with the mock's model of its product
// (nvmlmock), which every test of the node side runs on. It is the first
// thing to run on a real GPU: a difference that matters means the tests
// prove less than they seem to. It only reads: it calls no NVML function
// that changes a GPU.
package nvmlreport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	tnvml "github.com/tessera-gpu/tessera/internal/nvml"
	"github.com/tessera-gpu/tessera/internal/nvml/migprofile"
	"github.com/tessera-gpu/tessera/internal/nvml/nvmlmock"
	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// Write prints the report on lib's GPUs to w and returns the number of
// differences that matter (lines marked Differs, lost GPUs, products the
// mocks do not model). opts are the publication's partition options.
func Write(ctx context.Context, w io.Writer, lib tnvml.Library, opts partition.Options) (int, error) {
	r := &report{w: w}
	node, err := lib.Discover(ctx)
	if err := tnvml.Usable(err); err != nil {
		return 0, fmt.Errorf("discover GPUs: %w", err)
	}
	r.printf("node: NVIDIA driver %s, CUDA %s, %d GPUs discovered\n", node.DriverVersion, node.CUDADriverVersion, len(node.GPUs))
	var partial *tnvml.PartialError
	if errors.As(err, &partial) {
		for _, index := range slices.Sorted(maps.Keys(partial.Failed)) {
			r.line(Line{Differs, fmt.Sprintf("GPU %d not discovered: %v", index, partial.Failed[index])})
		}
	}
	for _, gpu := range node.GPUs {
		if err := r.gpu(ctx, lib, gpu, opts); err != nil {
			return r.differences, err
		}
	}
	r.printf("%d differences that matter\n", r.differences)
	return r.differences, r.err
}

type report struct {
	w           io.Writer
	differences int
	err         error
}

func (r *report) printf(format string, args ...any) {
	if r.err == nil {
		_, r.err = fmt.Fprintf(r.w, format, args...)
	}
}

func (r *report) line(l Line) {
	if l.Mark == Differs {
		r.differences++
	}
	r.printf("  %s\n", l)
}

func (r *report) gpu(ctx context.Context, lib tnvml.Library, gpu inventory.GPU, opts partition.Options) error {
	r.printf("GPU %d: minor %d, %s, %q, %s, CUDA compute capability %s, %s, %d SMs, PCI %s\n",
		gpu.Index, gpu.Minor, gpu.UUID, gpu.ProductName, gpu.Architecture, gpu.CUDAComputeCapability, mib(gpu.MemoryBytes), gpu.Multiprocessors, orNone(gpu.PCIBusID))
	mode, err := lib.MIGMode(ctx, gpu.Index)
	if err != nil {
		return fmt.Errorf("GPU %d: %w", gpu.Index, err)
	}
	r.printf("  MIG: capable %s, mode %s, pending %s, switches without a reset %s\n",
		yesNo(gpu.MIG.Capable), onOff(mode.Enabled), onOff(mode.PendingEnabled), yesNo(gpu.MIG.ToggleWithoutReset))
	if mode.Enabled {
		instances, err := lib.MIGDevices(ctx, gpu.Index)
		if err != nil {
			return fmt.Errorf("GPU %d: %w", gpu.Index, err)
		}
		r.printf("  MIG instances: %d\n", len(instances))
		for _, m := range instances {
			r.printf("    GPU instance %d: profile %d at %d+%d, compute instance %d, %s\n",
				m.GPUInstanceID, m.ProfileID, m.Placement.Start, m.Placement.Size, m.ComputeInstanceID, orNone(m.UUID))
		}
		r.nvmlNames(ctx, lib, gpu)
	}
	model, ok := modelOf(gpu.ProductName)
	if !ok {
		r.line(Line{Differs, fmt.Sprintf("no mock models %q: Tessera's tests do not cover this GPU", gpu.ProductName)})
		return nil
	}
	reference, err := modelGPU(ctx, model)
	if err != nil {
		return err
	}
	r.printf("  compared with the mock model %s:\n", model.Name)
	for _, l := range Compare(gpu, reference, opts) {
		r.line(l)
	}
	return nil
}

// nvmlNames compares NVML's own profile names (MIG mode on) with Tessera's
// table, which discovery publishes whatever the mode.
func (r *report) nvmlNames(ctx context.Context, lib tnvml.Library, gpu inventory.GPU) {
	namer, ok := lib.(tnvml.ProfileNamer)
	if !ok {
		return
	}
	names, err := namer.NVMLProfileNames(ctx, gpu.Index)
	if err != nil {
		r.line(Line{Differs, fmt.Sprintf("NVML's MIG profile names: %v", err)})
		return
	}
	table, _ := migprofile.Names(gpu.ProductName)
	for _, id := range slices.Sorted(maps.Keys(names)) {
		switch want, known := table[id]; {
		case !known:
			r.line(Line{Differs, fmt.Sprintf("NVML names MIG profile %d %q; Tessera's table has no name for it", id, names[id])})
		case want != names[id]:
			r.line(Line{Differs, fmt.Sprintf("NVML names MIG profile %d %q; Tessera's table (published) %q", id, names[id], want)})
		default:
			r.line(Line{Same, fmt.Sprintf("NVML names MIG profile %d %q, as Tessera's table", id, want)})
		}
	}
}

// modelOf returns the mock model of a product.
func modelOf(product string) (nvmlmock.Model, bool) {
	for _, name := range slices.Sorted(maps.Keys(nvmlmock.Models)) {
		if m := nvmlmock.Models[name]; m.GPU.Name == product {
			return m, true
		}
	}
	return nvmlmock.Model{}, false
}

// modelGPU discovers one GPU of the model through a mock of its own, by
// the same discovery code as the real GPU.
func modelGPU(ctx context.Context, model nvmlmock.Model) (inventory.GPU, error) {
	lib, err := tnvml.Open(tnvml.Backend{Mock: model.Name, Count: 1, Seed: "nvml-report"})
	if err != nil {
		return inventory.GPU{}, fmt.Errorf("open the mock model %s: %w", model.Name, err)
	}
	defer func() { _ = lib.Shutdown() }()
	node, err := lib.Discover(ctx)
	if err != nil || len(node.GPUs) != 1 {
		return inventory.GPU{}, fmt.Errorf("discover the mock model %s: %d GPUs, %w", model.Name, len(node.GPUs), err)
	}
	return node.GPUs[0], nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(none)"
	}
	return s
}
