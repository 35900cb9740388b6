// Command image writes Tessera's product image as an OCI image-layout tarball
// without a container engine (make image), and refreshes the lock of the
// Debian packages it takes glibc from (make image-lock).
//
//	go run ./hack/image build -name ghcr.io/tessera-gpu/tessera:0.1.0 -out _output/image/tessera.oci.tar \
//	    -bin /dra-kubelet-plugin=_output/image/bin/dra-kubelet-plugin -bin /dra-controller=... \
//	    -label org.opencontainers.image.version=0.1.0
//	go run ./hack/image lock -archs amd64
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tessera-gpu/tessera/hack/image/imagebuild"
)

// pairs is a repeatable key=value flag.
type pairs map[string]string

func (p pairs) String() string { return fmt.Sprint(map[string]string(p)) }

func (p pairs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	p[k] = v
	return nil
}

func defaultCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "tessera", "debs")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: image build|lock [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "build":
		err = build(os.Args[2:])
	case "lock":
		err = lock(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: want build or lock", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func build(args []string) error {
	fs := flag.NewFlagSet("build", flag.ExitOnError)
	name := fs.String("name", "", "image name, registry/repository:tag")
	out := fs.String("out", "_output/image/tessera.oci.tar", "the OCI archive to write")
	lockFile := fs.String("lock", "hack/image/debian.lock", "the Debian package lock")
	cache := fs.String("deb-cache", defaultCache(), "where .debs are downloaded and reused")
	goarch := fs.String("goarch", runtime.GOARCH, "the binaries' architecture")
	epoch := fs.String("epoch", os.Getenv("SOURCE_DATE_EPOCH"), "creation time and mtimes, seconds since 1970 (the commit time); empty: 0")
	bins, labels := pairs{}, pairs{}
	fs.Var(bins, "bin", "path-in-image=file, repeatable")
	fs.Var(labels, "label", "config label key=value, repeatable")
	_ = fs.Parse(args)
	if *name == "" || len(bins) == 0 {
		return fmt.Errorf("build needs -name and at least one -bin")
	}
	secs := int64(0)
	if *epoch != "" {
		var err error
		if secs, err = strconv.ParseInt(*epoch, 10, 64); err != nil {
			return fmt.Errorf("-epoch %q: %w", *epoch, err)
		}
	}
	created := time.Unix(secs, 0).UTC()
	l, err := imagebuild.ReadLock(*lockFile)
	if err != nil {
		return err
	}
	contents := map[string][]byte{}
	for p, f := range bins {
		if contents[p], err = os.ReadFile(f); err != nil {
			return err
		}
	}
	img, err := imagebuild.Build(imagebuild.Options{
		GoArch: *goarch, Binaries: contents, Lock: l, DebCache: *cache, Created: created, Labels: labels,
	})
	if err != nil {
		return err
	}
	digest, err := imagebuild.WriteArchiveFile(*out, img, *name, created)
	if err != nil {
		return err
	}
	fmt.Printf("%s %s %s\n", *name, digest, *out)
	return nil
}

func lock(args []string) error {
	fs := flag.NewFlagSet("lock", flag.ExitOnError)
	lockFile := fs.String("lock", "hack/image/debian.lock", "the Debian package lock to write")
	cache := fs.String("deb-cache", defaultCache(), "where .debs are downloaded and kept")
	archs := fs.String("archs", runtime.GOARCH, "comma-separated GOARCHs to lock")
	_ = fs.Parse(args)
	l, err := imagebuild.Refresh(strings.Split(*archs, ","), *cache)
	if err != nil {
		return err
	}
	f, err := os.Create(*lockFile)
	if err != nil {
		return err
	}
	if err := l.Format(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range l {
		fmt.Printf("%s %s\n", p, p.SHA256)
	}
	return nil
}
