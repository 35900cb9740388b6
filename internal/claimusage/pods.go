package claimusage

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/tessera-gpu/tessera/internal/checkpoint"
)

// PodLookup returns the pods a claim is reserved for, from the claim as the
// API server has it.
type PodLookup func(ctx context.Context, namespace, name, uid string) ([]Pod, error)

// Pod is a pod a claim is reserved for.
type Pod struct {
	Name string
	// UID is what the pod's cgroup is named after, which attributes its
	// processes on a share's GPU to the claim (WithHostPIDs).
	UID string
}

// ClaimPods is a PodLookup that gets the claim from the API server (the
// plugin may get claims) and checks it is still the claim of that UID.
func ClaimPods(client kubernetes.Interface) PodLookup {
	return func(ctx context.Context, namespace, name, uid string) ([]Pod, error) {
		claim, err := client.ResourceV1().ResourceClaims(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get claim %s/%s: %w", namespace, name, err)
		}
		if string(claim.UID) != uid {
			return nil, nil // a new claim of the same name
		}
		return reservedPods(claim), nil
	}
}

// reservedPods returns the pods in a claim's status.reservedFor, sorted by
// name.
func reservedPods(claim *resourceapi.ResourceClaim) []Pod {
	var pods []Pod
	for _, ref := range claim.Status.ReservedFor {
		if ref.APIGroup == "" && ref.Resource == "pods" {
			pods = append(pods, Pod{Name: ref.Name, UID: string(ref.UID)})
		}
	}
	slices.SortFunc(pods, func(a, b Pod) int { return strings.Compare(a.Name, b.Name) })
	return pods
}

// podCache holds each claim's pods: recorded at prepare, where the kubelet
// hands over the whole claim; otherwise looked up, and looked up again
// every refresh, since pods that share a claim can join it after the
// kubelet prepared it for the first.
type podCache struct {
	lookup  PodLookup
	refresh time.Duration
	now     func() time.Time

	mu      sync.Mutex
	byClaim map[string]podEntry
}

type podEntry struct {
	pods []Pod
	// at is when pods were learnt; zero forces a lookup.
	at time.Time
}

func newPodCache() *podCache {
	return &podCache{now: time.Now, byClaim: map[string]podEntry{}}
}

func (p *podCache) record(claim *resourceapi.ResourceClaim) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byClaim[string(claim.UID)] = podEntry{pods: reservedPods(claim), at: p.now()}
}

func (p *podCache) forget(uid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byClaim, uid)
}

// keep forgets every claim but these.
func (p *podCache) keep(claims []*checkpoint.Claim) {
	p.mu.Lock()
	defer p.mu.Unlock()
	live := make(map[string]bool, len(claims))
	for _, c := range claims {
		live[c.UID] = true
	}
	for uid := range p.byClaim {
		if !live[uid] {
			delete(p.byClaim, uid)
		}
	}
}

// get returns the claim's pods, at least one (named "" when none is known),
// looking them up when they are unknown or due a refresh. A failed lookup
// keeps what was known, and is tried again at the next sample.
func (p *podCache) get(ctx context.Context, c *checkpoint.Claim) []Pod {
	p.mu.Lock()
	e, known := p.byClaim[c.UID]
	due := !known || (p.refresh > 0 && p.now().Sub(e.at) >= p.refresh)
	p.mu.Unlock()
	if due && p.lookup != nil {
		pods, err := p.lookup(ctx, c.Namespace, c.Name, c.UID)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Looking up a claim's pods failed", "claim", klog.KRef(c.Namespace, c.Name), "err", err)
		} else {
			e = podEntry{pods: pods, at: p.now()}
			p.mu.Lock()
			p.byClaim[c.UID] = e
			p.mu.Unlock()
		}
	}
	if len(e.pods) == 0 {
		return []Pod{{}}
	}
	return e.pods
}
