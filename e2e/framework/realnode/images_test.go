package realnode

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestImageArchiveIsAnOCILayout checks the archive the way containerd's import
// reads it: index.json names the image and points at a manifest blob whose
// config and layer blobs exist under their digests, and the config's diff ID
// is the (uncompressed) layer's digest.
func TestImageArchiveIsAnOCILayout(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pause")
	if err := os.WriteFile(bin, []byte("\x7fELF pretend"), 0o755); err != nil {
		t.Fatal(err)
	}
	archive, err := PauseImageArchive(bin)
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, archive)
	if string(files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", files["oci-layout"])
	}
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Size        int               `json:"size"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	mustJSON(t, files["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	m := index.Manifests[0]
	if got := m.Annotations["io.containerd.image.name"]; got != PauseImage {
		t.Errorf("image name %q, want %q", got, PauseImage)
	}
	manifest := blob(t, files, m.Digest, m.Size)
	var man struct {
		Config struct {
			Digest string `json:"digest"`
			Size   int    `json:"size"`
		} `json:"config"`
		Layers []struct {
			Digest string `json:"digest"`
			Size   int    `json:"size"`
		} `json:"layers"`
	}
	mustJSON(t, manifest, &man)
	var config struct {
		Config struct{ Entrypoint []string } `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	mustJSON(t, blob(t, files, man.Config.Digest, man.Config.Size), &config)
	if len(man.Layers) != 1 || len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != man.Layers[0].Digest {
		t.Fatalf("layers %v and diff IDs %v do not match", man.Layers, config.RootFS.DiffIDs)
	}
	layer := untar(t, blob(t, files, man.Layers[0].Digest, man.Layers[0].Size))
	if string(layer["pause"]) != "\x7fELF pretend" {
		t.Errorf("layer's /pause = %q, want the binary", layer["pause"])
	}
	if len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/pause" {
		t.Errorf("entrypoint %v, want [/pause]", config.Config.Entrypoint)
	}
}

func blob(t *testing.T, files map[string][]byte, digest string, size int) []byte {
	t.Helper()
	data, ok := files[filepath.Join("blobs", "sha256", digest[len("sha256:"):])]
	if !ok {
		t.Fatalf("no blob %s", digest)
	}
	if len(data) != size || digestOf(data) != digest {
		t.Fatalf("blob %s has size %d and digest %s", digest, len(data), digestOf(data))
	}
	return data
}

func untar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = body
	}
}

func mustJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}
