package demo

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/e2e/framework/kubelet"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// Row is one allocated device of one pod.
type Row struct {
	Node, GPU, Device, Claim, Pod, Got string
}

// Rows describes, for every pod in namespace, where its devices came from and what
// its containers got.
func Rows(ctx context.Context, client kubernetes.Interface, namespace string) ([]Row, error) {
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.SortFunc(pods.Items, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	devices, err := deviceIndex(ctx, client)
	if err != nil {
		return nil, err
	}
	var rows []Row
	for _, pod := range pods.Items {
		got := summarize(ctx, client, &pod)
		claimed := false
		for _, s := range pod.Status.ResourceClaimStatuses {
			if s.ResourceClaimName == nil {
				continue
			}
			claim, err := client.ResourceV1().ResourceClaims(namespace).Get(ctx, *s.ResourceClaimName, metav1.GetOptions{})
			if err != nil || claim.Status.Allocation == nil {
				continue
			}
			for _, r := range claim.Status.Allocation.Devices.Results {
				claimed = true
				d := devices[r.Pool+"/"+r.Device]
				name := r.Device
				if r.ShareID != nil {
					name += " (share " + shortID(string(*r.ShareID)) + ")"
				}
				rows = append(rows, Row{Node: pod.Spec.NodeName, GPU: gpuOf(d), Device: name, Claim: claim.Name, Pod: pod.Name, Got: got})
			}
		}
		if !claimed {
			rows = append(rows, Row{Node: orNone(pod.Spec.NodeName), GPU: "-", Device: "-", Claim: "-", Pod: pod.Name, Got: got})
		}
	}
	slices.SortStableFunc(rows, func(a, b Row) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), cmp.Compare(gpuIndex(a.GPU), gpuIndex(b.GPU)), strings.Compare(a.Device, b.Device))
	})
	return rows, nil
}

// gpuIndex orders GPU column values ("3 NVIDIA H200") by index.
func gpuIndex(gpu string) int {
	n, err := strconv.Atoi(strings.Fields(gpu + " ")[0])
	if err != nil {
		return -1
	}
	return n
}

// PrintTable writes rows as an aligned table.
func PrintTable(w io.Writer, rows []Row) error {
	// The tabwriter holds every cell until Flush, which is where writes to w
	// happen and fail.
	var table strings.Builder
	table.WriteString("NODE\tGPU\tDEVICE\tCLAIM\tPOD\tCONTAINER GOT\n")
	for _, r := range rows {
		table.WriteString(strings.Join([]string{r.Node, r.GPU, r.Device, r.Claim, r.Pod, r.Got}, "\t") + "\n")
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if _, err := io.WriteString(tw, table.String()); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// summarize says in a line what the pod's containers got, or why they got nothing.
func summarize(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod) string {
	if raw := pod.Annotations[kubelet.EditsAnnotation]; raw != "" && pod.Status.Phase == corev1.PodRunning {
		var edits map[string]kubelet.ContainerEdits
		if err := json.Unmarshal([]byte(raw), &edits); err != nil {
			return "unreadable edits: " + err.Error()
		}
		var parts []string
		for _, name := range slices.Sorted(maps.Keys(edits)) {
			parts = append(parts, name+": "+describe(edits[name]))
		}
		return strings.Join(parts, "; ")
	}
	events, err := client.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.uid": string(pod.UID), "type": corev1.EventTypeWarning}.String(),
	})
	if err == nil && len(events.Items) > 0 {
		latest := slices.MaxFunc(events.Items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
		return string(pod.Status.Phase) + ": " + latest.Reason + ": " + truncate(latest.Message, 120)
	}
	return string(pod.Status.Phase)
}

// deviceIndex maps pool/device to the device's attributes across all slices.
func deviceIndex(ctx context.Context, client kubernetes.Interface) (map[string]map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, error) {
	list, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list ResourceSlices: %w", err)
	}
	out := map[string]map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{}
	for _, s := range list.Items {
		for _, d := range s.Spec.Devices {
			out[s.Spec.Pool.Name+"/"+d.Name] = d.Attributes
		}
	}
	return out, nil
}

// Attribute returns a device attribute by its unqualified name, however the
// driver qualified it.
func Attribute(attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute, name string) (resourceapi.DeviceAttribute, bool) {
	if a, ok := attrs[resourceapi.QualifiedName(name)]; ok {
		return a, true
	}
	a, ok := attrs[resourceapi.QualifiedName(gpuapi.DriverName+"/"+name)]
	return a, ok
}

func gpuOf(attrs map[resourceapi.QualifiedName]resourceapi.DeviceAttribute) string {
	if attrs == nil {
		return "?"
	}
	index := "?"
	if a, ok := Attribute(attrs, "index"); ok && a.IntValue != nil {
		index = fmt.Sprint(*a.IntValue)
	}
	name := ""
	if a, ok := Attribute(attrs, "productName"); ok && a.StringValue != nil {
		name = " " + *a.StringValue
	}
	return index + name
}

func shortID(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "(unscheduled)"
	}
	return s
}

// describe condenses container edits to what tells devices apart: the visible
// device, any MPS limits and the GPU-specific device nodes.
func describe(e kubelet.ContainerEdits) string {
	var visible, memLimit, threads string
	for _, kv := range e.Env {
		key, value, _ := strings.Cut(kv, "=")
		switch key {
		case "NVIDIA_VISIBLE_DEVICES":
			visible = value
			if len(visible) > 12 {
				visible = visible[:12] + "…"
			}
		case "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT":
			memLimit = value
		case "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE":
			threads = value + "%"
		}
	}
	var nodes []string
	for _, n := range e.DeviceNodes {
		base := n[strings.LastIndex(n, "/")+1:]
		if base != "nvidiactl" && !strings.HasPrefix(base, "nvidia-uvm") {
			nodes = append(nodes, base)
		}
	}
	out := visible
	if memLimit != "" || threads != "" {
		out += fmt.Sprintf(" MPS(mem %s, SMs %s)", memLimit, threads)
	}
	if len(nodes) > 0 {
		out += " dev " + strings.Join(nodes, ",")
	}
	if out == "" {
		return "nothing"
	}
	return strings.TrimSpace(out)
}
