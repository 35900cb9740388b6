package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/pkg/inventory"
)

func sample() *Checkpoint {
	cp := New()
	cp.Claims["uid-1"] = &Claim{UID: "uid-1", Namespace: "ns", Name: "c1", State: PrepareCompleted, Devices: []Device{{
		Request: "r", Pool: "n", Device: "gpu-0-mig-1g18gb-3", Kind: "mig", GPUIndex: 0, GPUUUID: "GPU-0",
		MIG:          &MIG{ProfileID: 0, Profile: "1g.18gb", Placement: inventory.Placement{Start: 3, Size: 1}, Created: true, GPUInstanceID: 5},
		CDIDeviceIDs: []string{"gpu.tessera.dev/claim=uid-1-gpu-0-mig-1g18gb-3"},
	}}}
	cp.Claims["uid-2"] = &Claim{UID: "uid-2", Namespace: "ns", Name: "c2", State: PrepareStarted, Devices: []Device{{
		Request: "r", Pool: "n", Device: "gpu-1-shared", Kind: "shared", GPUIndex: 1,
		Share:   &Share{ShareID: "s1", MemoryBytes: 1 << 30, Compute: 20},
		Sharing: &Sharing{Strategy: "MPS", ActiveThreadPercentage: 20, PinnedMemoryLimitBytes: 1 << 30},
	}}}
	return cp
}

func TestSaveLoadRoundTrip(t *testing.T) {
	for name, want := range map[string]*Checkpoint{
		"empty":  New(),
		"claims": sample(),
	} {
		t.Run(name, func(t *testing.T) {
			s, err := NewStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Save(want); err != nil {
				t.Fatal(err)
			}
			got, err := s.Load()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Load after Save (-want +got):\n%s", diff)
			}
			entries, _ := os.ReadDir(filepath.Dir(s.Path()))
			for _, e := range entries {
				if e.Name() != FileName && e.Name() != JournalName {
					t.Errorf("state directory holds %s; want only the checkpoint and its journal (no temp files left)", e.Name())
				}
			}
		})
	}
}

func TestLoadMissingIsEmpty(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(New(), got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestUpgradeV1 reads a checkpoint written by the v1 format and checks that
// every claim in it is a completed claim with its devices, and that saving
// writes v2 that reads back the same.
func TestUpgradeV1(t *testing.T) {
	data, err := os.ReadFile("testdata/v1.json")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := NewStore(dir)
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := New()
	want.Claims["0b9c7a5e-1111-4c1e-9d8e-000000000001"] = &Claim{
		UID: "0b9c7a5e-1111-4c1e-9d8e-000000000001", Namespace: "team-a", Name: "train", State: PrepareCompleted,
		Devices: []Device{{Request: "gpu", Pool: "node-1", Device: "gpu-0", Kind: "gpu", GPUUUID: "GPU-11111111-2222-3333-4444-555555555555",
			CDIDeviceIDs: []string{"gpu.tessera.dev/claim=0b9c7a5e-1111-4c1e-9d8e-000000000001-gpu-0"}}},
	}
	want.Claims["0b9c7a5e-1111-4c1e-9d8e-000000000002"] = &Claim{
		UID: "0b9c7a5e-1111-4c1e-9d8e-000000000002", Namespace: "team-b", Name: "infer", State: PrepareCompleted,
		Devices: []Device{{Request: "mig", Pool: "node-1", Device: "gpu-1-mig-1g18gb-3", Kind: "mig", GPUIndex: 1, GPUMinor: 1,
			GPUUUID: "GPU-66666666-2222-3333-4444-555555555555",
			MIG: &MIG{ProfileID: 0, Profile: "1g.18gb", Placement: inventory.Placement{Start: 3, Size: 1}, Created: true,
				GPUInstanceID: 7, UUID: "MIG-aaaaaaaa-2222-3333-4444-555555555555"},
			CDIDeviceIDs: []string{"gpu.tessera.dev/claim=0b9c7a5e-1111-4c1e-9d8e-000000000002-gpu-1-mig-1g18gb-3"}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("upgraded v1 (-want +got):\n%s", diff)
	}
	if err := s.Save(got); err != nil {
		t.Fatal(err)
	}
	again, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, again); diff != "" {
		t.Errorf("v1 saved as v2 (-want +got):\n%s", diff)
	}
}

func TestLoadRejects(t *testing.T) {
	valid, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(string(valid))
	for i := range tampered {
		if string(tampered[i:i+5]) == "uid-1" {
			copy(tampered[i:], "uid-9")
			break
		}
	}
	for name, tc := range map[string]struct {
		data []byte
		want error
	}{
		"truncated":       {valid[:len(valid)/2], ErrCorrupt},
		"not json":        {[]byte("\x00\x01garbage"), ErrCorrupt},
		"no version":      {[]byte(`{"claims":{}}`), ErrCorrupt},
		"checksum":        {tampered, ErrCorrupt},
		"unknown version": {[]byte(`{"version":"v9","claims":{}}`), ErrUnknownVersion},
		"unknown field":   {[]byte(`{"version":"v2","checksum":0,"claims":null,"extra":1}`), ErrCorrupt},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := NewStore(dir)
			cp, err := s.Load()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Load() = %v, %v; want error %v", cp, err, tc.want)
			}
			if cp != nil {
				t.Errorf("Load() returned a checkpoint with an error; a caller might act on it")
			}
		})
	}
}

// BenchmarkSave compares, per checkpoint size, one Save as the plugin
// makes it (one claim changed: a synced journal record, with a compaction
// every 64) with the whole-file atomic write that every Save used to be.
func BenchmarkSave(b *testing.B) {
	for _, n := range []int{1, 16, 128} {
		for _, how := range []string{"journal", "whole-file"} {
			b.Run(fmt.Sprintf("claims=%d/%s", n, how), func(b *testing.B) {
				s, _ := NewStore(b.TempDir())
				if _, err := s.Load(); err != nil {
					b.Fatal(err)
				}
				cp := New()
				base := sample().Claims["uid-1"]
				for i := range n {
					c := base.DeepCopy()
					c.UID = fmt.Sprintf("c%d", i)
					cp.Claims[c.UID] = c
				}
				for i := 0; b.Loop(); i++ {
					c := cp.Claims["c0"]
					c.Name = fmt.Sprintf("step-%d", i)
					var err error
					if how == "journal" {
						err = s.Save(cp)
					} else {
						err = s.writeFile(cp)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
