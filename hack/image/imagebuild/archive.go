package imagebuild

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Annotations of the image's entry in the archive's index.json. ref.name is
// the OCI image layout's name for an entry (image-layout.md); containerd's
// import (`ctr images import`) names the image io.containerd.image.name when
// set, and ref.name otherwise.
const (
	AnnotationRefName       = "org.opencontainers.image.ref.name"
	AnnotationContainerdRef = "io.containerd.image.name"
)

// WriteArchive writes img as an OCI image-layout tarball (oci-layout,
// index.json, blobs/sha256/...) named name (registry/repository:tag) to w,
// with every tar entry in path order, owned by 0:0 and dated created, and
// returns the image's manifest digest.
func WriteArchive(w io.Writer, img v1.Image, name string, created time.Time) (v1.Hash, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			Annotations: map[string]string{AnnotationRefName: name, AnnotationContainerdRef: name},
			Platform:    &v1.Platform{OS: cf.OS, Architecture: cf.Architecture},
		},
	})
	index, err := idx.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	layout, err := json.Marshal(map[string]string{"imageLayoutVersion": "1.0.0"})
	if err != nil {
		return v1.Hash{}, err
	}
	blobs := map[string]func() (io.ReadCloser, int64, error){}
	addBytes := func(h v1.Hash, b []byte) {
		blobs[h.Hex] = func() (io.ReadCloser, int64, error) { return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil }
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	addBytes(digest, manifest)
	config, err := img.RawConfigFile()
	if err != nil {
		return v1.Hash{}, err
	}
	configName, err := img.ConfigName()
	if err != nil {
		return v1.Hash{}, err
	}
	addBytes(configName, config)
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, l := range layers {
		h, err := l.Digest()
		if err != nil {
			return v1.Hash{}, err
		}
		blobs[h.Hex] = func() (io.ReadCloser, int64, error) {
			size, err := l.Size()
			if err != nil {
				return nil, 0, err
			}
			rc, err := l.Compressed()
			return rc, size, err
		}
	}

	tw := tar.NewWriter(w)
	put := func(name string, mode int64, size int64, r io.Reader) error {
		h := &tar.Header{Name: name, Mode: mode, Size: size, ModTime: created, Format: tar.FormatPAX, Typeflag: tar.TypeReg}
		if r == nil {
			h.Typeflag, h.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if r != nil {
			if n, err := io.Copy(tw, r); err != nil || n != size {
				return fmt.Errorf("write %s (%d of %d bytes): %w", name, n, size, err)
			}
		}
		return nil
	}
	if err := put("blobs/", 0o755, 0, nil); err != nil {
		return v1.Hash{}, err
	}
	if err := put("blobs/sha256/", 0o755, 0, nil); err != nil {
		return v1.Hash{}, err
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		rc, size, err := blobs[h]()
		if err != nil {
			return v1.Hash{}, err
		}
		err = put("blobs/sha256/"+h, 0o444, size, rc)
		rc.Close()
		if err != nil {
			return v1.Hash{}, err
		}
	}
	if err := put("index.json", 0o444, int64(len(index)), bytes.NewReader(index)); err != nil {
		return v1.Hash{}, err
	}
	if err := put("oci-layout", 0o444, int64(len(layout)), bytes.NewReader(layout)); err != nil {
		return v1.Hash{}, err
	}
	return digest, tw.Close()
}

// WriteArchiveFile writes the archive to the file name, replacing it only
// once the whole archive is written.
func WriteArchiveFile(name string, img v1.Image, ref string, created time.Time) (v1.Hash, error) {
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return v1.Hash{}, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(name), filepath.Base(name)+".tmp-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.Remove(tmp.Name())
	digest, err := WriteArchive(tmp, img, ref, created)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return v1.Hash{}, err
	}
	return digest, os.Rename(tmp.Name(), name)
}
