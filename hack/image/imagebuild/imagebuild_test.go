package imagebuild

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const testName = "ghcr.io/tessera-gpu/tessera:0.0.0-test"

// debian downloads the libc6 apt serves now, once for all the tests of the
// package, records it in a lock and reads the image's files from it: the
// image tests need Debian's real package, and skip, saying so, only where
// apt-get cannot reach it.
var debian struct {
	sync.Once
	lock  Lock
	cache string
	files map[string]DebFile
	err   error
}

func debianForTest(t *testing.T) (Lock, string, map[string]DebFile) {
	t.Helper()
	debian.Do(func() {
		debian.cache, debian.err = os.MkdirTemp("", "imagebuild-debs-")
		if debian.err == nil {
			debian.lock, debian.err = Refresh([]string{runtime.GOARCH}, debian.cache)
		}
		if debian.err == nil {
			debian.files, debian.err = DebianFiles(runtime.GOARCH, debian.lock, debian.cache)
		}
	})
	if errors.Is(debian.err, ErrNoApt) {
		t.Skipf("skipping: the image takes glibc from Debian's packages, which apt-get cannot reach here: %v", debian.err)
	}
	if debian.err != nil {
		t.Fatalf("Refresh and DebianFiles: %v", debian.err)
	}
	return debian.lock, debian.cache, debian.files
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debian.cache != "" {
		_ = os.RemoveAll(debian.cache)
	}
	os.Exit(code)
}

func testOptions(t *testing.T) Options {
	_, _, files := debianForTest(t)
	return Options{
		GoArch: runtime.GOARCH,
		// Stand-ins: the image test is about what surrounds the binaries.
		Binaries: map[string][]byte{
			"/dra-kubelet-plugin": []byte("plugin stand-in"),
			"/dra-controller":     []byte("controller stand-in"),
		},
		Debian:  files,
		Created: time.Unix(1796515980, 0).UTC(),
		Labels:  map[string]string{"org.opencontainers.image.version": "0.0.0-test"},
	}
}

// buildArchive builds the image and writes its archive under dir.
func buildArchive(t *testing.T, o Options, dir string) (v1.Hash, string) {
	t.Helper()
	img, err := Build(o)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	name := filepath.Join(dir, "tessera.oci.tar")
	digest, err := WriteArchiveFile(name, img, testName, o.Created)
	if err != nil {
		t.Fatalf("WriteArchiveFile: %v", err)
	}
	return digest, name
}

// readBack reads the archive the way a consumer does: untar it and open it
// with go-containerregistry's OCI layout reader.
func readBack(t *testing.T, archive string) (v1.IndexManifest, v1.Image) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("read %s: %v", archive, err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(time.Unix(1796515980, 0)) {
			t.Errorf("archive entry %s: owner %d:%d, mtime %v; want 0:0 and the commit time", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	dir := t.TempDir()
	img, err := ReadArchive(archive, dir)
	if err != nil {
		t.Fatalf("ReadArchive: %v", err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("the image read back is not valid: %v", err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return *im, img
}

// listing is one line per file of the image: type, mode, owner, path.
func listing(t *testing.T, img v1.Image) ([]string, map[string]string) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	etc := map[string]string{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			line := fmt.Sprintf("%c %04o %d:%d /%s", h.Typeflag, h.Mode, h.Uid, h.Gid, h.Name)
			if h.Linkname != "" {
				line += " -> " + h.Linkname
			}
			out = append(out, line)
			if strings.HasPrefix(h.Name, "etc/") && h.Typeflag == tar.TypeReg {
				b, _ := io.ReadAll(tr)
				etc["/"+h.Name] = string(b)
			}
		}
		_ = rc.Close()
	}
	return out, etc
}

func TestImage(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("skipping: the expected file list is amd64's, this is %s", runtime.GOARCH)
	}
	o := testOptions(t)
	digest, archive := buildArchive(t, o, t.TempDir())

	im, img := readBack(t, archive)
	wantAnnotations := map[string]string{AnnotationRefName: testName, AnnotationContainerdRef: testName}
	if diff := cmp.Diff(wantAnnotations, im.Manifests[0].Annotations); diff != "" {
		t.Errorf("index.json annotations (-want +got):\n%s", diff)
	}
	if im.Manifests[0].Digest != digest {
		t.Errorf("index.json names %s, Build printed %s", im.Manifests[0].Digest, digest)
	}

	files, etc := listing(t, img)
	want := []string{
		"0 0755 0:0 /dra-controller",
		"0 0755 0:0 /dra-kubelet-plugin",
		"5 0755 0:0 /etc/",
		"0 0644 0:0 /etc/group",
		"0 0644 0:0 /etc/passwd",
		"5 0755 0:0 /lib/",
		"5 0755 0:0 /lib/x86_64-linux-gnu/",
		"0 0755 0:0 /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"0 0755 0:0 /lib/x86_64-linux-gnu/libc.so.6",
		"0 0644 0:0 /lib/x86_64-linux-gnu/libdl.so.2",
		"0 0644 0:0 /lib/x86_64-linux-gnu/libm.so.6",
		"0 0644 0:0 /lib/x86_64-linux-gnu/libpthread.so.0",
		"0 0644 0:0 /lib/x86_64-linux-gnu/librt.so.1",
		"5 0755 0:0 /lib64/",
		"2 0777 0:0 /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
		"5 0755 0:0 /usr/",
		"5 0755 0:0 /usr/share/",
		"5 0755 0:0 /usr/share/doc/",
		"5 0755 0:0 /usr/share/doc/libc6/",
		"0 0644 0:0 /usr/share/doc/libc6/copyright",
	}
	if diff := cmp.Diff(want, files); diff != "" {
		t.Errorf("the image's files (-want +got):\n%s", diff)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 0 || len(cf.Config.Cmd) != 0 {
		t.Errorf("config: user %q, entrypoint %q, cmd %q; want 65532:65532 and none", cf.Config.User, cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if !strings.Contains(etc["/etc/passwd"], "\nnonroot:x:65532:65532:") || !strings.Contains(etc["/etc/group"], "\nnonroot:x:65532:") {
		t.Errorf("user 65532 is not nonroot in /etc/passwd and /etc/group:\n%s%s", etc["/etc/passwd"], etc["/etc/group"])
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "0.0.0-test" || cf.Architecture != runtime.GOARCH || cf.OS != "linux" {
		t.Errorf("config: labels %v, platform %s/%s", cf.Config.Labels, cf.OS, cf.Architecture)
	}
}

// Two builds of the same inputs give the same archive, byte for byte; a
// different creation time gives another digest (mtimes are part of it).
func TestImageIsReproducible(t *testing.T) {
	o := testOptions(t)
	d1, a1 := buildArchive(t, o, t.TempDir())
	d2, a2 := buildArchive(t, o, t.TempDir())
	b1, _ := os.ReadFile(a1)
	b2, _ := os.ReadFile(a2)
	if d1 != d2 || !bytes.Equal(b1, b2) {
		t.Errorf("two builds differ: digests %s and %s, archives of %d and %d bytes", d1, d2, len(b1), len(b2))
	}
	o.Created = o.Created.Add(time.Second)
	if d3, _ := buildArchive(t, o, t.TempDir()); d3 == d1 {
		t.Errorf("another creation time gave the same digest %s", d3)
	}
}

// A .deb whose SHA-256 is not the lock's is refused, naming the package; a
// corrupted copy in the cache is not trusted but downloaded again.
func TestDebianFilesRefusesUnlockedDeb(t *testing.T) {
	l, seed, want := debianForTest(t)
	cache := t.TempDir()
	deb := filepath.Join(cache, l[0].fileName())
	b, err := os.ReadFile(filepath.Join(seed, l[0].fileName()))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(deb, b, 0o644); err != nil {
		t.Fatal(err)
	}

	tampered := append(Lock(nil), l...)
	tampered[0].SHA256 = strings.Repeat("0", 64)
	_, err = DebianFiles(runtime.GOARCH, tampered, cache)
	if err == nil || !strings.Contains(err.Error(), "package libc6 ") || !strings.Contains(err.Error(), "refusing it") {
		t.Errorf("DebianFiles with a lock recording another SHA-256: got %v, want a refusal naming libc6", err)
	}

	if err := os.WriteFile(deb, []byte("!<arch>\nnot libc6"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := DebianFiles(runtime.GOARCH, l, cache)
	if err != nil {
		t.Fatalf("DebianFiles over a corrupted cached .deb: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DebianFiles over a corrupted cached .deb (-want +got):\n%s", diff)
	}
	if sum, _ := fileSHA256(deb); sum != l[0].SHA256 {
		t.Errorf("the corrupted cached .deb was not replaced by the locked one")
	}
}

// The repository's lock parses and records libc6 for amd64, the
// architecture make image builds by default here.
func TestRepositoryLock(t *testing.T) {
	l, err := ReadLock("../debian.lock")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Find("libc6", "amd64"); err != nil {
		t.Error(err)
	}
	var b strings.Builder
	if err := l.Format(&b); err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile("../debian.lock")
	if b.String() != string(orig) {
		t.Errorf("hack/image/debian.lock is not as make image-lock writes it:\n%s", b.String())
	}
}

func TestParseLock(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	tests := map[string]struct {
		in      string
		want    Lock
		wantErr string
	}{
		"comments and blank lines": {
			in:   "# header\n\nlibc6 2.36-9+deb12u14 amd64 " + sum + "\n",
			want: Lock{{Name: "libc6", Version: "2.36-9+deb12u14", Arch: "amd64", SHA256: sum}},
		},
		"no checksum": {
			in:      "libc6 2.36-9 amd64\n",
			wantErr: "line 1",
		},
		"checksum not SHA-256": {
			in:      "# x\nlibc6 2.36-9 amd64 abc\n",
			wantErr: "line 2",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseLock(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseLock: got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseLock (-want +got):\n%s", diff)
			}
		})
	}
}

// An archive entry that would land outside the target directory is refused.
func TestUntarRefusesEscapes(t *testing.T) {
	for _, name := range []string{"../evil", "a/../../evil"} {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
			t.Fatal(err)
		}
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "in")
		if err := untar(&b, dir); err == nil || !strings.Contains(err.Error(), "leaves the target directory") {
			t.Errorf("untar %q: got %v, want a refusal", name, err)
		}
	}
}

// A binary cannot take the place of a file or directory the image needs.
func TestBuildRefusesCollisions(t *testing.T) {
	for _, bin := range []string{"/etc/passwd", "/etc", "lib/x86_64-linux-gnu"} {
		o := Options{GoArch: "amd64", Binaries: map[string][]byte{bin: []byte("x")}, Debian: map[string]DebFile{
			"/lib/x86_64-linux-gnu/libc.so.6": {Mode: 0o755, Data: []byte("libc")},
		}}
		if _, err := Build(o); err == nil {
			t.Errorf("Build with a binary at %s: got no error", bin)
		}
	}
}
