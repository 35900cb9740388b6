package builder

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
)

func TestClaim(t *testing.T) {
	share := types.UID("s1")
	tests := map[string]struct {
		got  *resourceapi.ResourceClaim
		want *resourceapi.ResourceClaim
	}{
		"defaults": {
			got: MakeClaim("c").Obj(),
			want: &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "default", UID: "c"},
			},
		},
		"requests with the API server's defaults": {
			got: MakeClaim("c").Namespace("ns").UID("u").
				Request(
					MakeRequest("gpu", gpuapi.ClassGPU).Count(2).Obj(),
					MakeRequest("mig", gpuapi.ClassMIG).Profile("1g.18gb").PlacementStart(3).Obj(),
				).Obj(),
			want: &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", UID: "u"},
				Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{
					{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
						DeviceClassName: gpuapi.ClassGPU, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 2,
					}},
					{Name: "mig", Exactly: &resourceapi.ExactDeviceRequest{
						DeviceClassName: gpuapi.ClassMIG, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
						Selectors: []resourceapi.DeviceSelector{
							{CEL: &resourceapi.CELDeviceSelector{Expression: `device.attributes["gpu.tessera.dev"].profile == "1g.18gb"`}},
							{CEL: &resourceapi.CELDeviceSelector{Expression: `device.attributes["gpu.tessera.dev"].placementStart == 3`}},
						},
					}},
				}}},
			},
		},
		"firstAvailable": {
			got: MakeClaim("c").Request(FirstAvailable("gpu",
				MakeRequest("mig", gpuapi.ClassMIG).Selector("true"),
				MakeRequest("share", gpuapi.ClassShared).Memory("20Gi").Compute(30),
			)).Obj(),
			want: &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "default", UID: "c"},
				Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{Requests: []resourceapi.DeviceRequest{{
					Name: "gpu",
					FirstAvailable: []resourceapi.DeviceSubRequest{
						{
							Name: "mig", DeviceClassName: gpuapi.ClassMIG, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
							Selectors: []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: "true"}}},
						},
						{
							Name: "share", DeviceClassName: gpuapi.ClassShared, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
							Capacity: &resourceapi.CapacityRequirements{Requests: map[resourceapi.QualifiedName]resource.Quantity{
								"memory": resource.MustParse("20Gi"), "compute": resource.MustParse("30"),
							}},
						},
					},
				}}}},
			},
		},
		"allocation": {
			got: MakeClaim("c").Pool("node-1").
				Device("gpu", "gpu-0").
				Share("s", "gpu-1-shared", "1Gi", "10", "s1").
				Config(resourceapi.AllocationConfigSourceClaim, `{"kind":"GPUConfig"}`, "s").
				ReservedFor("p", "p-uid").Obj(),
			want: &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "default", UID: "c"},
				Status: resourceapi.ResourceClaimStatus{
					Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
						Results: []resourceapi.DeviceRequestAllocationResult{
							{Request: "gpu", Driver: gpuapi.DriverName, Pool: "node-1", Device: "gpu-0"},
							{
								Request: "s", Driver: gpuapi.DriverName, Pool: "node-1", Device: "gpu-1-shared", ShareID: &share,
								ConsumedCapacity: map[resourceapi.QualifiedName]resource.Quantity{
									"gpu.tessera.dev/memory": resource.MustParse("1Gi"), "gpu.tessera.dev/compute": resource.MustParse("10"),
								},
							},
						},
						Config: []resourceapi.DeviceAllocationConfiguration{{
							Source: resourceapi.AllocationConfigSourceClaim, Requests: []string{"s"},
							DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
								Driver: gpuapi.DriverName, Parameters: runtime.RawExtension{Raw: []byte(`{"kind":"GPUConfig"}`)},
							}},
						}},
					}},
					ReservedFor: []resourceapi.ResourceClaimConsumerReference{{Resource: "pods", Name: "p", UID: "p-uid"}},
				},
			},
		},
		"allocated with nothing": {
			got: MakeClaim("c").Allocated().Obj(),
			want: &resourceapi.ResourceClaim{
				ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "default", UID: "c"},
				Status:     resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{}},
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("claim (-want +got):\n%s", diff)
			}
		})
	}
}

// TestObjIsACopy: a builder serves as a template; what a test does to one
// object must not show in the next.
func TestObjIsACopy(t *testing.T) {
	b := MakeClaim("c").Request(MakeRequest("gpu", gpuapi.ClassGPU).Obj()).Pool("n").Device("gpu", "gpu-0")
	first := b.Obj()
	first.Spec.Devices.Requests[0].Exactly.Count = 5
	first.Status.Allocation.Devices.Results[0].Device = "gpu-9"
	second := b.Obj()
	if second.Spec.Devices.Requests[0].Exactly.Count != 1 || second.Status.Allocation.Devices.Results[0].Device != "gpu-0" {
		t.Errorf("changing one object changed the builder: %+v", second)
	}
	r := MakeRequest("share", gpuapi.ClassShared).Memory("1Gi")
	a := r.Obj()
	r.Memory("2Gi")
	if got := a.Exactly.Capacity.Requests["memory"]; got.Cmp(resource.MustParse("1Gi")) != 0 {
		t.Errorf("request built earlier changed to %s", got.String())
	}
}

func TestTemplate(t *testing.T) {
	got := MakeClaim("t").Namespace("ns").Request(MakeRequest("gpu", gpuapi.ClassGPU).Obj()).SpecConfig(`{"kind":"GPUConfig"}`, "gpu").Template()
	want := &resourceapi.ResourceClaimTemplate{
		ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "ns"},
		Spec: resourceapi.ResourceClaimTemplateSpec{Spec: resourceapi.ResourceClaimSpec{Devices: resourceapi.DeviceClaim{
			Requests: []resourceapi.DeviceRequest{{Name: "gpu", Exactly: &resourceapi.ExactDeviceRequest{
				DeviceClassName: gpuapi.ClassGPU, AllocationMode: resourceapi.DeviceAllocationModeExactCount, Count: 1,
			}}},
			Config: []resourceapi.DeviceClaimConfiguration{{
				Requests: []string{"gpu"},
				DeviceConfiguration: resourceapi.DeviceConfiguration{Opaque: &resourceapi.OpaqueDeviceConfiguration{
					Driver: gpuapi.DriverName, Parameters: runtime.RawExtension{Raw: []byte(`{"kind":"GPUConfig"}`)},
				}},
			}},
		}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("template (-want +got):\n%s", diff)
	}
}

func TestSlice(t *testing.T) {
	got := MakeSlice("n-plain", "n").Device(
		MakeDevice("gpu-0").Attr(gpuapi.AttrType, "gpu").IntAttr(gpuapi.AttrIndex, 0).Capacity(gpuapi.CapMemory, "141Gi").Obj(),
		MakeDevice("gpu-1").Obj(),
	).Obj()
	want := &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "n-plain"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver: gpuapi.DriverName, NodeName: ptr.To("n"),
			Pool: resourceapi.ResourcePool{Name: "n", ResourceSliceCount: 1},
			Devices: []resourceapi.Device{
				{
					Name: "gpu-0",
					Attributes: map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
						"type": {StringValue: ptr.To("gpu")}, "index": {IntValue: ptr.To[int64](0)},
					},
					Capacity: map[resourceapi.QualifiedName]resourceapi.DeviceCapacity{"memory": {Value: resource.MustParse("141Gi")}},
				},
				{Name: "gpu-1"},
			},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("slice (-want +got):\n%s", diff)
	}
	if got := MakeSlice("s", "n").Pool("p", 3, 2).Obj().Spec.Pool; got != (resourceapi.ResourcePool{Name: "p", Generation: 3, ResourceSliceCount: 2}) {
		t.Errorf("pool = %+v", got)
	}

	counters := map[string]resourceapi.Counter{"memory": {Value: resource.MustParse("1Gi")}}
	got = MakeSlice("other", "n").Driver("gpu.example.com").NoNode().
		Counters(resourceapi.CounterSet{Name: "gpu-0", Counters: counters}).
		Device(MakeDevice("gpu-0").Consumes("gpu-0", counters).Obj()).Obj()
	want = &resourceapi.ResourceSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "other"},
		Spec: resourceapi.ResourceSliceSpec{
			Driver:         "gpu.example.com",
			Pool:           resourceapi.ResourcePool{Name: "n", ResourceSliceCount: 1},
			SharedCounters: []resourceapi.CounterSet{{Name: "gpu-0", Counters: counters}},
			Devices: []resourceapi.Device{{
				Name:             "gpu-0",
				ConsumesCounters: []resourceapi.DeviceCounterConsumption{{CounterSet: "gpu-0", Counters: counters}},
			}},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("another driver's slice (-want +got):\n%s", diff)
	}
}

func TestNode(t *testing.T) {
	got := MakeNode("n1").UID("n1-uid").Obj()
	want := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "n1-uid"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
}

func TestTenant(t *testing.T) {
	owns := metav1.LabelSelector{MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: "team-a"}}
	tests := map[string]struct {
		got  *tenancyv1.GPUTenant
		want *tenancyv1.GPUTenant
	}{
		"bare": {
			got:  MakeTenant("team-a").Obj(),
			want: &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}, Spec: tenancyv1.GPUTenantSpec{NamespaceSelector: owns}},
		},
		"everything": {
			got: MakeTenant("team-a").Classes(gpuapi.ClassMIG, gpuapi.ClassShared).AdminAccess().DeviceConfig().Pool("team-a").
				Sharing(tenancyv1.SharingExclusive).Memory("36Gi").Devices(gpuapi.ClassMIG, 3).NamespaceQuota(gpuapi.ClassMIG, 2).
				GuaranteedMemory("18Gi").IdleReclaim(2 * time.Hour).Obj(),
			want: &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}, Spec: tenancyv1.GPUTenantSpec{
				NamespaceSelector:    owns,
				AllowedDeviceClasses: []string{gpuapi.ClassMIG, gpuapi.ClassShared},
				AllowAdminAccess:     true,
				AllowDeviceConfig:    true,
				DedicatedPool:        "team-a",
				Sharing:              tenancyv1.SharingExclusive,
				Budget: &tenancyv1.Budget{
					GPUMemory: ptr.To(resource.MustParse("36Gi")),
					Devices:   map[string]int64{gpuapi.ClassMIG: 3},
				},
				NamespaceQuota: &tenancyv1.NamespaceQuota{Devices: map[string]int64{gpuapi.ClassMIG: 2}},
				Guarantee:      &tenancyv1.Budget{GPUMemory: ptr.To(resource.MustParse("18Gi"))},
				IdleReclaim:    &tenancyv1.IdleReclaim{After: metav1.Duration{Duration: 2 * time.Hour}},
			}},
		},
		"own selector": {
			got: MakeTenant("team-z").Selector(metav1.LabelSelector{MatchLabels: map[string]string{"team": "z"}}).Obj(),
			want: &tenancyv1.GPUTenant{ObjectMeta: metav1.ObjectMeta{Name: "team-z"}, Spec: tenancyv1.GPUTenantSpec{
				NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"team": "z"}},
			}},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got); diff != "" {
				t.Errorf("tenant (-want +got):\n%s", diff)
			}
		})
	}
}

// TestTenantObjIsACopy: one tenant changed by a test, or a builder changed
// after it built one, leaves the other alone.
func TestTenantObjIsACopy(t *testing.T) {
	b := MakeTenant("team-a").Devices(gpuapi.ClassGPU, 1)
	first := b.Obj()
	first.Spec.Budget.Devices[gpuapi.ClassGPU] = 5
	first.Spec.NamespaceSelector.MatchLabels["x"] = "y"
	b.Devices(gpuapi.ClassMIG, 2)
	second := b.Obj()
	want := map[string]int64{gpuapi.ClassGPU: 1, gpuapi.ClassMIG: 2}
	if diff := cmp.Diff(want, second.Spec.Budget.Devices); diff != "" {
		t.Errorf("second tenant's device budget (-want +got):\n%s", diff)
	}
	if len(second.Spec.NamespaceSelector.MatchLabels) != 1 || len(first.Spec.Budget.Devices) != 1 {
		t.Errorf("tenants share state: first %+v, second %+v", first.Spec, second.Spec)
	}
}

func TestNamespace(t *testing.T) {
	got := MakeNamespace("a1").Tenant("team-a").Label("team", "a").Obj()
	want := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a1", Labels: map[string]string{
		tenancyv1.LabelCapsuleTenant: "team-a", "team": "a",
	}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("namespace (-want +got):\n%s", diff)
	}
	if !MakeNamespace("a1").Obj().CreationTimestamp.IsZero() || MakeNamespace("a1").Obj().Labels != nil {
		t.Errorf("a bare namespace carries more than its name: %+v", MakeNamespace("a1").Obj())
	}
}
