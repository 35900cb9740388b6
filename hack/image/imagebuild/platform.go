package imagebuild

import "fmt"

// platform says where Debian puts glibc for one architecture.
type platform struct {
	goarch  string
	debArch string
	triplet string // Debian's multiarch directory
	loader  string // the dynamic loader's file name
	// loaderLink is the loader's path that binaries name as their ELF
	// interpreter (readelf -l): a link in libc6 to the loader.
	loaderLink string
}

var platforms = []platform{
	{goarch: "amd64", debArch: "amd64", triplet: "x86_64-linux-gnu", loader: "ld-linux-x86-64.so.2", loaderLink: "/lib64/ld-linux-x86-64.so.2"},
	{goarch: "arm64", debArch: "arm64", triplet: "aarch64-linux-gnu", loader: "ld-linux-aarch64.so.1", loaderLink: "/lib/ld-linux-aarch64.so.1"},
}

func platformOf(goarch string) (platform, error) {
	for _, p := range platforms {
		if p.goarch == goarch {
			return p, nil
		}
	}
	return platform{}, fmt.Errorf("no image for GOARCH %s: Debian's glibc is mapped for amd64 and arm64 only", goarch)
}

// packageNames are the Debian packages the image takes files from.
func (p platform) packageNames() []string { return []string{"libc6"} }

// glibcFiles are the files of libc6 the image ships. dra-kubelet-plugin needs
// only the loader and libc.so.6 (`ldd` and readelf -d: NEEDED libc.so.6), but
// at start it dlopens the node's libnvidia-ml.so.1 and runs nvidia-smi and
// nvidia-cuda-mps-control from the driver root with this image's loader, and
// NVIDIA's libraries and binaries link libpthread.so.0, libdl.so.2, libm.so.6
// and librt.so.1 as well. Since glibc 2.34 all but libm are stubs of a few KiB
// that forward to libc. The rest of libc6 (NSS modules, gconv, locales,
// ld.so.conf) is not needed: Go resolves names itself and nothing here
// converts charsets. The copyright file is glibc's license, which shipping
// its binaries requires.
func (p platform) glibcFiles() []string {
	dir := "/lib/" + p.triplet + "/"
	return []string{
		dir + p.loader,
		p.loaderLink,
		dir + "libc.so.6",
		dir + "libdl.so.2",
		dir + "libm.so.6",
		dir + "libpthread.so.0",
		dir + "librt.so.1",
		"/usr/share/doc/libc6/copyright",
	}
}
