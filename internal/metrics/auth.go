package metrics

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// Delegated authentication and authorisation of scrapes, as the API
// server's own components and controller-runtime's
// filters.WithAuthenticationAndAuthorization do it: the scraper presents a
// bearer token, a TokenReview says who it is, and a SubjectAccessReview
// whether that user may "get" the non-resource URL (/metrics). Both binaries
// use this one filter. Written on client-go rather than with
// k8s.io/apiserver's delegating authenticator, which controller-runtime's
// filter uses, because that would add some 190 packages (CEL,
// OpenTelemetry) to the privileged node binary for two API calls and a
// cache, and because controller-runtime's filter answers 500, not 401, to a
// token the API server refuses with a reason (an expired one), so that a
// scraper's bad credentials look like a broken endpoint.

const (
	// allowTTL is how long an allowed token is let in without asking the
	// API server again: a scraper every 30 s costs two reviews every few
	// scrapes, and a revoked token keeps access at most this long.
	allowTTL = time.Minute
	// denyTTL keeps a scraper with a bad token or no permission from
	// costing two API requests on every scrape.
	denyTTL = 10 * time.Second
	// maxCached bounds the cache against a flood of distinct tokens.
	maxCached = 1024
	// reviewTimeout bounds one scrape's wait for the API server.
	reviewTimeout = 10 * time.Second
)

// decision is a cached outcome of the reviews for one token, verb and path.
type decision struct {
	status  int // http.StatusOK, StatusUnauthorized or StatusForbidden
	user    string
	expires time.Time
}

// delegatedAuth lets a request through only if the API server authenticates
// its bearer token and authorises its user for the request's verb and path.
type delegatedAuth struct {
	client kubernetes.Interface
	now    func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]decision
}

// AuthFilter returns a wrapper that lets a request through to the handler
// it wraps only if the API server, asked through client, authenticates the
// request's bearer token and authorises its user for the request's verb
// and path (401 and 403 otherwise). Decisions are cached: allowed ones for
// a minute, refusals for 10 s. Wrapped handlers share one cache.
func AuthFilter(client kubernetes.Interface) func(http.Handler) http.Handler {
	return newDelegatedAuth(client).wrap
}

func newDelegatedAuth(client kubernetes.Interface) *delegatedAuth {
	return &delegatedAuth{client: client, now: time.Now, cache: map[[sha256.Size]byte]decision{}}
}

// wrap returns next behind authentication and authorisation.
func (a *delegatedAuth) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		logger := klog.FromContext(r.Context())
		token, ok := bearerToken(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		verb := strings.ToLower(r.Method)
		// The key holds no token in the clear: the cache outlives requests.
		key := sha256.Sum256([]byte(verb + " " + r.URL.Path + "\x00" + token))
		d, err := a.decide(r.Context(), key, token, verb, r.URL.Path)
		if err != nil {
			// Not cached: the next scrape asks again.
			logger.Error(err, "Cannot review a metrics scrape")
			http.Error(w, "Authentication or authorization failed", http.StatusInternalServerError)
			return
		}
		switch d.status {
		case http.StatusOK:
			next.ServeHTTP(w, r)
		case http.StatusUnauthorized:
			logger.V(4).Info("Metrics scrape with an invalid token")
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
		default:
			logger.V(4).Info("Metrics scrape not authorised", "user", d.user, "verb", verb, "path", r.URL.Path)
			http.Error(w, fmt.Sprintf("Authorization denied for user %s", d.user), http.StatusForbidden)
		}
	})
}

// bearerToken is the request's "Authorization: Bearer <token>", as the API
// server reads it (the scheme is case-insensitive).
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "bearer") || token == "" {
		return "", false
	}
	return token, true
}

// decide returns the cached decision for key, or asks the API server.
func (a *delegatedAuth) decide(ctx context.Context, key [sha256.Size]byte, token, verb, path string) (decision, error) {
	now := a.now()
	a.mu.Lock()
	d, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(d.expires) {
		return d, nil
	}
	ctx, cancel := context.WithTimeout(ctx, reviewTimeout)
	defer cancel()
	d, err := a.review(ctx, token, verb, path)
	if err != nil {
		return decision{}, err
	}
	d.expires = now.Add(denyTTL)
	if d.status == http.StatusOK {
		d.expires = now.Add(allowTTL)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= maxCached {
		for k, old := range a.cache {
			if !now.Before(old.expires) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= maxCached {
			// Still full of live entries: start again rather than grow.
			clear(a.cache)
		}
	}
	a.cache[key] = d
	return d, nil
}

// review asks the API server who token is and whether that user may verb path.
func (a *delegatedAuth) review(ctx context.Context, token, verb, path string) (decision, error) {
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token},
	}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("create TokenReview: %w", err)
	}
	if !tr.Status.Authenticated {
		return decision{status: http.StatusUnauthorized}, nil
	}
	user := tr.Status.User
	extra := make(map[string]authorizationv1.ExtraValue, len(user.Extra))
	for k, v := range user.Extra {
		extra[k] = authorizationv1.ExtraValue(v)
	}
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user.Username, UID: user.UID, Groups: user.Groups, Extra: extra,
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: verb},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return decision{}, fmt.Errorf("create SubjectAccessReview for %s: %w", user.Username, err)
	}
	if !sar.Status.Allowed || sar.Status.Denied {
		return decision{status: http.StatusForbidden, user: user.Username}, nil
	}
	return decision{status: http.StatusOK, user: user.Username}, nil
}
