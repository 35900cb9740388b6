// Package imagebuild assembles Tessera's product image, an OCI image of the
// two driver binaries and the part of Debian's glibc they need, without a
// container engine, reproducibly: the same binaries, the same locked .debs and
// the same creation time give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the image's default user, distroless's "nonroot": the controller
// runs as it; the chart runs the kubelet plugin as root explicitly.
const User = "65532:65532"

// passwd and group name root and nonroot, so that tools and logs show names
// and a process running as 65532 has a home and a shell entry.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
	group  = "root:x:0:\nnonroot:x:65532:\n"
)

// Options say what goes into the image.
type Options struct {
	// GoArch is the architecture of the binaries (amd64, arm64).
	GoArch string
	// Binaries maps a path in the image (/dra-kubelet-plugin) to its
	// contents, shipped with mode 0755.
	Binaries map[string][]byte
	// Lock records the Debian packages the image may take files from.
	Lock Lock
	// DebCache is the directory .debs are downloaded to and reused from.
	DebCache string
	// Created is the image's creation time and every file's mtime: the commit
	// time (SOURCE_DATE_EPOCH), so that a rebuild gives the same digest.
	Created time.Time
	// Labels are the image config's labels (org.opencontainers.image.*).
	Labels map[string]string
}

// A file is one entry of the image's single layer.
type file struct {
	mode int64
	data []byte
	link string // a symbolic link's target
	dir  bool
}

// Build assembles the image: one layer holding the binaries, glibc's files
// from the locked libc6 and /etc/passwd and /etc/group, and a config that
// runs as User with no entrypoint (the chart names each container's command).
func Build(o Options) (v1.Image, error) {
	pl, err := platformOf(o.GoArch)
	if err != nil {
		return nil, err
	}
	files := map[string]file{
		"/etc/passwd": {mode: 0o644, data: []byte(passwd)},
		"/etc/group":  {mode: 0o644, data: []byte(group)},
	}
	for p, data := range o.Binaries {
		files[path.Clean("/"+p)] = file{mode: 0o755, data: data}
	}
	for _, name := range pl.packageNames() {
		pkg, err := o.Lock.Find(name, pl.debArch)
		if err != nil {
			return nil, err
		}
		deb, err := Fetch(pkg, o.DebCache)
		if err != nil {
			return nil, err
		}
		got, err := ReadDeb(deb, pl.glibcFiles())
		if err != nil {
			return nil, fmt.Errorf("package %s: %w", pkg, err)
		}
		for p, f := range got {
			files[p] = file{mode: f.Mode, data: f.Data, link: f.Linkname}
		}
	}
	layerTar, err := layerTar(files, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("make the layer: %w", err)
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: o.Created},
			CreatedBy: "hack/image: Tessera's driver binaries and glibc from Debian's libc6",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = o.GoArch, "linux"
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		User:       User,
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
		Labels:     o.Labels,
	}
	return mutate.ConfigFile(img, cf)
}

// layerTar writes files, and every directory above them, as a tar stream in
// path order, with mtime created and owner 0:0, so that the same files give
// the same bytes wherever and whenever they are built.
func layerTar(files map[string]file, created time.Time) ([]byte, error) {
	all := map[string]file{}
	for p, f := range files {
		all[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			all[d] = file{mode: 0o755, dir: true}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		f := all[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    f.mode,
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		switch {
		case f.dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case f.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("write %s into the layer: %w", p, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("write %s into the layer: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
