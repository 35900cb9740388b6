package imagebuild

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// A Lock is the set of Debian packages, by name, version, architecture and
// SHA-256, that an image build may take files from (hack/image/debian.lock).
type Lock []Package

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ParseLock reads a lock: one package a line, "name version arch sha256";
// blank lines and lines starting with # are comments.
func ParseLock(r io.Reader) (Lock, error) {
	var l Lock
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 || !sha256Hex.MatchString(f[3]) {
			return nil, fmt.Errorf("line %d: want \"package version architecture sha256\", got %q", n, line)
		}
		l = append(l, Package{Name: f[0], Version: f[1], Arch: f[2], SHA256: f[3]})
	}
	return l, sc.Err()
}

// ReadLock reads the lock file at name.
func ReadLock(name string) (Lock, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := ParseLock(f)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return l, nil
}

// Find returns the package of the lock named name for the Debian
// architecture arch.
func (l Lock) Find(name, arch string) (Package, error) {
	for _, p := range l {
		if p.Name == name && p.Arch == arch {
			return p, nil
		}
	}
	return Package{}, fmt.Errorf("the lock records no %s for %s: run make image-lock IMAGE_ARCHS=%s", name, arch, arch)
}

// Format writes the lock, sorted, under a header saying how to refresh it.
func (l Lock) Format(w io.Writer) error {
	s := append(Lock(nil), l...)
	sort.Slice(s, func(i, j int) bool {
		if s[i].Arch != s[j].Arch {
			return s[i].Arch < s[j].Arch
		}
		return s[i].Name < s[j].Name
	})
	b := &strings.Builder{}
	b.WriteString("# Debian packages the product image takes files from (glibc for the cgo kubelet\n" +
		"# plugin), by version and SHA-256 of the .deb: `make image` refuses any other.\n" +
		"# Refresh with `make image-lock` (apt-get download of the versions apt serves).\n" +
		"# package version architecture sha256\n")
	for _, p := range s {
		fmt.Fprintf(b, "%s %s %s %s\n", p.Name, p.Version, p.Arch, p.SHA256)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Refresh downloads the version apt serves now of each package the image
// needs for each Go architecture in goarchs, keeps the .debs in cacheDir and
// returns the lock that records them.
func Refresh(goarchs []string, cacheDir string) (Lock, error) {
	var l Lock
	for _, goarch := range goarchs {
		pl, err := platformOf(goarch)
		if err != nil {
			return nil, err
		}
		for _, name := range pl.packageNames() {
			if err := os.MkdirAll(cacheDir, 0o755); err != nil {
				return nil, err
			}
			tmp, err := download(name+":"+pl.debArch, cacheDir)
			if err != nil {
				return nil, err
			}
			p, err := DebControl(tmp)
			if err == nil && (p.Name != name || p.Arch != pl.debArch) {
				err = fmt.Errorf("apt-get download %s:%s gave %s", name, pl.debArch, p)
			}
			if err == nil {
				p.SHA256, err = fileSHA256(tmp)
			}
			if err == nil {
				err = os.Rename(tmp, filepath.Join(cacheDir, p.fileName()))
			}
			os.RemoveAll(filepath.Dir(tmp))
			if err != nil {
				return nil, err
			}
			l = append(l, p)
		}
	}
	return l, nil
}
