package realnode

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"runtime"
	"time"
)

// The images the node runs, built from local files and imported into
// containerd, so that nothing is ever pulled.
const (
	// PauseImage is every pod sandbox's image: upstream's pause binary.
	PauseImage = "registry.k8s.io/pause:3.10"
	// TestImage holds a static busybox with its applets in /bin.
	TestImage = "tessera.dev/e2e/busybox:1"
)

// busyboxApplets are linked in the test image's /bin; the tests' commands use
// only these.
var busyboxApplets = []string{
	"sh", "cat", "echo", "env", "grep", "id", "ls", "mount", "sleep", "stat", "test", "touch", "true", "wc", "mkdir", "rm", "sort", "head",
}

// imageFile is one entry of an image's only layer.
type imageFile struct {
	path    string
	mode    int64
	content []byte
	link    string // symlink target, when set
	dir     bool
}

// PauseImageArchive returns an OCI image archive of the pause image, whose only
// file is the static pause binary at pauseBinary.
func PauseImageArchive(pauseBinary string) ([]byte, error) {
	data, err := os.ReadFile(pauseBinary)
	if err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	return imageArchive(PauseImage, []string{"/pause"}, []imageFile{{path: "pause", mode: 0o755, content: data}})
}

// TestImageArchive returns an OCI image archive of the test image: the static
// busybox at busybox, its applets, and the directories a container expects.
func TestImageArchive(busybox string) ([]byte, error) {
	data, err := os.ReadFile(busybox)
	if err != nil {
		return nil, fmt.Errorf("test image: %w", err)
	}
	files := []imageFile{
		{path: "bin", dir: true, mode: 0o755},
		{path: "bin/busybox", mode: 0o755, content: data},
		{path: "tmp", dir: true, mode: 0o1777},
		{path: "etc", dir: true, mode: 0o755},
		{path: "etc/passwd", mode: 0o644, content: []byte("root:x:0:0:root:/:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n")},
		{path: "etc/group", mode: 0o644, content: []byte("root:x:0:\nuser:x:1000:\n")},
	}
	for _, a := range busyboxApplets {
		files = append(files, imageFile{path: "bin/" + a, link: "busybox"})
	}
	return imageArchive(TestImage, []string{"/bin/sh"}, files)
}

// imageArchive writes a single-layer, single-platform OCI image layout as a
// tar stream, named ref through the annotation containerd's import reads.
func imageArchive(ref string, entrypoint []string, files []imageFile) ([]byte, error) {
	layer, err := layerTar(files)
	if err != nil {
		return nil, err
	}
	layerDigest := digestOf(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "Env": []string{"PATH=/bin"}, "WorkingDir": "/"},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return nil, err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layer)},
	})
	if err != nil {
		return nil, err
	}
	manifestDesc := descriptor("application/vnd.oci.image.manifest.v1+json", manifest)
	manifestDesc["platform"] = map[string]string{"architecture": runtime.GOARCH, "os": "linux"}
	manifestDesc["annotations"] = map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": ref,
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []any{manifestDesc},
	})
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	put := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, e := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(config), config},
		{blobPath(manifest), manifest},
		{blobPath(layer), layer},
	} {
		if err := put(e.name, e.data); err != nil {
			return nil, fmt.Errorf("write image %s: %w", ref, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write image %s: %w", ref, err)
	}
	return buf.Bytes(), nil
}

func layerTar(files []imageFile) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.path, Mode: f.mode, ModTime: time.Unix(0, 0)}
		switch {
		case f.dir:
			h.Typeflag, h.Name = tar.TypeDir, f.path+"/"
		case f.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.content))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("image layer %s: %w", f.path, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.content); err != nil {
				return nil, fmt.Errorf("image layer %s: %w", f.path, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(data []byte) string {
	sum := sha256.Sum256(data)
	return path.Join("blobs", "sha256", hex.EncodeToString(sum[:]))
}

func descriptor(mediaType string, data []byte) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digestOf(data), "size": len(data)}
}
