package imagebuild

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// A Package is one Debian package the image takes files from, as the lock
// records it: the build refuses any .deb whose SHA-256 differs.
type Package struct {
	Name    string
	Version string
	Arch    string // Debian architecture: amd64, arm64
	SHA256  string // of the .deb file
}

func (p Package) String() string { return p.Name + " " + p.Version + " (" + p.Arch + ")" }

// fileName is the name apt-get download gives the .deb (an epoch's colon is
// escaped as %3a).
func (p Package) fileName() string {
	return p.Name + "_" + strings.ReplaceAll(p.Version, ":", "%3a") + "_" + p.Arch + ".deb"
}

// Fetch returns the path of p's .deb under dir, downloading it with
// `apt-get download` when dir lacks a copy whose checksum matches the lock.
// A download whose checksum differs is refused and removed: the package
// served under that version is not the one the lock recorded.
func Fetch(p Package, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create the .deb cache %s: %w", dir, err)
	}
	dst := filepath.Join(dir, p.fileName())
	if sum, err := fileSHA256(dst); err == nil && sum == p.SHA256 {
		return dst, nil
	}
	tmp, err := download(p.Name+":"+p.Arch+"="+p.Version, dir)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", p, err)
	}
	defer os.RemoveAll(filepath.Dir(tmp))
	sum, err := fileSHA256(tmp)
	if err != nil {
		return "", err
	}
	if sum != p.SHA256 {
		return "", fmt.Errorf("package %s: the .deb's SHA-256 is %s, the lock records %s: refusing it (run make image-lock only if this version was meant to change)", p, sum, p.SHA256)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", fmt.Errorf("keep %s in the cache: %w", p, err)
	}
	return dst, nil
}

// download runs `apt-get download spec` in a fresh directory under dir and
// returns the one .deb it wrote.
func download(spec, dir string) (string, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", fmt.Errorf("%w: apt-get is not installed; the image takes glibc from Debian's packages", ErrNoApt)
	}
	tmp, err := os.MkdirTemp(dir, "download-")
	if err != nil {
		return "", err
	}
	// apt drops privileges to _apt, which cannot write a root-owned temp dir.
	_ = os.Chmod(tmp, 0o777)
	cmd := exec.Command("apt-get", "download", "-q", spec)
	cmd.Dir = tmp
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("%w: apt-get download %s: %w: %s", ErrNoApt, spec, err, strings.TrimSpace(out.String()))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("apt-get download %s wrote %d .deb files, want 1", spec, len(debs))
	}
	return debs[0], nil
}

// ErrNoApt marks a failure to reach Debian's packages through apt-get (not
// installed, no package lists, no network), as opposed to a checksum refusal.
var ErrNoApt = errors.New("Debian's packages are unreachable")

func fileSHA256(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// A DebFile is one entry of a package's data archive.
type DebFile struct {
	Mode     int64  // permission bits
	Data     []byte // a regular file's contents
	Linkname string // a symbolic link's target; empty for a regular file
}

// ReadDeb returns the entries of the .deb at name whose paths (absolute, as
// installed: /lib/x86_64-linux-gnu/libc.so.6) are in want, and fails when one
// is missing: a package that moved a file must not silently ship without it.
func ReadDeb(name string, want []string) (map[string]DebFile, error) {
	data, err := debMember(name, "data.tar")
	if err != nil {
		return nil, err
	}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w] = true
	}
	got := map[string]DebFile{}
	tr := tar.NewReader(data)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read the data archive of %s: %w", name, err)
		}
		p := path.Clean("/" + h.Name)
		if !wanted[p] {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg:
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, fmt.Errorf("read %s from %s: %w", p, name, err)
			}
			got[p] = DebFile{Mode: h.Mode & 0o777, Data: b}
		case tar.TypeSymlink:
			got[p] = DebFile{Mode: 0o777, Linkname: h.Linkname}
		default:
			return nil, fmt.Errorf("%s in %s is neither a file nor a symbolic link", p, name)
		}
	}
	var missing []string
	for _, w := range want {
		if _, ok := got[w]; !ok {
			missing = append(missing, w)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s lacks %s", name, strings.Join(missing, ", "))
	}
	return got, nil
}

// DebControl returns the Package, Version and Architecture fields of the .deb
// at name.
func DebControl(name string) (Package, error) {
	r, err := debMember(name, "control.tar")
	if err != nil {
		return Package{}, err
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err != nil {
			return Package{}, fmt.Errorf("find the control file of %s: %w", name, err)
		}
		if path.Clean(h.Name) != "control" {
			continue
		}
		var p Package
		sc := bufio.NewScanner(tr)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			switch k {
			case "Package":
				p.Name = strings.TrimSpace(v)
			case "Version":
				p.Version = strings.TrimSpace(v)
			case "Architecture":
				p.Arch = strings.TrimSpace(v)
			}
		}
		return p, sc.Err()
	}
}

// debMember returns the decompressed contents of the ar member of the .deb
// at name whose name starts with prefix (data.tar.xz, control.tar.zst...).
// A .deb is an ar archive (deb(5)): the "!<arch>\n" magic, then members, each
// a 60-byte header (name 16, date 12, uid 6, gid 6, mode 8, size 10, "`\n")
// and its data padded to an even length.
func debMember(name, prefix string) (io.Reader, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	const magic = "!<arch>\n"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return nil, fmt.Errorf("%s is not a .deb (no ar magic)", name)
	}
	for off := len(magic); off+60 <= len(b); {
		hdr := b[off : off+60]
		member := strings.TrimSuffix(strings.TrimSpace(string(hdr[:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 || off+60+int(size) > len(b) {
			return nil, fmt.Errorf("%s: bad ar header for %q", name, member)
		}
		data := b[off+60 : off+60+int(size)]
		off += 60 + int(size) + int(size%2)
		if !strings.HasPrefix(member, prefix) {
			continue
		}
		switch path.Ext(member) {
		case ".tar":
			return bytes.NewReader(data), nil
		case ".xz":
			r, err := xz.NewReader(bytes.NewReader(data))
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", name, member, err)
			}
			return r, nil
		case ".zst":
			r, err := zstd.NewReader(bytes.NewReader(data))
			if err != nil {
				return nil, fmt.Errorf("%s: %s: %w", name, member, err)
			}
			return r.IOReadCloser(), nil
		default:
			return nil, fmt.Errorf("%s: %s: unsupported compression", name, member)
		}
	}
	return nil, fmt.Errorf("%s has no %s member", name, prefix)
}
