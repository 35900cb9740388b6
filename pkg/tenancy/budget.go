package tenancy

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

// Fits reports whether adding an allocation (add) to what the tenant already
// holds (used) stays within its budget; if not, the reason names the tenant
// and every limit it would pass. A tenant without a budget fits always.
func Fits(t *tenancyv1.GPUTenant, used, add Usage) (bool, string) {
	b := t.Spec.Budget
	if b == nil {
		return true, ""
	}
	var over []string
	if b.GPUMemory != nil && add.Memory > 0 && used.Memory+add.Memory > b.GPUMemory.Value() {
		over = append(over, fmt.Sprintf("gpuMemory %s in use + %s requested > budget %s",
			quantity(used.Memory), quantity(add.Memory), b.GPUMemory.String()))
	}
	classes := make([]string, 0, len(add.Devices))
	for c := range add.Devices {
		classes = append(classes, c)
	}
	slices.Sort(classes)
	for _, c := range classes {
		limit, ok := b.Devices[c]
		if ok && add.Devices[c] > 0 && used.Devices[c]+add.Devices[c] > limit {
			over = append(over, fmt.Sprintf("%s devices %d in use + %d requested > budget %d", c, used.Devices[c], add.Devices[c], limit))
		}
	}
	if len(over) == 0 {
		return true, ""
	}
	return false, fmt.Sprintf("GPUTenant %s is over budget: %s", t.Name, strings.Join(over, "; "))
}

func quantity(bytes int64) string {
	return resource.NewQuantity(bytes, resource.BinarySI).String()
}
