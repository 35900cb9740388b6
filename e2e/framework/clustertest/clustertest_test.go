package clustertest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestNamespace checks the name made from the test's name, the wait for the
// default service account, and that cleanup empties and deletes the namespace.
func TestNamespace(t *testing.T) {
	client := fake.NewClientset()
	// The service account controller's part: a default service account in
	// every new namespace.
	client.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ns := a.(k8stesting.CreateAction).GetObject().(*corev1.Namespace)
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns.Name}}
		if err := client.Tracker().Add(sa); err != nil {
			t.Error(err)
		}
		return false, nil, nil
	})
	// The fake's tracker does not serve delete-collection; the API server does.
	client.PrependReactor("delete-collection", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		list, err := client.Tracker().List(corev1.SchemeGroupVersion.WithResource("pods"), corev1.SchemeGroupVersion.WithKind("Pod"), a.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		for _, p := range list.(*corev1.PodList).Items {
			if err := client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), p.Namespace, p.Name); err != nil {
				return true, nil, err
			}
		}
		return true, nil, nil
	})
	var name string
	t.Run("Some Test/with:odd_chars and a name longer than any DNS label should be", func(t *testing.T) {
		name = Namespace(t, client, "e2e-", 5*time.Second)
		if !regexp.MustCompile(`^e2e-testnamespace-some-test-with-odd-chars-and-a-n-[a-z0-9]{4}$`).MatchString(name) {
			t.Errorf("namespace %q, want e2e- and the test's name as a DNS label of at most 50 characters, then 4 random ones", name)
		}
		if _, err := client.CoreV1().Pods(name).Create(t.Context(), &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	pods, err := client.CoreV1().Pods(name).List(t.Context(), metav1.ListOptions{})
	if err != nil || len(pods.Items) != 0 {
		t.Errorf("pods left after cleanup: %v (err %v)", pods, err)
	}
	if _, err := client.CoreV1().Namespaces().Get(t.Context(), name, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s not deleted by cleanup", name)
	}
}

func TestFinish(t *testing.T) {
	for name, tc := range map[string]struct {
		code     int
		stopErr  error
		keep     string
		wantCode int
		wantKept bool
	}{
		"passed":              {code: 0},
		"failed":              {code: 1, wantCode: 1, wantKept: true},
		"passed, kept":        {code: 0, keep: "1", wantKept: true},
		"passed, stop failed": {code: 0, stopErr: os.ErrClosed, wantCode: 1, wantKept: true},
		"failed, stop failed": {code: 2, stopErr: os.ErrClosed, wantCode: 2, wantKept: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Setenv(KeepEnv, tc.keep)
			dir := filepath.Join(t.TempDir(), "work")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			var order []string
			code := tc.code
			out := Finish(dir, &code,
				func() error { order = append(order, "node"); return tc.stopErr },
				func() error { order = append(order, "control plane"); return nil })
			if strings.Join(order, ",") != "node,control plane" {
				t.Errorf("stopped %v, want node then control plane", order)
			}
			if tc.stopErr != nil && !strings.Contains(out, tc.stopErr.Error()) {
				t.Errorf("output %q does not report the failed stop", out)
			}
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			_, err := os.Stat(dir)
			if kept := err == nil; kept != tc.wantKept || kept != strings.Contains(out, dir) {
				t.Errorf("work dir kept %v (output %q), want %v and said so", kept, out, tc.wantKept)
			}
		})
	}
}
