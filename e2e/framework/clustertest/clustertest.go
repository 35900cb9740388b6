// Package clustertest holds what the end-to-end suites on the local cluster
// (e2e/localcluster on simulated nodes, e2e/node on a real node) do alike: a
// namespace per test that is emptied of pods afterwards, a pod's events, and
// the end of a run that keeps the cluster's state when something failed.
package clustertest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// KeepEnv is the environment variable that, set to 1, keeps a run's work
// directory (state and component logs) even when every test passed.
const KeepEnv = "TESSERA_E2E_KEEP"

// pollEvery is how often waits look at the cluster: API reads on loopback
// cost little, and the things waited for take a second or more.
const pollEvery = 100 * time.Millisecond

// Namespace creates a namespace for one test, named prefix + the test's name
// made a DNS label + four random letters, and waits for its default service
// account. Cleanup deletes its pods and waits until they are gone (so that
// their claims are unprepared), then its claims, and waits until they are gone
// (so that the next test finds every device free), each wait bounded by
// timeout, then deletes the namespace.
func Namespace(t testing.TB, client kubernetes.Interface, prefix string, timeout time.Duration) string {
	t.Helper()
	// Test and subtest names may hold any character; a namespace name is a DNS label.
	name := prefix + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(t.Name()))
	if len(name) > 50 {
		name = name[:50]
	}
	name = strings.TrimRight(name, "-") + "-" + rand.String(4)
	ctx := t.Context()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	err := wait.PollUntilContextTimeout(ctx, pollEvery, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s has no default service account: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		pods := client.CoreV1().Pods(name)
		if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Errorf("delete pods of %s: %v", name, err)
		}
		err := wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
			list, err := pods.List(ctx, metav1.ListOptions{})
			return err == nil && len(list.Items) == 0, nil
		})
		if err != nil {
			t.Errorf("pods of %s not gone: %v", name, err)
		}
		// A claim outlives its pod until the claim controller deallocates
		// and deletes it (one made from a template) or the namespace goes
		// (one created on its own); until then the scheduler counts its
		// devices as taken. The next test must find them free.
		claims := client.ResourceV1().ResourceClaims(name)
		if err := claims.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Errorf("delete claims of %s: %v", name, err)
		}
		err = wait.PollUntilContextCancel(ctx, pollEvery, true, func(ctx context.Context) (bool, error) {
			list, err := claims.List(ctx, metav1.ListOptions{})
			return err == nil && len(list.Items) == 0, nil
		})
		if err != nil {
			t.Errorf("claims of %s not gone: %v", name, err)
		}
		_ = client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return name
}

// PodEvents returns the pod's events with the given reason, all of them when
// reason is empty; none when they cannot be listed.
func PodEvents(ctx context.Context, client kubernetes.Interface, pod *corev1.Pod, reason string) []corev1.Event {
	sel := fields.Set{"involvedObject.name": pod.Name, "involvedObject.kind": "Pod"}
	if reason != "" {
		sel["reason"] = reason
	}
	list, err := client.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return nil
	}
	return list.Items
}

// EventSummary lists the pod's events, one a line, for a failure message.
func EventSummary(client kubernetes.Interface, pod *corev1.Pod) string {
	var b strings.Builder
	for _, e := range PodEvents(context.Background(), client, pod, "") {
		fmt.Fprintf(&b, "  %s %s %s: %s\n", e.Type, e.Source.Component, e.Reason, e.Message)
	}
	return b.String()
}

// WaitPodEvent waits up to timeout for an event of the pod with the given
// reason and returns the newest such event.
func WaitPodEvent(t testing.TB, client kubernetes.Interface, pod *corev1.Pod, reason string, timeout time.Duration) corev1.Event {
	t.Helper()
	var found corev1.Event
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, timeout, true, func(ctx context.Context) (bool, error) {
		evs := PodEvents(ctx, client, pod, reason)
		if len(evs) == 0 {
			return false, nil
		}
		found = evs[len(evs)-1]
		return true, nil
	})
	if err != nil {
		t.Fatalf("no %s event for pod %s/%s within %s: %v\nevents:\n%s", reason, pod.Namespace, pod.Name, timeout, err, EventSummary(client, pod))
	}
	return found
}

// Finish ends a suite's run: it calls each stop in order, then removes
// workDir, unless the run failed (*code is not 0) or KeepEnv is set. A stop
// that fails fails the run (*code becomes 1): a component that does not stop
// in time is what a user meets on Ctrl-C. It returns what the run's output
// should say: the stops' errors and where the state and logs are kept.
func Finish(workDir string, code *int, stops ...func() error) string {
	var b strings.Builder
	for _, stop := range stops {
		if err := stop(); err != nil {
			fmt.Fprintln(&b, "stop:", err)
			if *code == 0 {
				*code = 1
			}
		}
	}
	if *code != 0 || os.Getenv(KeepEnv) == "1" {
		fmt.Fprintf(&b, "cluster state and component logs kept in %s\n", workDir)
		return b.String()
	}
	if err := os.RemoveAll(workDir); err != nil {
		fmt.Fprintln(&b, "remove the cluster's state:", err)
	}
	return b.String()
}

// EnvOr returns the environment variable key, or def when it is empty.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
