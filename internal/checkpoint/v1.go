package checkpoint

import (
	"encoding/json"
	"fmt"
)

// v1 was the first format: only completed claims, no state and no checksum.
// Every claim in a v1 file was fully prepared.
type v1File struct {
	Version        string             `json:"version"`
	PreparedClaims map[string]v1Claim `json:"preparedClaims"`
}

type v1Claim struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	Devices   []v1Device `json:"devices"`
}

type v1Device struct {
	Request           string   `json:"request"`
	Pool              string   `json:"pool"`
	Device            string   `json:"device"`
	Kind              string   `json:"kind"`
	GPUIndex          int      `json:"gpuIndex"`
	GPUUUID           string   `json:"gpuUUID"`
	GPUMinor          int      `json:"gpuMinor"`
	MIGProfileID      *int     `json:"migProfileID,omitempty"`
	MIGProfile        string   `json:"migProfile,omitempty"`
	PlacementStart    int      `json:"placementStart,omitempty"`
	PlacementSize     int      `json:"placementSize,omitempty"`
	GPUInstanceID     int      `json:"gpuInstanceID,omitempty"`
	ComputeInstanceID int      `json:"computeInstanceID,omitempty"`
	MIGUUID           string   `json:"migUUID,omitempty"`
	CDIDeviceIDs      []string `json:"cdiDeviceIDs"`
}

func decodeV1(data []byte) (*Checkpoint, error) {
	var f v1File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: v1: %w", ErrCorrupt, err)
	}
	cp := New()
	for uid, c := range f.PreparedClaims {
		claim := &Claim{UID: uid, Namespace: c.Namespace, Name: c.Name, State: PrepareCompleted}
		for _, d := range c.Devices {
			dev := Device{
				Request: d.Request, Pool: d.Pool, Device: d.Device, Kind: d.Kind,
				GPUIndex: d.GPUIndex, GPUUUID: d.GPUUUID, GPUMinor: d.GPUMinor,
				CDIDeviceIDs: d.CDIDeviceIDs,
			}
			if d.MIGProfileID != nil {
				dev.MIG = &MIG{
					ProfileID: *d.MIGProfileID, Profile: d.MIGProfile, Created: true,
					GPUInstanceID: d.GPUInstanceID, ComputeInstanceID: d.ComputeInstanceID, UUID: d.MIGUUID,
				}
				dev.MIG.Placement.Start, dev.MIG.Placement.Size = d.PlacementStart, d.PlacementSize
			}
			claim.Devices = append(claim.Devices, dev)
		}
		cp.Claims[uid] = claim
	}
	return cp, nil
}
