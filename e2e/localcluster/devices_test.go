package localcluster

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/wait"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	"github.com/tessera-gpu/tessera/internal/testing/builder"
)

// TestEachKindOfDevice runs one pod per kind of device and checks that
// kube-scheduler allocated the right device, that the plugin prepared it through
// gRPC, that the container got that device, and that deleting the pod unprepares it.
func TestEachKindOfDevice(t *testing.T) {
	ns := newNamespace(t)
	tests := map[string]struct {
		request     resourceapi.DeviceRequest
		wantType    string
		wantProfile string
		wantDevice  *regexp.Regexp
		wantMemory  string // consumed capacity of a share
	}{
		"whole GPU": {
			request:    builder.MakeRequest("gpu", gpuapi.ClassGPU).Obj(),
			wantType:   "gpu",
			wantDevice: regexp.MustCompile(`^gpu-\d+$`),
		},
		"MIG 1g.18gb": {
			request:     builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("1g.18gb").Obj(),
			wantType:    "mig",
			wantProfile: "1g.18gb",
			wantDevice:  regexp.MustCompile(`^gpu-\d+-mig-1g18gb-\d+$`),
		},
		"MIG 3g.71gb": {
			request:     builder.MakeRequest("gpu", gpuapi.ClassMIG).Profile("3g.71gb").Obj(),
			wantType:    "mig",
			wantProfile: "3g.71gb",
			wantDevice:  regexp.MustCompile(`^gpu-\d+-mig-3g71gb-\d+$`),
		},
		"share of 20Gi": {
			request:    builder.MakeRequest("gpu", gpuapi.ClassShared).Memory("20Gi").Obj(),
			wantType:   "shared",
			wantDevice: regexp.MustCompile(`^gpu-\d+-shared$`),
			wantMemory: "20Gi",
		},
		"first available prefers MIG over a share": {
			request: builder.FirstAvailable("gpu",
				builder.MakeRequest("mig", gpuapi.ClassMIG).Profile("1g.18gb"),
				builder.MakeRequest("share", gpuapi.ClassShared).Memory("10Gi"),
			),
			wantType:    "mig",
			wantProfile: "1g.18gb",
			wantDevice:  regexp.MustCompile(`^gpu-\d+-mig-1g18gb-\d+$`),
		},
	}
	for _, name := range slices.Sorted(maps.Keys(tests)) {
		tc := tests[name]
		t.Run(name, func(t *testing.T) {
			podName := strings.ReplaceAll(strings.ReplaceAll(strings.ToLower(name), " ", "-"), ".", "")
			createTemplate(t, ns, podName, tc.request)
			pod := createPod(t, ns, podName, podName)
			a := waitAllocated(t, pod)

			results := a.Devices()
			if len(results) != 1 {
				t.Fatalf("claim %s got %d devices, want 1", a.Claim.Name, len(results))
			}
			r := results[0]
			if r.Driver != gpuapi.DriverName || r.Pool != a.Pod.Spec.NodeName {
				t.Errorf("allocated %s/%s/%s on node %s, want driver %s and the node's pool", r.Driver, r.Pool, r.Device, a.Pod.Spec.NodeName, gpuapi.DriverName)
			}
			if !tc.wantDevice.MatchString(r.Device) {
				t.Errorf("allocated device %s, want one matching %s", r.Device, tc.wantDevice)
			}
			attrs := deviceAttributes(t, r.Pool, r.Device)
			if got := stringAttr(attrs, "type"); got != tc.wantType {
				t.Errorf("allocated device %s has type %q, want %q", r.Device, got, tc.wantType)
			}
			if got := stringAttr(attrs, "profile"); tc.wantProfile != "" && got != tc.wantProfile {
				t.Errorf("allocated device %s has profile %q, want %q", r.Device, got, tc.wantProfile)
			}
			if tc.wantMemory != "" {
				if r.ShareID == nil {
					t.Errorf("share on %s has no shareID", r.Device)
				}
				got := r.ConsumedCapacity[gpuapi.CapMemory]
				if want := resource.MustParse(tc.wantMemory); got.Cmp(want) != 0 {
					t.Errorf("share on %s consumed memory %s, want %s", r.Device, got.String(), tc.wantMemory)
				}
			}

			running := waitRunning(t, pod)
			checkPrepared(t, a, running)
			cdiIDs := containerEdits(t, running, "ctr").CDIDevices

			deletePod(t, running)
			waitGone(t, a)
			checkUnprepared(t, a, cdiIDs)
		})
	}
}

// checkPrepared checks that the stand-in prepared exactly the allocated device and
// that the container got that device.
func checkPrepared(t *testing.T, a allocation, running *corev1.Pod) {
	t.Helper()
	n := node(t, running.Spec.NodeName)
	prepared, ok := n.Kubelet.Prepared()[a.Claim.UID]
	if !ok {
		t.Fatalf("claim %s is not prepared on node %s", a.Claim.Name, n.Name)
	}
	r := a.Devices()[0]
	if len(prepared.Devices) != 1 || prepared.Devices[0].DeviceName != r.Device || prepared.Devices[0].PoolName != r.Pool {
		t.Fatalf("plugin prepared %v, want the allocated %s/%s", prepared.Devices, r.Pool, r.Device)
	}
	edits := containerEdits(t, running, "ctr")
	if !slices.Equal(edits.CDIDevices, prepared.Devices[0].CdiDeviceIds) || len(edits.CDIDevices) == 0 {
		t.Errorf("container got CDI devices %v, plugin returned %v", edits.CDIDevices, prepared.Devices[0].CdiDeviceIds)
	}
	if len(edits.Env) == 0 && len(edits.DeviceNodes) == 0 {
		t.Fatalf("CDI devices %v give the container nothing", edits.CDIDevices)
	}

	// The container must see the allocated GPU: its UUID (a MIG UUID for a
	// partition, which exists only once prepared) or its device node. A
	// whole GPU and a share carry the GPU's UUID; only the prepared device
	// itself is sure to be published (the plugin may withdraw what it blocks).
	attrs := deviceAttributes(t, r.Pool, r.Device)
	index, _ := intAttr(attrs, "index")
	uuid := stringAttr(attrs, "uuid")
	env := strings.Join(edits.Env, "\n")
	switch stringAttr(attrs, "type") {
	case "mig":
		if !strings.Contains(env, "MIG-") && !slices.ContainsFunc(edits.DeviceNodes, func(p string) bool { return strings.Contains(p, "nvidia-caps") }) {
			t.Errorf("container of %s got no MIG device (env %v, device nodes %v)", r.Device, edits.Env, edits.DeviceNodes)
		}
	default:
		devNode := fmt.Sprintf("/dev/nvidia%d", index)
		if (uuid == "" || !strings.Contains(env, uuid)) && !slices.Contains(edits.DeviceNodes, devNode) {
			t.Errorf("container of %s got neither GPU %s's UUID %q nor %s (env %v, device nodes %v)", r.Device, fmt.Sprint(index), uuid, devNode, edits.Env, edits.DeviceNodes)
		}
	}
}

// checkUnprepared checks that the claim is no longer prepared on the node and its
// CDI devices are gone from the spec directory.
func checkUnprepared(t *testing.T, a allocation, cdiIDs []string) {
	t.Helper()
	n := node(t, a.Pod.Spec.NodeName)
	if _, ok := n.Kubelet.Prepared()[a.Claim.UID]; ok {
		t.Errorf("claim %s still prepared on %s after its pod was deleted", a.Claim.Name, n.Name)
	}
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, waitTimeout, true, func(context.Context) (bool, error) {
		cache, err := cdi.NewCache(cdi.WithSpecDirs(n.CDIRoot), cdi.WithAutoRefresh(false))
		if err != nil {
			return false, nil
		}
		return !slices.ContainsFunc(cdiIDs, func(id string) bool { return cache.GetDevice(id) != nil }), nil
	})
	if err != nil {
		t.Errorf("CDI devices %v of unprepared claim %s still in %s", cdiIDs, a.Claim.Name, n.CDIRoot)
	}
}
