package metrics

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	certutil "k8s.io/client-go/util/cert"
	"k8s.io/klog/v2/ktesting"
)

// reviewer is a fake API server's answer to TokenReviews and
// SubjectAccessReviews, as the authentication.k8s.io/v1 and
// authorization.k8s.io/v1 API reference describes them: a TokenReview's
// status says whether the token is authenticated and as whom; a
// SubjectAccessReview's status says whether that user may do the
// non-resource request (verb on path).
type reviewer struct {
	users                       map[string]string // token -> user name
	allowed                     map[string]bool   // "user verb path" -> allowed
	tokenReviews, accessReviews atomic.Int32
}

func (r *reviewer) client() *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r.tokenReviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenReview).DeepCopy()
		if user, ok := r.users[tr.Spec.Token]; ok {
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{
				Username: user, Groups: []string{"system:serviceaccounts", "system:authenticated"},
			}}
		} else {
			tr.Status = authenticationv1.TokenReviewStatus{Error: "token not valid"}
		}
		return true, tr, nil
	})
	c.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r.accessReviews.Add(1)
		sar := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SubjectAccessReview).DeepCopy()
		if nr := sar.Spec.NonResourceAttributes; nr != nil && r.allowed[sar.Spec.User+" "+nr.Verb+" "+nr.Path] {
			sar.Status.Allowed = true
		}
		return true, sar, nil
	})
	return c
}

// serveSecure starts m's secure metrics server and returns its base URL and
// an HTTPS client that trusts any certificate (as a scraper of a
// self-signed endpoint must).
func serveSecure(t *testing.T, m *Metrics, opts ...ServeOption) (string, *http.Client) {
	t.Helper()
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.serve(ctx, lis, opts...) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve after cancel: %v", err)
		}
	})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	return "https://" + lis.Addr().String(), client
}

func scrape(t *testing.T, client *http.Client, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestSecureServeAuthenticatesAndAuthorises(t *testing.T) {
	r := &reviewer{
		users:   map[string]string{"prometheus-token": "system:serviceaccount:monitoring:prometheus", "other-token": "system:serviceaccount:team-a:default"},
		allowed: map[string]bool{"system:serviceaccount:monitoring:prometheus get /metrics": true},
	}
	url, client := serveSecure(t, New(), Secure(r.client(), ""))
	for name, tc := range map[string]struct {
		token       string
		status      int
		withMetrics bool
	}{
		"no token":                {status: http.StatusUnauthorized},
		"a token the API refuses": {token: "forged", status: http.StatusUnauthorized},
		"a user without /metrics": {token: "other-token", status: http.StatusForbidden},
		"a user allowed /metrics": {token: "prometheus-token", status: http.StatusOK, withMetrics: true},
	} {
		t.Run(name, func(t *testing.T) {
			status, body := scrape(t, client, url, tc.token)
			if status != tc.status {
				t.Errorf("status %d, want %d (body %q)", status, tc.status, body)
			}
			if got := strings.Contains(body, "tessera_mig_instances"); got != tc.withMetrics {
				t.Errorf("body lists metrics: %v, want %v", got, tc.withMetrics)
			}
		})
	}
	// A plain-HTTP scrape gets no metrics either.
	resp, err := http.Get(strings.Replace(url, "https://", "http://", 1) + "/metrics")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if strings.Contains(string(body), "tessera_") {
			t.Error("plain HTTP scrape got metrics")
		}
	}
}

// Scrapes every 30 s must not cost two API requests each: decisions are
// cached for a while, allowed ones longer than refusals.
func TestDecisionsAreCached(t *testing.T) {
	r := &reviewer{
		users:   map[string]string{"good": "prometheus", "unallowed": "someone"},
		allowed: map[string]bool{"prometheus get /metrics": true},
	}
	now := time.Unix(1000, 0)
	auth := newDelegatedAuth(r.client())
	auth.now = func() time.Time { return now }
	_, ctx := ktesting.NewTestContext(t)
	srv := auth.wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))
	do := func(token string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := &statusRecorder{header: http.Header{}}
		srv.ServeHTTP(rec, req)
		return rec.status
	}
	type counts struct{ Status, TokenReviews, AccessReviews int }
	step := func(token string, advance time.Duration) counts {
		now = now.Add(advance)
		s := do(token)
		return counts{s, int(r.tokenReviews.Load()), int(r.accessReviews.Load())}
	}
	got := []counts{
		step("good", 0),
		step("good", 30*time.Second),     // cached
		step("good", 31*time.Second),     // allowTTL passed: asked again
		step("unallowed", 0),             // its own reviews
		step("unallowed", 5*time.Second), // cached refusal
		step("unallowed", 6*time.Second), // denyTTL passed
	}
	want := []counts{
		{200, 1, 1},
		{200, 1, 1},
		{200, 2, 2},
		{403, 3, 3},
		{403, 3, 3},
		{403, 4, 4},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("status and reviews after each scrape (-want +got):\n%s", diff)
	}
}

type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code }

// A given certificate is served, and a renewed one is picked up without a
// restart.
func TestSecureServeWithCertificate(t *testing.T) {
	dir := t.TempDir()
	writeCert := func(host string) {
		certPEM, keyPEM, err := certutil.GenerateSelfSignedCertKey(host, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, CertFile), certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCert("first.example")
	r := &reviewer{users: map[string]string{"t": "u"}, allowed: map[string]bool{"u get /metrics": true}}
	url, client := serveSecure(t, New(), Secure(r.client(), dir))
	served := func() string {
		t.Helper()
		client.CloseIdleConnections()
		resp, err := client.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); !strings.HasPrefix(got, "first.example") {
		t.Errorf("served certificate %q, want the one in the certificate directory", got)
	}
	// A later modification time, as a Secret volume's update gives.
	writeCert("second.example")
	later := time.Now().Add(time.Minute)
	for _, f := range []string{CertFile, KeyFile} {
		if err := os.Chtimes(filepath.Join(dir, f), later, later); err != nil {
			t.Fatal(err)
		}
	}
	if got := served(); !strings.HasPrefix(got, "second.example") {
		t.Errorf("served certificate %q after renewal, want the renewed one", got)
	}
}

func TestSecureServeNeedsAClient(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Were it to serve, it would stop without an error when ctx ends.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := New().serve(ctx, lis, Secure(nil, "")); err == nil {
		t.Error("secure serving without a client for reviews served")
	}
}

func TestSecureServeRefusesMissingCertificate(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	err = New().serve(ctx, lis, Secure(fake.NewClientset(), t.TempDir()))
	if err == nil || !strings.Contains(err.Error(), CertFile) {
		t.Errorf("serve with an empty certificate directory: %v, want an error naming %s", err, CertFile)
	}
}
