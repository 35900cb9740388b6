package nvmlreport

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/tessera-gpu/tessera/pkg/inventory"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// Mark says how a line of the comparison came out.
type Mark string

const (
	// Same means the GPU and the model agree.
	Same Mark = "="
	// Differs means they disagree on something Tessera's tests rely on (MIG
	// geometry, names, what is published): the mock misleads the tests.
	Differs Mark = "!"
	// Note means they disagree on something that varies between boards of one
	// product or is read from NVML at run time (memory size, SMs): worth
	// knowing, not a fault of the model.
	Note Mark = "~"
)

// Line is one line of the comparison.
type Line struct {
	Mark Mark
	Text string
}

func (l Line) String() string { return string(l.Mark) + " " + l.Text }

// Compare compares what discovery found on a GPU with the model's GPU of
// the same product, as discovered from the mock, line by line. seen's MIG
// mode and identity (index, minor, UUID, bus) are state, not model, and are
// not compared.
func Compare(seen, model inventory.GPU, opts partition.Options) []Line {
	var out []Line
	field := func(mark Mark, name, here, there string) {
		if here == there {
			out = append(out, Line{Same, fmt.Sprintf("%s %s", name, here)})
			return
		}
		out = append(out, Line{mark, fmt.Sprintf("%s: here %s, model %s", name, here, there)})
	}
	field(Differs, "architecture", seen.Architecture, model.Architecture)
	field(Note, "brand", seen.Brand, model.Brand)
	field(Note, "CUDA compute capability", seen.CUDAComputeCapability, model.CUDAComputeCapability)
	field(Note, "memory", mib(seen.MemoryBytes), mib(model.MemoryBytes))
	field(Note, "multiprocessors", fmt.Sprint(seen.Multiprocessors), fmt.Sprint(model.Multiprocessors))
	field(Differs, "MIG capable", yesNo(seen.MIG.Capable), yesNo(model.MIG.Capable))
	field(Differs, "MIG mode switches without a reset", yesNo(seen.MIG.ToggleWithoutReset), yesNo(model.MIG.ToggleWithoutReset))

	ids := map[int]bool{}
	for _, p := range seen.MIG.Profiles {
		ids[p.ID] = true
	}
	for _, p := range model.MIG.Profiles {
		ids[p.ID] = true
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		here, inSeen := seen.MIG.Profile(id)
		there, inModel := model.MIG.Profile(id)
		name := fmt.Sprintf("MIG profile %d", id)
		switch {
		case !inModel:
			out = append(out, Line{Differs, fmt.Sprintf("%s: here %s, not in the model", name, describe(here))})
		case !inSeen:
			out = append(out, Line{Differs, fmt.Sprintf("%s: not here, model %s", name, describe(there))})
		default:
			field(Differs, name, describe(here), describe(there))
		}
	}

	// The devices each would publish, with the GPU's own identity and MIG
	// mode given to the model's, so that only the model's geometry counts.
	model.Index, model.Minor, model.MIG.Enabled = seen.Index, seen.Minor, seen.MIG.Enabled
	here, there := deviceNames(seen, opts), deviceNames(model, opts)
	onlyHere, onlyThere := minus(here, there), minus(there, here)
	if len(onlyHere) == 0 && len(onlyThere) == 0 {
		out = append(out, Line{Same, fmt.Sprintf("devices published (%d): %s", len(here), strings.Join(here, " "))})
		return out
	}
	out = append(out, Line{Note, fmt.Sprintf("devices published here (%d): %s", len(here), strings.Join(here, " "))})
	if len(onlyHere) > 0 {
		out = append(out, Line{Differs, "devices published here, not by the model: " + strings.Join(onlyHere, " ")})
	}
	if len(onlyThere) > 0 {
		out = append(out, Line{Differs, "devices the model publishes, not here: " + strings.Join(onlyThere, " ")})
	}
	return out
}

// describe is one profile's geometry in one line.
func describe(p inventory.MIGProfile) string {
	placements := make([]string, len(p.Placements))
	for i, pl := range p.Placements {
		placements[i] = fmt.Sprintf("%d+%d", pl.Start, pl.Size)
	}
	return fmt.Sprintf("%s: %d slices, %d instances, %s, %d SMs, engines CE %d DEC %d ENC %d JPEG %d OFA %d, placements %s",
		p.Name, p.SliceCount, p.InstanceCount, mib(p.MemoryBytes), p.Multiprocessors,
		p.CopyEngines, p.Decoders, p.Encoders, p.JPEGEngines, p.OFAEngines, strings.Join(placements, ","))
}

func deviceNames(gpu inventory.GPU, opts partition.Options) []string {
	var names []string
	for _, d := range partition.Build(gpu, opts).Devices {
		names = append(names, d.Name)
	}
	slices.Sort(names)
	return names
}

// minus returns the names of a that b lacks.
func minus(a, b []string) []string {
	var out []string
	for _, n := range a {
		if !slices.Contains(b, n) {
			out = append(out, n)
		}
	}
	return out
}

func mib(bytes uint64) string { return fmt.Sprintf("%d MiB", bytes>>20) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
