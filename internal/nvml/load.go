package nvml

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/dl"
	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/tessera-gpu/tessera/internal/driverroot"
)

// openReal loads the driver's NVML library from the driver root by its
// path and initialises it. The image carries no driver, so dlopen by bare
// name would find nothing; NVIDIA's DRA driver, too, locates the library
// under the driver root and hands go-nvml its path.
func openReal(root string) (Library, error) {
	path, err := driverroot.New(root).NVML()
	if err != nil {
		return nil, fmt.Errorf("load NVML: %w", err)
	}
	lib, err := newLibrary(gonvml.New(gonvml.WithLibraryPath(path)), realProfileInfoV3, pcieRoot)
	if err != nil {
		if IsReturn(err, gonvml.ERROR_LIBRARY_NOT_FOUND) {
			// go-nvml turns every dlopen failure into LIBRARY_NOT_FOUND;
			// dlopen's own message says what is wrong with the file (wrong
			// architecture, a missing dependency).
			return nil, fmt.Errorf("load NVML from %s: %s", path, dlopenError(path))
		}
		return nil, fmt.Errorf("load NVML from %s: %w", path, err)
	}
	return lib, nil
}

// dlopenError opens and closes the library only to learn why go-nvml
// could not.
func dlopenError(path string) string {
	l := dl.New(path, dl.RTLD_LAZY|dl.RTLD_LOCAL)
	if err := l.Open(); err != nil {
		return err.Error()
	}
	_ = l.Close()
	return "the library opens but NVML reports it not found"
}
