package localcluster

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/e2e/framework/cluster"
)

// metricsReader is the chart's ClusterRole for scrapers of Tessera's metrics.
const metricsReader = cluster.ReleaseName + "-metrics-reader"

// TestMetricsNeedAnAuthorisedToken scrapes the controller and a kubelet
// plugin as the chart serves them (TLS, delegated authentication and
// authorisation): without a token the scrape is refused (401), with the token
// of a ServiceAccount that may not get /metrics it is forbidden (403), and a
// ServiceAccount bound to the chart's metrics-reader role gets the metrics.
func TestMetricsNeedAnAuthorisedToken(t *testing.T) {
	needCluster(t)
	ctx := testContext(t)
	stranger := serviceAccountToken(t, ctx, "e2e-stranger-"+rand.String(4), "")
	reader := serviceAccountToken(t, ctx, "e2e-scraper-"+rand.String(4), metricsReader)
	for name, tc := range map[string]struct {
		addr, metric string
	}{
		"controller": {tenancyController.MetricsAddress, "controller_runtime_reconcile_total"},
		"plugin":     {node(t, nodeA).MetricsAddress, "tessera_"},
	} {
		t.Run(name, func(t *testing.T) {
			if code, _ := scrape(t, ctx, tc.addr, ""); code != http.StatusUnauthorized {
				t.Errorf("a scrape without a token got %d, want 401", code)
			}
			if code, _ := scrape(t, ctx, tc.addr, stranger); code != http.StatusForbidden {
				t.Errorf("a scrape by a ServiceAccount without %s got %d, want 403", metricsReader, code)
			}
			body := scrapeAuthorised(t, ctx, tc.addr, reader)
			if !strings.Contains(body, tc.metric) {
				t.Errorf("the authorised scrape holds no %s metric", tc.metric)
			}
		})
	}
}

// serviceAccountToken creates a ServiceAccount in the release's namespace,
// bound to clusterRole unless it is empty, and returns a token of it.
func serviceAccountToken(t *testing.T, ctx context.Context, name, clusterRole string) string {
	t.Helper()
	ns := cluster.ReleaseNamespace
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if _, err := local.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = local.Client.CoreV1().ServiceAccounts(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	if clusterRole != "" {
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: clusterRole},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: name, Namespace: ns}},
		}
		if _, err := local.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = local.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}
	tok, err := local.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Status.Token
}

// scrapeAuthorised scrapes addr with token until the scrape is served (the
// authorizer and the endpoints' decision caches take a moment to see a new
// binding) and returns the metrics.
func scrapeAuthorised(t *testing.T, ctx context.Context, addr, token string) string {
	t.Helper()
	var code int
	var body string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, waitTimeout, true, func(ctx context.Context) (bool, error) {
		code, body = scrape(t, ctx, addr, token)
		return code == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("a scrape of %s by a ServiceAccount bound to %s got %d, want 200: %s", addr, metricsReader, code, body)
	}
	return body
}

// scrape gets https://addr/metrics with token as the bearer token (none when
// empty) and returns the status code and body. The endpoints serve a
// self-signed certificate here, so it is not verified.
func scrape(t *testing.T, ctx context.Context, addr, token string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback, self-signed
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer func() { _ = resp.Body.Close() }() // read only
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(body)
}
