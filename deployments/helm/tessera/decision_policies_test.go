package tessera

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/utils/ptr"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
	tenancyv1 "github.com/tessera-gpu/tessera/api/tenancy/v1alpha1"
	"github.com/tessera-gpu/tessera/internal/controller"
	"github.com/tessera-gpu/tessera/pkg/tenancy"
)

// decidedClaim is an allocated claim of one gpu.tessera.dev device, gpu-0 of
// pool n1; each entry, if any, is its status entry with that condition and
// the record of memory and holder (no record if memory is 0).
func decidedClaim(t *testing.T, entries ...statusEntry) *resourceapi.ResourceClaim {
	t.Helper()
	claim := &resourceapi.ResourceClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "c"},
		Status: resourceapi.ResourceClaimStatus{Allocation: &resourceapi.AllocationResult{Devices: resourceapi.DeviceAllocationResult{
			Results: []resourceapi.DeviceRequestAllocationResult{{
				Request: "gpu", Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0",
				BindingConditions: []string{tenancyv1.ConditionAdmitted}, BindingFailureConditions: []string{tenancyv1.ConditionRejected},
			}},
		}}},
	}
	for _, e := range entries {
		st := resourceapi.AllocatedDeviceStatus{Driver: gpuapi.DriverName, Pool: "n1", Device: "gpu-0"}
		for _, c := range e.conditions {
			st.Conditions = append(st.Conditions, metav1.Condition{Type: c, Status: metav1.ConditionTrue, Reason: "R", Message: "m"})
		}
		if e.memory > 0 || e.holder != "" {
			data, err := tenancy.EncodeRecord(tenancyv1.DecisionRecord{DeviceMemory: e.memory, Holder: e.holder})
			if err != nil {
				t.Fatal(err)
			}
			st.Data = data
		}
		claim.Status.Devices = append(claim.Status.Devices, st)
	}
	return claim
}

type statusEntry struct {
	conditions []string
	memory     int64
	holder     string
}

// statusVerdict runs policy on an update of a claim's status by u, with
// param; "" if the policy does not apply or admits it.
func statusVerdict(t *testing.T, policy *admissionv1.ValidatingAdmissionPolicy, u user.Info, obj, old *resourceapi.ResourceClaim, param runtime.Object) string {
	t.Helper()
	gvr := resourceapi.SchemeGroupVersion.WithResource("resourceclaims")
	attrs := admission.NewAttributesRecord(obj, old, resourceapi.SchemeGroupVersion.WithKind("ResourceClaim"), obj.Namespace, obj.Name, gvr, "status", admission.Update, nil, false, u)
	if !matches(policy, attrs) {
		t.Fatalf("policy %s does not match an update of resourceclaims/status", policy.Name)
	}
	_, denials := admitsWith(t, policy, u, admission.Update, gvr, "status", "ResourceClaim", obj, old, param)
	return strings.Join(denials, "; ")
}

const gib = int64(1) << 30

// TestDecisionRecordsPolicy: nobody but the controller (and cluster
// administrators) may set or change a gpu.tessera.dev device's tenancy
// decision or the record that goes with it; a node, even one granted the
// permission to write its claims' status.devices, can neither admit its
// claims nor make an admitted device cheaper. Dropping the entries of a
// deallocated claim and changing another condition stay open.
func TestDecisionRecordsPolicy(t *testing.T) {
	policy := deniedPolicy(t, "tessera-controller-decision-records")
	node := &user.DefaultInfo{Name: "system:node:n1", Groups: []string{"system:nodes"}}
	admitted := statusEntry{conditions: []string{tenancyv1.ConditionAdmitted}, memory: 141 * gib, holder: "a"}
	cheaper := admitted
	cheaper.memory = gib
	idle := admitted
	idle.conditions = []string{tenancyv1.ConditionAdmitted, tenancyv1.ConditionIdle}
	deallocated := decidedClaim(t)
	deallocated.Status.Allocation = nil
	for name, tc := range map[string]struct {
		u        user.Info
		obj, old *resourceapi.ResourceClaim
		denied   bool
	}{
		"a node admits its claim":                 {u: node, obj: decidedClaim(t, admitted), old: decidedClaim(t), denied: true},
		"a node admits it without a record":       {u: node, obj: decidedClaim(t, statusEntry{conditions: []string{tenancyv1.ConditionAdmitted}}), old: decidedClaim(t), denied: true},
		"a node records a cost alone":             {u: node, obj: decidedClaim(t, statusEntry{memory: gib}), old: decidedClaim(t), denied: true},
		"a node lowers an admitted device's cost": {u: pluginOnNode("n1"), obj: decidedClaim(t, cheaper), old: decidedClaim(t, admitted), denied: true},
		"a node turns a rejection into an admission": {u: node, obj: decidedClaim(t, admitted),
			old: decidedClaim(t, statusEntry{conditions: []string{tenancyv1.ConditionRejected}, memory: 141 * gib, holder: "a"}), denied: true},
		"the scheduler deallocates":      {u: &user.DefaultInfo{Name: "system:kube-scheduler"}, obj: deallocated, old: decidedClaim(t, admitted)},
		"another condition changes":      {u: node, obj: decidedClaim(t, idle), old: decidedClaim(t, admitted)},
		"an entry without a decision":    {u: node, obj: decidedClaim(t, statusEntry{conditions: []string{"example.com/ready"}}), old: decidedClaim(t)},
		"a cluster administrator admits": {u: &user.DefaultInfo{Name: "admin", Groups: []string{"system:masters"}}, obj: decidedClaim(t, admitted), old: decidedClaim(t)},
		"the controller admits":          {u: &user.DefaultInfo{Name: controllerUser}, obj: decidedClaim(t, admitted), old: decidedClaim(t)},
	} {
		t.Run(name, func(t *testing.T) {
			got := statusVerdict(t, policy, tc.u, tc.obj, tc.old, nil)
			if tc.denied != (got != "") {
				t.Errorf("denied %v (%q), want denied %v", got != "", got, tc.denied)
			}
		})
	}
}

// TestDecisionFencePolicy: the controller's decisions are admitted only when
// recorded as made by the holder of the leader-election Lease, the policy's
// parameter; a replica that lost the Lease has its decisions refused, while
// carrying a decision of an earlier leader along (an idle mark) stays open.
func TestDecisionFencePolicy(t *testing.T) {
	policy := deniedPolicy(t, "tessera-controller-decision-fence")
	if pk := policy.Spec.ParamKind; pk == nil || pk.APIVersion != "coordination.k8s.io/v1" || pk.Kind != "Lease" {
		t.Fatalf("paramKind %+v, want coordination.k8s.io/v1 Lease", pk)
	}
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	var ref *admissionv1.ParamRef
	for _, b := range find[*admissionv1.ValidatingAdmissionPolicyBinding](objects(t, manifest)) {
		if b.Spec.PolicyName == policy.Name {
			ref = b.Spec.ParamRef
		}
	}
	if ref == nil || ref.Name != controller.LeaderElectionID || ref.Namespace != "tessera-system" ||
		ref.ParameterNotFoundAction == nil || *ref.ParameterNotFoundAction != admissionv1.DenyAction {
		t.Fatalf("binding's paramRef %+v, want the Lease tessera-system/%s, denying while it is missing", ref, controller.LeaderElectionID)
	}

	lease := func(holder string) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "tessera-system", Name: controller.LeaderElectionID}}
		if holder != "" {
			l.Spec.HolderIdentity = ptr.To(holder)
		}
		return l
	}
	ctrl := &user.DefaultInfo{Name: controllerUser}
	by := func(holder string, conditions ...string) statusEntry {
		return statusEntry{conditions: conditions, memory: 18 * gib, holder: holder}
	}
	for name, tc := range map[string]struct {
		u        user.Info
		obj, old *resourceapi.ResourceClaim
		lease    string
		denied   bool
	}{
		"the leader admits":                {u: ctrl, obj: decidedClaim(t, by("b", tenancyv1.ConditionAdmitted)), old: decidedClaim(t), lease: "b"},
		"the leader rejects":               {u: ctrl, obj: decidedClaim(t, by("b", tenancyv1.ConditionRejected)), old: decidedClaim(t), lease: "b"},
		"a deposed leader admits":          {u: ctrl, obj: decidedClaim(t, by("a", tenancyv1.ConditionAdmitted)), old: decidedClaim(t), lease: "b", denied: true},
		"a deposed leader rejects":         {u: ctrl, obj: decidedClaim(t, by("a", tenancyv1.ConditionRejected)), old: decidedClaim(t), lease: "b", denied: true},
		"a decision without a holder":      {u: ctrl, obj: decidedClaim(t, by("", tenancyv1.ConditionAdmitted)), old: decidedClaim(t), lease: "b", denied: true},
		"a decision while nobody holds it": {u: ctrl, obj: decidedClaim(t, by("b", tenancyv1.ConditionAdmitted)), old: decidedClaim(t), lease: "", denied: true},
		"the leader marks an earlier admission idle": {u: ctrl, obj: decidedClaim(t, by("a", tenancyv1.ConditionAdmitted, tenancyv1.ConditionIdle)),
			old: decidedClaim(t, by("a", tenancyv1.ConditionAdmitted)), lease: "b"},
		"a deposed leader rewrites an admission's record": {u: ctrl, obj: decidedClaim(t, statusEntry{conditions: []string{tenancyv1.ConditionAdmitted}, memory: gib, holder: "a"}),
			old: decidedClaim(t, by("b", tenancyv1.ConditionAdmitted)), lease: "b", denied: true},
	} {
		t.Run(name, func(t *testing.T) {
			got := statusVerdict(t, policy, tc.u, tc.obj, tc.old, lease(tc.lease))
			if tc.denied != (got != "") {
				t.Errorf("denied %v (%q), want denied %v", got != "", got, tc.denied)
			}
		})
	}
	// Other writers are the decision-records policy's.
	matched, _ := admitsWith(t, policy, &user.DefaultInfo{Name: "system:node:n1"}, admission.Update, resourceapi.SchemeGroupVersion.WithResource("resourceclaims"),
		"status", "ResourceClaim", decidedClaim(t, by("a", tenancyv1.ConditionAdmitted)), decidedClaim(t), lease("b"))
	if matched {
		t.Error("the fence applies to writers other than the controller")
	}

	// Without leader election there is no Lease to fence with.
	manifest, err = render(t, "--set", "controller.leaderElection.enabled=false")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range find[*admissionv1.ValidatingAdmissionPolicy](objects(t, manifest)) {
		if p.Name == policy.Name {
			t.Error("the fence is installed without leader election")
		}
	}
}

// TestOnlyTheControllerWritesClaimDeviceStatus: of the roles the chart
// installs, only the controller's may update claims' status or write
// status.devices entries of any driver (resourceclaims/driver): the
// kubelet plugin can neither.
func TestOnlyTheControllerWritesClaimDeviceStatus(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	rules := map[string][]rbacv1.PolicyRule{}
	for _, r := range find[*rbacv1.ClusterRole](objs) {
		rules["ClusterRole "+r.Name] = r.Rules
	}
	for _, r := range find[*rbacv1.Role](objs) {
		rules["Role "+r.Name] = r.Rules
	}
	for role, rs := range rules {
		for _, r := range rs {
			for _, res := range r.Resources {
				if (res == "resourceclaims/status" || res == "resourceclaims/driver" || res == "*") && role != "ClusterRole tessera-controller" {
					t.Errorf("%s grants %v on %s", role, r.Verbs, res)
				}
			}
		}
	}
	if len(rules) < 2 {
		t.Fatalf("the chart renders %d roles, want at least the controller's and the plugin's", len(rules))
	}
}
