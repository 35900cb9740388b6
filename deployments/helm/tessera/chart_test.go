package tessera

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// helm returns the Helm CLI that make builds from tools/helm ($TESSERA_HELM).
func helm(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TESSERA_HELM")
	if path == "" {
		t.Skip("TESSERA_HELM is not set: run the chart tests with make unit, which builds Helm from tools/helm")
	}
	return path
}

// render runs helm template with args and returns stdout, or the error with
// Helm's message.
func render(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", "tessera", ".", "--namespace", "tessera-system", "--include-crds"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", errors.New(strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// objects decodes every document strictly into its typed Kubernetes object, so
// a misspelt field fails the test as the API server would refuse it. Kinds the
// client-go scheme does not know (CRDs, ServiceMonitors) stay unstructured.
func objects(t *testing.T, manifest string) []runtime.Object {
	t.Helper()
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufioReader(manifest))
	var out []runtime.Object
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read rendered manifest: %v", err)
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("decode rendered document: %v\n%s", err, doc)
		}
		if len(u.Object) == 0 {
			continue
		}
		obj, _, err := decoder.Decode(doc, nil, nil)
		if runtime.IsNotRegisteredError(err) {
			out = append(out, u)
			continue
		}
		if err != nil {
			t.Fatalf("%s %s is not a valid object: %v", u.GetKind(), u.GetName(), err)
		}
		out = append(out, obj)
	}
}

func find[T runtime.Object](objs []runtime.Object) []T {
	var out []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

// pluginPodSpec renders the chart with args and returns the pod spec of
// its one kubelet plugin DaemonSet.
func pluginPodSpec(t *testing.T, args ...string) corev1.PodSpec {
	t.Helper()
	manifest, err := render(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	ds := find[*appsv1.DaemonSet](objects(t, manifest))
	if len(ds) != 1 {
		t.Fatalf("want one kubelet plugin DaemonSet, got %d", len(ds))
	}
	return ds[0].Spec.Template.Spec
}

func TestDefaultInstall(t *testing.T) {
	manifest, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)

	ds := find[*appsv1.DaemonSet](objs)
	if len(ds) != 1 {
		t.Fatalf("want one kubelet plugin DaemonSet, got %d", len(ds))
	}
	plugin := ds[0].Spec.Template.Spec
	if plugin.ServiceAccountName != "tessera-kubelet-plugin" {
		t.Errorf("plugin runs as %q, want its own ServiceAccount tessera-kubelet-plugin", plugin.ServiceAccountName)
	}
	c := plugin.Containers[0]
	for _, want := range []string{"--tenancy", "--nvml=real", "--plugin-data-dir=/var/lib/kubelet/plugins/" + gpuapi.DriverName, "--registrar-dir=/var/lib/kubelet/plugins_registry", "--cdi-root=/var/run/cdi", "--state-dir=/var/lib/tessera", "--driver-root=/", "--container-driver-root=/driver-root", "--withdraw-blocked=true"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("plugin args %v lack %s", c.Args, want)
		}
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if diff := cmp.Diff(map[string]string{"NODE_NAME": "spec.nodeName", "POD_UID": "metadata.uid", "POD_NAMESPACE": "metadata.namespace"}, env); diff != "" {
		t.Errorf("plugin downward-API env (-want +got):\n%s", diff)
	}
	// The image's default user is nonroot (65532, hack/image): the plugin
	// needs root, and says so, for the CDI, plugin-socket and state
	// directories of the host and for NVML's device nodes.
	if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("plugin securityContext %+v: want privileged and runAsUser 0 set explicitly, since the image runs as 65532 by default", sc)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.GRPC == nil || c.StartupProbe == nil || c.StartupProbe.GRPC == nil {
		t.Error("plugin needs gRPC startup and liveness probes on its health endpoint")
	}
	if s := ds[0].Spec.UpdateStrategy.RollingUpdate; s == nil || s.MaxSurge == nil || s.MaxSurge.IntValue() != 1 || s.MaxUnavailable.IntValue() != 0 {
		t.Errorf("plugin update strategy %+v: want a surge rollout so old and new plugins overlap", ds[0].Spec.UpdateStrategy)
	}
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/var/lib/tessera" && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional) {
			t.Error("the state directory needs Bidirectional mount propagation: MPS claims' /dev/shm tmpfs mounts must reach the host")
		}
	}
	hostPaths := map[string]bool{}
	for _, v := range plugin.Volumes {
		if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = true
		}
	}
	for _, p := range []string{"/var/lib/kubelet/plugins/gpu.tessera.dev", "/var/lib/kubelet/plugins_registry", "/var/run/cdi", "/", "/var/lib/tessera"} {
		if !hostPaths[p] {
			t.Errorf("plugin does not mount host path %s", p)
		}
	}

	deploy := find[*appsv1.Deployment](objs)
	if len(deploy) != 1 {
		t.Fatalf("want one controller Deployment, got %d", len(deploy))
	}
	ctrl := deploy[0].Spec.Template.Spec
	if ctrl.ServiceAccountName != "tessera-controller" {
		t.Errorf("controller runs as %q, want its own ServiceAccount", ctrl.ServiceAccountName)
	}
	if sc := ctrl.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Error("the controller must run as non-root, as the image's nonroot user 65532")
	}
	if cc := ctrl.Containers[0]; cc.LivenessProbe == nil || cc.ReadinessProbe == nil || !slices.Contains(cc.Args, "--leader-elect=true") {
		t.Errorf("controller needs probes and leader election, got args %v", cc.Args)
	}
	for _, want := range []string{"--kube-api-qps=50", "--kube-api-burst=100"} {
		if args := ctrl.Containers[0].Args; !slices.Contains(args, want) {
			t.Errorf("controller args %v lack %s", args, want)
		}
	}

	sas := find[*corev1.ServiceAccount](objs)
	if len(sas) != 2 {
		t.Errorf("want a ServiceAccount each for the controller and the plugin, got %d", len(sas))
	}
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok && u.GetKind() == "CustomResourceDefinition" {
			continue // crds/ are installed as generated; Helm never templates them
		}
		if u, ok := o.(interface{ GetLabels() map[string]string }); ok && u.GetLabels()["app.kubernetes.io/instance"] != "tessera" {
			t.Errorf("%T lacks the release's labels", o)
		}
	}
}

// The installed classes are exactly files/deviceclasses.yaml, which the allocator
// tests load; the extended resource name is added only when asked for.

// TestWithdrawalCanBeTurnedOff: the plugin withdraws blocked devices unless
// told not to, so the chart passes the value either way rather than only
// when it is set.
func TestWithdrawalCanBeTurnedOff(t *testing.T) {
	if args := pluginPodSpec(t, "--set", "kubeletPlugin.withdrawBlocked=false").Containers[0].Args; !slices.Contains(args, "--withdraw-blocked=false") {
		t.Errorf("plugin args %v lack --withdraw-blocked=false", args)
	}
}
func TestDeviceClasses(t *testing.T) {
	classes, err := DeviceClassObjects()
	if err != nil {
		t.Fatal(err)
	}
	shipped := map[string]resourceapi.DeviceClassSpec{}
	for _, dc := range classes {
		shipped[dc.Name] = dc.Spec
	}
	for name := range shipped {
		if !slices.Contains(gpuapi.Classes, name) {
			t.Errorf("files/deviceclasses.yaml ships %s, which api/gpu does not name", name)
		}
	}
	for name, tc := range map[string]struct {
		args     []string
		extended string
	}{
		"default":           {},
		"extended resource": {args: []string{"--set", "deviceClasses.gpuExtendedResourceName=nvidia.com/gpu"}, extended: "nvidia.com/gpu"},
	} {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]resourceapi.DeviceClassSpec{}
			for _, dc := range find[*resourceapi.DeviceClass](objects(t, manifest)) {
				got[dc.Name] = dc.Spec
			}
			want := map[string]resourceapi.DeviceClassSpec{}
			for n, spec := range shipped {
				if n == gpuapi.ClassGPU && tc.extended != "" {
					spec.ExtendedResourceName = &tc.extended
				}
				want[n] = spec
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("installed DeviceClasses (-want +got):\n%s", diff)
			}
		})
	}
}

// Node isolation is keyed to the plugin's own ServiceAccount and denies.
func TestNodeIsolationPolicy(t *testing.T) {
	manifest, err := render(t, "--set", "kubeletPlugin.serviceAccount.name=gpu-plugin")
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, manifest)
	policies := find[*admissionv1.ValidatingAdmissionPolicy](objs)
	var policy *admissionv1.ValidatingAdmissionPolicy
	for _, p := range policies {
		if strings.HasSuffix(p.Name, "-node-isolation") {
			policy = p
		}
	}
	if policy == nil {
		t.Fatal("no node-isolation ValidatingAdmissionPolicy")
	}
	if *policy.Spec.FailurePolicy != admissionv1.Fail {
		t.Error("node isolation must fail closed")
	}
	if cond := policy.Spec.MatchConditions[0].Expression; !strings.Contains(cond, `"system:serviceaccount:tessera-system:gpu-plugin"`) {
		t.Errorf("policy matches %s, want the plugin's ServiceAccount", cond)
	}
	var bound bool
	for _, b := range find[*admissionv1.ValidatingAdmissionPolicyBinding](objs) {
		if b.Spec.PolicyName == policy.Name && slices.Contains(b.Spec.ValidationActions, admissionv1.Deny) {
			bound = true
		}
	}
	if !bound {
		t.Error("the node-isolation policy has no binding that denies")
	}
	for _, b := range find[*rbacv1.ClusterRoleBinding](objs) {
		if b.RoleRef.Name == "tessera-kubelet-plugin" && b.Subjects[0].Name != "gpu-plugin" {
			t.Errorf("plugin RBAC bound to %s, want gpu-plugin", b.Subjects[0].Name)
		}
	}
}

func TestOptionalObjects(t *testing.T) {
	for name, tc := range map[string]struct {
		args                 []string
		deployments, monitor int
	}{
		"no controller, no tenancy": {args: []string{"--set", "controller.enabled=false", "--set", "kubeletPlugin.tenancy=false"}, deployments: 0},
		"service monitors":          {args: []string{"--set", "serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}, deployments: 1, monitor: 2},
	} {
		t.Run(name, func(t *testing.T) {
			manifest, err := render(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, manifest)
			if got := len(find[*appsv1.Deployment](objs)); got != tc.deployments {
				t.Errorf("%d controller Deployments, want %d", got, tc.deployments)
			}
			var monitors int
			for _, u := range find[*unstructured.Unstructured](objs) {
				if u.GetKind() == "ServiceMonitor" {
					monitors++
				}
			}
			if monitors != tc.monitor {
				t.Errorf("%d ServiceMonitors, want %d", monitors, tc.monitor)
			}
		})
	}
}

// Bad values fail early, saying what is wrong.
func TestRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"unknown key":          {args: []string{"--set", "kubeletPlugin.nvmlBackend=real"}, want: "additional properties 'nvmlBackend' not allowed"},
		"wrong type":           {args: []string{"--set", "controller.replicas=two"}, want: "/controller/replicas"},
		"unknown NVML backend": {args: []string{"--set", "kubeletPlugin.nvml=mock:tpu"}, want: "/kubeletPlugin/nvml"},
		"untenanted policy":    {args: []string{"--set", "controller.untenantedNamespaces=Maybe"}, want: "/controller/untenantedNamespaces"},
		"old cluster":          {args: []string{"--kube-version", "1.35.4"}, want: "1.37"},
		// 1.36 serves DeviceTaintRule only as v1beta2, behind a gate that is
		// off by default; the controller creates and watches v1 rules.
		"1.36 cluster":            {args: []string{"--kube-version", "1.36.3"}, want: "1.37"},
		"tenancy, no controller":  {args: []string{"--set", "controller.enabled=false"}, want: "every pod asking for a GPU would wait forever"},
		"monitor without its CRD": {args: []string{"--set", "serviceMonitor.enabled=true"}, want: "ServiceMonitor CRD"},
		"plugin as default SA":    {args: []string{"--set", "kubeletPlugin.serviceAccount.create=false"}, want: "kubeletPlugin.serviceAccount.name"},
		"bad extended resource":   {args: []string{"--set", "deviceClasses.gpuExtendedResourceName=not a name"}, want: "/deviceClasses/gpuExtendedResourceName"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := render(t, tc.args...)
			if err == nil {
				t.Fatalf("rendered with %v; want a refusal mentioning %q", tc.args, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refusal %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestLintStrict(t *testing.T) {
	out, err := exec.Command(helm(t), "lint", "--strict", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("helm lint --strict: %v\n%s", err, out)
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestDriverRootReachesCDISpecs: the host's driver root is what the plugin
// writes into CDI specs (the runtime reads them on the host); the pod
// mounts it at /driver-root and reads the driver there.
func TestDriverRootReachesCDISpecs(t *testing.T) {
	spec := pluginPodSpec(t, "--set", "kubeletPlugin.driverRoot=/run/nvidia/driver")
	c := spec.Containers[0]
	for _, want := range []string{"--driver-root=/run/nvidia/driver", "--container-driver-root=/driver-root"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("plugin args %v lack %s", c.Args, want)
		}
	}
	var volume string
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/driver-root" {
			volume = m.Name
		}
	}
	var hostPath string
	for _, v := range spec.Volumes {
		if v.Name == volume && v.HostPath != nil {
			hostPath = v.HostPath.Path
		}
	}
	if hostPath != "/run/nvidia/driver" {
		t.Errorf("/driver-root is mounted from host path %q, want /run/nvidia/driver", hostPath)
	}
}

// TestHostProcWithRealNVML: with real NVML, which reports host PIDs, the
// plugin gets the host's /proc read-only at /host/proc and the flag that
// makes it translate NVML's PIDs there for the claim metrics; a mock
// backend, claim metrics turned off, or an empty hostProc mount nothing of
// the host's processes.
func TestHostProcWithRealNVML(t *testing.T) {
	for name, tc := range map[string]struct {
		args     []string
		hostPath string // "" for no mount
	}{
		"real NVML":         {hostPath: "/proc"},
		"another host path": {args: []string{"--set", "kubeletPlugin.hostProc=/host-root/proc"}, hostPath: "/host-root/proc"},
		"mock NVML":         {args: []string{"--set", "kubeletPlugin.nvml=mock:dgxh200"}},
		"no claim metrics":  {args: []string{"--set", "kubeletPlugin.claimMetricsInterval=0s"}},
		"turned off":        {args: []string{"--set", "kubeletPlugin.hostProc="}},
	} {
		t.Run(name, func(t *testing.T) {
			spec := pluginPodSpec(t, tc.args...)
			c := spec.Containers[0]
			if got, want := slices.Contains(c.Args, "--host-proc=/host/proc"), tc.hostPath != ""; got != want {
				t.Errorf("plugin args %v: --host-proc=/host/proc present %v, want %v", c.Args, got, want)
			}
			mounts := map[string]string{} // host path by volume name
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					mounts[v.Name] = v.HostPath.Path
				}
			}
			var got []string
			for _, m := range c.VolumeMounts {
				if m.MountPath == "/host/proc" {
					got = append(got, fmt.Sprintf("%s read-only=%v", mounts[m.Name], m.ReadOnly))
				}
				if tc.hostPath != "" && mounts[m.Name] == tc.hostPath && m.MountPath != "/host/proc" {
					t.Errorf("host path %s is also mounted at %s", tc.hostPath, m.MountPath)
				}
			}
			var want []string
			if tc.hostPath != "" {
				want = []string{tc.hostPath + " read-only=true"}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mounts at /host/proc (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHostProcMustBeAbsolute: a relative hostProc is refused by the schema.
func TestHostProcMustBeAbsolute(t *testing.T) {
	if _, err := render(t, "--set", "kubeletPlugin.hostProc=proc"); err == nil || !strings.Contains(err.Error(), "hostProc") {
		t.Errorf("render with a relative hostProc: %v, want an error naming it", err)
	}
}

// TestTryOutNodeReachesTheAPIServer: with hostNetwork and apiServer.host, both
// components' pods run in the node's network namespace and client-go's
// in-cluster configuration finds the API server at the given address (the
// variables the kubelet otherwise sets from the kubernetes Service); by
// default they do neither.
func TestTryOutNodeReachesTheAPIServer(t *testing.T) {
	type got struct {
		HostNetwork bool
		DNSPolicy   corev1.DNSPolicy
		Env         map[string]string
	}
	specs := func(t *testing.T, args ...string) map[string]got {
		t.Helper()
		manifest, err := render(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		objs := objects(t, manifest)
		pods := map[string]corev1.PodSpec{}
		for _, ds := range find[*appsv1.DaemonSet](objs) {
			pods["plugin"] = ds.Spec.Template.Spec
		}
		for _, d := range find[*appsv1.Deployment](objs) {
			pods["controller"] = d.Spec.Template.Spec
		}
		out := map[string]got{}
		for name, spec := range pods {
			g := got{HostNetwork: spec.HostNetwork, DNSPolicy: spec.DNSPolicy, Env: map[string]string{}}
			for _, e := range spec.Containers[0].Env {
				if strings.HasPrefix(e.Name, "KUBERNETES_") {
					g.Env[e.Name] = e.Value
				}
			}
			out[name] = g
		}
		return out
	}
	tryOut := got{HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet, Env: map[string]string{"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}}
	cases := map[string]struct {
		args []string
		want map[string]got
	}{
		"default": {nil, map[string]got{"plugin": {Env: map[string]string{}}, "controller": {Env: map[string]string{}}}},
		"try-out node": {
			[]string{"--set", "kubeletPlugin.hostNetwork=true", "--set", "controller.hostNetwork=true", "--set", "apiServer.host=127.0.0.1", "--set", "apiServer.port=6443"},
			map[string]got{"plugin": tryOut, "controller": tryOut},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, specs(t, tc.args...)); diff != "" {
				t.Errorf("pods (-want +got):\n%s", diff)
			}
		})
	}
}
