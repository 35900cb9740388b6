package tenancy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

func TestBinding(t *testing.T) {
	got := tenancy.Binding(makeTenant("team-a").Obj())
	want := admissionv1.ValidatingAdmissionPolicyBindingSpec{
		PolicyName: tenancyv1.PolicyClaims,
		ParamRef:   &admissionv1.ParamRef{Name: "team-a", ParameterNotFoundAction: ptr.To(admissionv1.DenyAction)},
		MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
			MatchLabels: map[string]string{tenancyv1.LabelCapsuleTenant: "team-a"},
		}},
		ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
	}
	if got.Name != "team-a.claims.tenancy.tessera.dev" {
		t.Errorf("name = %s", got.Name)
	}
	if diff := cmp.Diff(want, got.Spec); diff != "" {
		t.Errorf("binding (-want +got):\n%s", diff)
	}
}

func TestUntenantedBinding(t *testing.T) {
	got := tenancy.UntenantedBinding([]string{"b", "a", "b"})
	want := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
		Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"a", "b"},
	}}}
	if diff := cmp.Diff(want, got.Spec.MatchResources.NamespaceSelector); diff != "" {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	if sel := tenancy.UntenantedBinding(nil).Spec.MatchResources.NamespaceSelector; len(sel.MatchExpressions) != 0 {
		t.Errorf("without tenant namespaces the binding must match every namespace, got %v", sel)
	}
}

// TestOutsidersBinding: the outsiders policy is bound to the namespaces no
// tenant selects, with every GPUTenant as a parameter, and allows where
// there is none.
func TestOutsidersBinding(t *testing.T) {
	got := tenancy.OutsidersBinding([]string{"b", "a", "b"})
	want := admissionv1.ValidatingAdmissionPolicyBindingSpec{
		PolicyName: tenancyv1.PolicyOutsiders,
		ParamRef:   &admissionv1.ParamRef{Selector: &metav1.LabelSelector{}, ParameterNotFoundAction: ptr.To(admissionv1.AllowAction)},
		MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
			Key: corev1.LabelMetadataName, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"a", "b"},
		}}}},
		ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
	}
	if diff := cmp.Diff(want, got.Spec); diff != "" {
		t.Errorf("binding (-want +got):\n%s", diff)
	}
	if sel := tenancy.OutsidersBinding(nil).Spec.MatchResources.NamespaceSelector; len(sel.MatchExpressions) != 0 {
		t.Errorf("without tenant namespaces the binding must match every namespace, got %v", sel)
	}
}

func TestQuota(t *testing.T) {
	if q := tenancy.Quota(makeTenant("t").Obj(), "a1"); q != nil {
		t.Errorf("a tenant without namespaceQuota gets a quota: %v", q)
	}
	q := tenancy.Quota(makeTenant("t").NamespaceQuota(gpuapi.ClassMIG, 7).NamespaceQuota(gpuapi.ClassGPU, 1).Obj(), "a1")
	want := corev1.ResourceList{
		"mig.gpu.tessera.dev.deviceclass.resource.k8s.io/devices": resource.MustParse("7"),
		"gpu.tessera.dev.deviceclass.resource.k8s.io/devices":     resource.MustParse("1"),
	}
	if q.Namespace != "a1" || q.Name != tenancyv1.QuotaName {
		t.Errorf("quota is %s/%s", q.Namespace, q.Name)
	}
	if diff := cmp.Diff(want, q.Spec.Hard); diff != "" {
		t.Errorf("hard (-want +got):\n%s", diff)
	}
}

func TestDedicatedClasses(t *testing.T) {
	if c := tenancy.DedicatedClasses(makeTenant("t").Obj()); c != nil {
		t.Errorf("a tenant without a pool gets classes: %v", c)
	}
	got := map[string]string{}
	for _, c := range tenancy.DedicatedClasses(makeTenant("team-a").Pool("pool-a").Obj()) {
		got[c.Name] = c.Spec.Selectors[0].CEL.Expression
	}
	want := map[string]string{
		"team-a.dedicated.gpu.tessera.dev":        `device.driver == "gpu.tessera.dev" && device.attributes["gpu.tessera.dev"].type == "gpu" && device.attributes["gpu.tessera.dev"].pool == "pool-a"`,
		"team-a.dedicated.mig.gpu.tessera.dev":    `device.driver == "gpu.tessera.dev" && device.attributes["gpu.tessera.dev"].type == "mig" && device.attributes["gpu.tessera.dev"].pool == "pool-a"`,
		"team-a.dedicated.shared.gpu.tessera.dev": `device.driver == "gpu.tessera.dev" && device.attributes["gpu.tessera.dev"].type == "shared" && device.attributes["gpu.tessera.dev"].pool == "pool-a"`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("classes (-want +got):\n%s", diff)
	}
}

func TestDecide(t *testing.T) {
	tenant := makeTenant("team-a").Classes(gpuapi.ClassMIG).Memory("100Gi").Obj()
	claim := makeClaim("a", "c").Request("gpu", gpuapi.ClassMIG).Allocated("gpu", "gpu-2-mig-3g71gb-4").Obj()
	if d := tenancy.Decide(nil, nil, claim, published); !d.Admit || d.Reason != tenancyv1.ReasonNoTenancy {
		t.Errorf("untenanted: %+v", d)
	}
	if d := tenancy.Decide(tenant, []tenancy.Holding{{Memory: 29 * gi}}, claim, published); !d.Admit || d.Cost.Memory != 71*gi {
		t.Errorf("fits: %+v", d)
	}
	if d := tenancy.Decide(tenant, []tenancy.Holding{{Memory: 30 * gi}}, claim, published); d.Admit || d.Reason != tenancyv1.ReasonOverBudget {
		t.Errorf("over budget: %+v", d)
	}
	bad := makeClaim("a", "c").Request("gpu", gpuapi.ClassGPU).Allocated("gpu", "gpu-0").Obj()
	if d := tenancy.Decide(tenant, nil, bad, published); d.Admit || d.Reason != tenancyv1.ReasonNotAllowed {
		t.Errorf("not allowed: %+v", d)
	}
}
