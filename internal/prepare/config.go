package prepare

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	resourceapi "k8s.io/api/resource/v1"

	configapi "github.com/tessera-gpu/tessera/api/config/v1alpha1"
	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/pkg/partition"
)

// resolveConfig returns, for each of the claim's results (by index), the
// configuration that applies to it. DeviceClass configuration applies before
// the claim's own, and within each, later entries win, so that a claim can
// override what its class sets. A config entry that names requests must fit
// their devices; one that names none applies to the devices it fits.
func resolveConfig(alloc *resourceapi.AllocationResult, results []resourceapi.DeviceRequestAllocationResult, kinds []partition.Kind) ([]*configapi.GPUConfig, error) {
	out := make([]*configapi.GPUConfig, len(results))
	type entry struct {
		index int
		cfg   resourceapi.DeviceAllocationConfiguration
	}
	var ordered []entry
	for _, source := range []resourceapi.AllocationConfigSource{resourceapi.AllocationConfigSourceClass, resourceapi.AllocationConfigSourceClaim} {
		for i, c := range alloc.Devices.Config {
			if c.Source == source {
				ordered = append(ordered, entry{i, c})
			}
		}
	}
	classAllowsSharing := make([]bool, len(results))
	for _, e := range ordered {
		opaque := e.cfg.Opaque
		if opaque == nil || opaque.Driver != gpuapi.DriverName {
			continue
		}
		where := fmt.Sprintf("opaque config %d (from %s", e.index, e.cfg.Source)
		if len(e.cfg.Requests) > 0 {
			where += ", requests " + strings.Join(e.cfg.Requests, ",")
		}
		where += ")"
		obj, err := configapi.Decode(opaque.Parameters.Raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		for i, r := range results {
			if !appliesTo(e.cfg.Requests, r.Request) {
				continue
			}
			switch cfg := obj.(type) {
			case *configapi.GPUConfig:
				if kinds[i] == partition.KindMIG {
					if len(e.cfg.Requests) > 0 {
						return nil, fmt.Errorf("%s: a GPUConfig cannot configure MIG device %s of request %s; use a MIGConfig", where, r.Device, r.Request)
					}
					continue
				}
				if err := checkSharingSource(e.cfg.Source, cfg, kinds[i], classAllowsSharing[i]); err != nil {
					return nil, fmt.Errorf("%s, device %s: %w", where, r.Device, err)
				}
				if e.cfg.Source == resourceapi.AllocationConfigSourceClass && cfg.AllowClaimSharing {
					classAllowsSharing[i] = true
				}
				out[i] = cfg
			case *configapi.MIGConfig:
				if kinds[i] != partition.KindMIG {
					if len(e.cfg.Requests) > 0 {
						return nil, fmt.Errorf("%s: a MIGConfig cannot configure device %s of request %s, which is not a MIG partition; use a GPUConfig", where, r.Device, r.Request)
					}
					continue
				}
				// A MIGConfig is decoded and validated; nothing of it
				// changes how a partition is prepared.
			}
		}
	}
	return out, nil
}

// appliesTo reports whether a config naming requests applies to a result's
// request, which may be "<main>/<subrequest>".
func appliesTo(requests []string, request string) bool {
	if len(requests) == 0 {
		return true
	}
	main, _, _ := strings.Cut(request, "/")
	return slices.Contains(requests, request) || slices.Contains(requests, main)
}

// checkSharingSource enforces who may choose how a share of a time-shared
// GPU is shared: its DeviceClass (the admin), not the claim. A claim that
// chose time slicing would escape its MPS limits and change the time slice
// of every other claim on the GPU; a claim's MPS settings could not raise
// its limits (the share's capacity sets them) but are refused alike, so
// that the rule is simple. The class can let its claims choose.
func checkSharingSource(source resourceapi.AllocationConfigSource, cfg *configapi.GPUConfig, kind partition.Kind, classAllows bool) error {
	if source != resourceapi.AllocationConfigSourceClaim {
		return nil
	}
	if cfg.AllowClaimSharing {
		return errors.New("allowClaimSharing is only honoured in a DeviceClass's config, not in a claim's")
	}
	if kind == partition.KindShared && cfg.Sharing != nil && !classAllows {
		return errors.New("the sharing of a time-shared GPU is set by its DeviceClass; this claim's config may not set sharing (a class can allow it with allowClaimSharing)")
	}
	return nil
}
