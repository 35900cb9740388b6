package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2/ktesting"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// fakeReviewAPI is an API server that answers only TokenReviews and
// SubjectAccessReviews, as the authentication.k8s.io/v1 and
// authorization.k8s.io/v1 API reference describes them: the TokenReview
// status says whether the token is authenticated and as whom, the
// SubjectAccessReview status whether that user may do the non-resource
// request. controller-runtime's FilterProvider takes a rest.Config, not a
// clientset, so the fake is HTTP.
func fakeReviewAPI(t *testing.T, users map[string]string, allowed map[string]bool) *rest.Config {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/apis/authentication.k8s.io/v1/tokenreviews":
			var tr authenticationv1.TokenReview
			if err := json.NewDecoder(r.Body).Decode(&tr); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if user, ok := users[tr.Spec.Token]; ok {
				tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, User: authenticationv1.UserInfo{Username: user}}
			} else {
				// The API server says why, e.g. for an expired token.
				tr.Status = authenticationv1.TokenReviewStatus{Error: "token has expired"}
			}
			_ = json.NewEncoder(w).Encode(&tr)
		case "/apis/authorization.k8s.io/v1/subjectaccessreviews":
			var sar authorizationv1.SubjectAccessReview
			if err := json.NewDecoder(r.Body).Decode(&sar); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			if nr := sar.Spec.NonResourceAttributes; nr != nil {
				sar.Status.Allowed = allowed[sar.Spec.User+" "+nr.Verb+" "+nr.Path]
			}
			_ = json.NewEncoder(w).Encode(&sar)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	// JSON: this fake decodes no protobuf.
	return &rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}}
}

// TestMetricsNeedAuthorisedToken: the controller's /metrics lists every
// tenant's budget and usage, so it is served over TLS only to a scraper the
// API server authenticates and authorises for get on /metrics.
func TestMetricsNeedAuthorisedToken(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := fakeReviewAPI(t,
		map[string]string{"prometheus-token": "system:serviceaccount:monitoring:prometheus", "tenant-token": "system:serviceaccount:team-a:default"},
		map[string]bool{"system:serviceaccount:monitoring:prometheus get /metrics": true})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	opts, err := metricsOptions(Options{MetricsAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	httpClient, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := metricsserver.NewServer(opts, cfg, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	}()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	scrape := func(scheme, token string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/metrics", nil)
		if err != nil {
			return 0, "", err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), err
	}
	if err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		_, _, err := scrape("https", "")
		return err == nil, nil
	}); err != nil {
		t.Fatalf("metrics server did not come up: %v", err)
	}

	for name, tc := range map[string]struct {
		scheme, token string
		status        int
		withMetrics   bool
	}{
		"no token":                {scheme: "https", status: http.StatusUnauthorized},
		"a token the API refuses": {scheme: "https", token: "forged", status: http.StatusUnauthorized},
		"a tenant's token":        {scheme: "https", token: "tenant-token", status: http.StatusForbidden},
		"plain HTTP":              {scheme: "http", token: "prometheus-token", status: http.StatusBadRequest},
		"an authorised scraper":   {scheme: "https", token: "prometheus-token", status: http.StatusOK, withMetrics: true},
	} {
		t.Run(name, func(t *testing.T) {
			status, body, err := scrape(tc.scheme, tc.token)
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.status {
				t.Errorf("status %d, want %d (body %q)", status, tc.status, body)
			}
			if got := strings.Contains(body, "tessera_sharing_scheduler_nudges_total"); got != tc.withMetrics {
				t.Errorf("body lists the controller's metrics: %v, want %v", got, tc.withMetrics)
			}
		})
	}
}

func TestMetricsCertificateMustExist(t *testing.T) {
	if _, err := metricsOptions(Options{MetricsAddr: ":0", MetricsCertDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "tls.crt") {
		t.Errorf("metrics options with an empty certificate directory: %v, want an error naming tls.crt", err)
	}
}
