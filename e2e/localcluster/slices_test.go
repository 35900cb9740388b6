package localcluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
	resourceapi "k8s.io/api/resource/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/demo"
	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// TestSlicesPublished checks that the API server accepted every ResourceSlice each
// plugin published: each node's pool is complete and holds, per GPU, the whole GPU,
// the time-shared GPU and all 25 MIG placements of an H200.
func TestSlicesPublished(t *testing.T) {
	needCluster(t)
	startClean(t)
	gpus := map[string]int{nodeA: 8, nodeB: 8, nodeSmall: 1}
	wholeName := regexp.MustCompile(`^gpu-(\d+)$`)
	for name, count := range gpus {
		t.Run(name, func(t *testing.T) {
			n := node(t, name)
			complete, err := n.PoolComplete(t.Context())
			if err != nil || !complete {
				t.Fatalf("pool of %s incomplete (err %v): some slices were not accepted", name, err)
			}
			slices, err := n.Slices(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			byType := map[string]int{}
			counterSets := map[string]bool{}
			for _, s := range slices {
				if s.Spec.Pool.Name != name {
					t.Errorf("slice %s is in pool %q, want the node's name", s.Name, s.Spec.Pool.Name)
				}
				for _, cs := range s.Spec.SharedCounters {
					counterSets[cs.Name] = true
				}
				for _, d := range s.Spec.Devices {
					typ, ok := demo.Attribute(d.Attributes, "type")
					if !ok || typ.StringValue == nil {
						t.Errorf("device %s has no type attribute", d.Name)
						continue
					}
					byType[*typ.StringValue]++
					if *typ.StringValue == "mig" {
						checkConsumes(t, d)
					}
					if m := wholeName.FindStringSubmatch(d.Name); m != nil && *typ.StringValue != "gpu" {
						t.Errorf("device %s has type %s, want gpu", d.Name, *typ.StringValue)
					}
				}
			}
			checkMatchesOffline(t, n.Options(), slices)
			want := map[string]int{"gpu": count, "shared": count, "mig": 25 * count}
			for typ, n := range want {
				if byType[typ] != n {
					t.Errorf("%d devices of type %s published, want %d (all: %v)", byType[typ], typ, n, byType)
				}
			}
			for i := range count {
				if !counterSets[fmt.Sprintf("gpu-%d", i)] {
					t.Errorf("counter set gpu-%d not published (have %v)", i, counterSets)
				}
			}
		})
	}
}

// checkConsumes checks that a MIG device draws on its GPU's counter set, which is
// what keeps the scheduler from overlapping partitions.
func checkConsumes(t *testing.T, d resourceapi.Device) {
	t.Helper()
	if len(d.ConsumesCounters) == 0 {
		t.Errorf("MIG device %s consumes no counters", d.Name)
		return
	}
	re := regexp.MustCompile(`^gpu-\d+$`)
	for _, c := range d.ConsumesCounters {
		if !re.MatchString(c.CounterSet) {
			t.Errorf("MIG device %s consumes from counter set %q, want gpu-N", d.Name, c.CounterSet)
		}
	}
}

// checkMatchesOffline compares what the API server holds with what the plugin says,
// without a cluster, that it publishes for the same node: every device and counter
// set, field by field, so that nothing was dropped or rewritten on the way in.
func checkMatchesOffline(t *testing.T, opts cluster.NodeOptions, published []resourceapi.ResourceSlice) {
	t.Helper()
	args := []string{"slices", "--nvml=" + opts.NVML, "--node-name=" + opts.Name}
	out, err := exec.CommandContext(t.Context(), cluster.DefaultPluginBinary(), args...).Output()
	if err != nil {
		t.Fatalf("dra-kubelet-plugin %v: %v", args, err)
	}
	offline := decodeSlices(t, out)
	devices := func(list []resourceapi.ResourceSlice) map[string]resourceapi.Device {
		m := map[string]resourceapi.Device{}
		for _, s := range list {
			for _, d := range s.Spec.Devices {
				m[d.Name] = d
			}
		}
		return m
	}
	counters := func(list []resourceapi.ResourceSlice) map[string]resourceapi.CounterSet {
		m := map[string]resourceapi.CounterSet{}
		for _, s := range list {
			for _, c := range s.Spec.SharedCounters {
				m[c.Name] = c
			}
		}
		return m
	}
	if diff := cmp.Diff(devices(offline), devices(published)); diff != "" {
		t.Errorf("published devices differ from `dra-kubelet-plugin slices` (-offline +published):\n%s", diff)
	}
	if diff := cmp.Diff(counters(offline), counters(published)); diff != "" {
		t.Errorf("published counter sets differ from `dra-kubelet-plugin slices` (-offline +published):\n%s", diff)
	}
}

func decodeSlices(t *testing.T, stream []byte) []resourceapi.ResourceSlice {
	t.Helper()
	var out []resourceapi.ResourceSlice
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read slices YAML: %v", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "---" {
			continue
		}
		var s resourceapi.ResourceSlice
		if err := yaml.UnmarshalStrict(doc, &s); err != nil {
			t.Fatalf("decode slice: %v\n%s", err, doc)
		}
		out = append(out, s)
	}
}
