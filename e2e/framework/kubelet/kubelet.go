// Package kubelet is a kubelet stand-in for simulated nodes: it registers DRA plugins
// through the real plugin-registration API, prepares and unprepares the ResourceClaims
// of pods bound to its node through the real DRA gRPC API, and records what each
// container would get from the returned CDI devices. It runs no containers.
package kubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	resourcelisters "k8s.io/client-go/listers/resource/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	drapb "k8s.io/kubelet/pkg/apis/dra/v1"
)

// Event reasons, as kubelet uses them.
const (
	ReasonFailedPrepare   = "FailedPrepareDynamicResources"
	ReasonFailedUnprepare = "FailedUnprepareDynamicResources"
	// ReasonFailedStart is the kubelet's reason when the runtime cannot
	// start a container (k8s.io/kubernetes/pkg/kubelet/events.FailedToStartContainer).
	ReasonFailedStart = "Failed"
)

// Options configure a Kubelet.
type Options struct {
	NodeName string
	Client   kubernetes.Interface
	// RegistrarDir is where plugins create their registration sockets.
	RegistrarDir string
	// CDIRoot is where plugins write CDI specs.
	CDIRoot string
}

// Kubelet is the stand-in for one node.
type Kubelet struct {
	opts     Options
	registry *registry
	queue    workqueue.TypedRateLimitingInterface[string]
	pods     corelisters.PodLister
	claims   resourcelisters.ResourceClaimLister
	recorder record.EventRecorder

	mu       sync.Mutex
	prepared map[types.UID]*PreparedClaim  // by claim UID
	podRefs  map[string]map[types.UID]bool // pod key -> claim UIDs it holds
}

// PreparedClaim is a claim prepared on this node and the pods using it.
type PreparedClaim struct {
	Namespace, Name string
	UID             types.UID
	Driver          string
	Devices         []*drapb.Device
	// Pods are the keys (namespace/name) of the pods on the node that use the claim.
	Pods map[string]bool
}

// New returns a stand-in for opts.NodeName; Run starts it.
func New(opts Options) *Kubelet {
	return &Kubelet{
		opts:     opts,
		registry: newRegistry(opts.RegistrarDir),
		// A failed prepare is retried like kubelet retries a pod sync: soon at first,
		// then every few seconds.
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 5*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "kubelet-" + opts.NodeName},
		),
		prepared: map[types.UID]*PreparedClaim{},
		podRefs:  map[string]map[types.UID]bool{},
	}
}

// Run serves until ctx ends. It returns once the informers have synced and the
// workers run in the background; they stop with ctx.
func (k *Kubelet) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: k.opts.Client.CoreV1().Events("")})
	k.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: k.opts.NodeName})

	podFactory := informers.NewSharedInformerFactoryWithOptions(k.opts.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.opts.NodeName).String()
		}))
	factory := informers.NewSharedInformerFactory(k.opts.Client, 0)
	podInformer := podFactory.Core().V1().Pods()
	claimInformer := factory.Resource().V1().ResourceClaims()
	k.pods = podInformer.Lister()
	k.claims = claimInformer.Lister()

	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueuePod,
		UpdateFunc: func(_, obj any) { enqueuePod(obj) },
		DeleteFunc: enqueuePod,
	}); err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	// A pod waits for its claims to be allocated and reserved for it; claim changes
	// wake the pods they are reserved for.
	enqueueReserved := func(obj any) {
		claim, ok := obj.(*resourceapi.ResourceClaim)
		if !ok {
			return
		}
		for _, ref := range claim.Status.ReservedFor {
			if ref.Resource == "pods" && ref.APIGroup == "" {
				k.queue.Add(claim.Namespace + "/" + ref.Name)
			}
		}
	}
	if _, err := claimInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueueReserved,
		UpdateFunc: func(_, obj any) { enqueueReserved(obj) },
	}); err != nil {
		return fmt.Errorf("watch claims: %w", err)
	}

	go k.registry.run(ctx)
	podFactory.Start(ctx.Done())
	factory.Start(ctx.Done())
	for typ, ok := range podFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer for node %s", typ, k.opts.NodeName)
		}
	}
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %v informer for node %s", typ, k.opts.NodeName)
		}
	}
	go func() {
		<-ctx.Done()
		k.queue.ShutDown()
		broadcaster.Shutdown()
		podFactory.Shutdown()
		factory.Shutdown()
	}()
	for range 4 {
		go func() {
			for k.processNext(ctx) {
			}
		}()
	}
	logger.V(1).Info("Kubelet stand-in running", "node", k.opts.NodeName)
	return nil
}

// WaitForPlugin blocks until driver has registered at least generation times (1 for
// the first registration) and returns its DRA client.
func (k *Kubelet) WaitForPlugin(ctx context.Context, driver string, generation int) (drapb.DRAPluginClient, error) {
	p, err := k.registry.waitRegistered(ctx, driver, generation-1)
	if err != nil {
		return nil, err
	}
	return p.client, nil
}

// Registrations returns how often driver has registered (0 if never).
func (k *Kubelet) Registrations(driver string) int {
	if p := k.registry.get(driver); p != nil {
		return p.generation
	}
	return 0
}

// Prepared returns a snapshot of the claims prepared on this node, by claim UID.
func (k *Kubelet) Prepared() map[types.UID]PreparedClaim {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[types.UID]PreparedClaim, len(k.prepared))
	for uid, c := range k.prepared {
		cp := *c
		cp.Pods = maps.Clone(c.Pods)
		out[uid] = cp
	}
	return out
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, shutdown := k.queue.Get()
	if shutdown {
		return false
	}
	defer k.queue.Done(key)
	logger := klog.LoggerWithValues(klog.FromContext(ctx), "pod", key, "node", k.opts.NodeName)
	ctx = klog.NewContext(ctx, logger)
	retry, err := k.syncPod(ctx, key)
	switch {
	case err != nil:
		logger.V(2).Info("Pod sync failed, will retry", "err", err)
		k.queue.AddRateLimited(key)
	case retry:
		k.queue.AddRateLimited(key)
	default:
		k.queue.Forget(key)
	}
	return true
}

// syncPod moves one pod towards its desired state. retry asks for another sync
// later without an error (waiting for the scheduler or the claim controller).
func (k *Kubelet) syncPod(ctx context.Context, key string) (retry bool, _ error) {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return false, nil
	}
	pod, err := k.pods.Pods(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return false, k.release(ctx, key)
	}
	if err != nil {
		return false, err
	}
	if pod.DeletionTimestamp != nil {
		return false, k.terminate(ctx, key, pod)
	}
	if pod.Status.Phase == corev1.PodRunning || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false, nil
	}
	return k.start(ctx, key, pod)
}

// start prepares the pod's claims, records the container edits and marks the pod
// Running.
func (k *Kubelet) start(ctx context.Context, key string, pod *corev1.Pod) (retry bool, _ error) {
	logger := klog.FromContext(ctx)
	claims, waiting := k.podClaims(pod)
	if waiting != "" {
		logger.V(3).Info("Waiting for claims", "reason", waiting)
		return true, nil
	}
	byClaimName, err := k.prepare(ctx, key, claims)
	if err != nil {
		k.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonFailedPrepare, "Failed to prepare dynamic resources: %v", err)
		return false, err
	}

	edits := map[string]ContainerEdits{}
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		var ids []string
		add := func(prepared *PreparedClaim, request string) {
			if prepared == nil {
				return
			}
			for _, d := range prepared.Devices {
				// A device without request names belongs to every request of the claim.
				if request == "" || len(d.RequestNames) == 0 || slices.ContainsFunc(d.RequestNames, func(r string) bool { return baseRequest(r) == request }) {
					ids = append(ids, d.CdiDeviceIds...)
				}
			}
		}
		for _, ref := range c.Resources.Claims {
			add(byClaimName[ref.Name], ref.Request)
		}
		if s := pod.Status.ExtendedResourceClaimStatus; s != nil {
			// Each container gets the requests the scheduler made for its
			// extended resources.
			for _, m := range s.RequestMappings {
				if m.ContainerName == c.Name {
					add(byClaimName[extendedResourcesClaim], m.RequestName)
				}
			}
		}
		e, err := resolveEdits(k.opts.CDIRoot, ids)
		var mountErr *MountSourceError
		switch {
		case errors.As(err, &mountErr):
			// As the kubelet reports a runtime's refusal to start the
			// container; it retries with back-off, as the stand-in does.
			k.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonFailedStart, "Error: container %s: %v", c.Name, err)
			return false, err
		case err != nil:
			k.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonFailedPrepare, "Failed to resolve CDI devices for container %s: %v", c.Name, err)
			return false, err
		}
		edits[c.Name] = e
	}
	data, err := json.Marshal(edits)
	if err != nil {
		return false, fmt.Errorf("encode container edits: %w", err)
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{EditsAnnotation: string(data)}}})
	if err != nil {
		return false, fmt.Errorf("encode annotation patch: %w", err)
	}
	updated, err := k.opts.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "tessera-e2e-kubelet"})
	if err != nil {
		return false, fmt.Errorf("record container edits: %w", err)
	}
	switch {
	case updated.DeletionTimestamp != nil:
		// Deleted while we prepared: the next sync terminates it.
		return true, nil
	case updated.Status.Phase == corev1.PodRunning:
		// A sync that saw a stale copy of a pod already started.
		return false, nil
	}
	// A patch of the status alone cannot undo what others wrote meanwhile (a
	// deletion timestamp, say), as writing back a whole stale object could.
	markRunning(updated)
	statusPatch, err := json.Marshal(map[string]any{"status": updated.Status})
	if err != nil {
		return false, fmt.Errorf("encode status patch: %w", err)
	}
	if _, err := k.opts.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, statusPatch, metav1.PatchOptions{FieldManager: "tessera-e2e-kubelet"}, "status"); err != nil {
		return false, fmt.Errorf("mark pod running: %w", err)
	}
	logger.V(1).Info("Pod running", "claims", len(claims))
	return false, nil
}

// podClaims resolves the pod's claims by the names the pod uses for them. waiting
// says why the pod cannot start yet.
func (k *Kubelet) podClaims(pod *corev1.Pod) (claims map[string]*resourceapi.ResourceClaim, waiting string) {
	claims = map[string]*resourceapi.ResourceClaim{}
	for _, pc := range pod.Spec.ResourceClaims {
		claimName := pc.ResourceClaimName
		if claimName == nil {
			for _, s := range pod.Status.ResourceClaimStatuses {
				if s.Name == pc.Name {
					claimName = s.ResourceClaimName
				}
			}
			if claimName == nil {
				return nil, fmt.Sprintf("claim for %s not generated yet", pc.Name)
			}
		}
		claim, why := k.podClaim(pod, *claimName)
		if why != "" {
			return nil, why
		}
		claims[pc.Name] = claim
	}
	// The claim kube-scheduler made for the pod's DRA extended resources
	// (deviceclass.resource.kubernetes.io/<class>): it names it in the pod's
	// status in PreBind, before it binds the pod, and the kubelet prepares it
	// with the pod's own claims.
	if s := pod.Status.ExtendedResourceClaimStatus; s != nil {
		claim, why := k.podClaim(pod, s.ResourceClaimName)
		if why != "" {
			return nil, why
		}
		claims[extendedResourcesClaim] = claim
	}
	return claims, ""
}

// extendedResourcesClaim is the key of the claim for a pod's extended
// resources among its claims: no name of a pod's claim (a DNS label) has a
// space.
const extendedResourcesClaim = "extended resources"

// podClaim is the claim name, allocated and reserved for pod, or why the pod
// cannot start yet.
func (k *Kubelet) podClaim(pod *corev1.Pod, name string) (*resourceapi.ResourceClaim, string) {
	claim, err := k.claims.ResourceClaims(pod.Namespace).Get(name)
	if err != nil {
		return nil, fmt.Sprintf("claim %s: %v", name, err)
	}
	if claim.Status.Allocation == nil {
		return nil, fmt.Sprintf("claim %s not allocated", claim.Name)
	}
	if !slices.ContainsFunc(claim.Status.ReservedFor, func(r resourceapi.ResourceClaimConsumerReference) bool { return r.UID == pod.UID }) {
		return nil, fmt.Sprintf("claim %s not reserved for the pod", claim.Name)
	}
	return claim, ""
}

// terminate unprepares what only this pod used and then finishes the deletion, as
// kubelet does once the containers are gone.
func (k *Kubelet) terminate(ctx context.Context, key string, pod *corev1.Pod) error {
	if err := k.release(ctx, key); err != nil {
		k.recorder.Eventf(pod, corev1.EventTypeWarning, ReasonFailedUnprepare, "Failed to unprepare dynamic resources: %v", err)
		return err
	}
	err := k.opts.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("finish deletion of pod: %w", err)
	}
	klog.FromContext(ctx).V(1).Info("Pod terminated")
	return nil
}

// baseRequest strips the subrequest from a prioritized-list result's request name
// ("gpu/mig" -> "gpu"): containers name the request, not the alternative.
func baseRequest(name string) string {
	for i := range len(name) {
		if name[i] == '/' {
			return name[:i]
		}
	}
	return name
}

func markRunning(pod *corev1.Pod) {
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.StartTime = &now
	pod.Status.HostIP = "127.0.0.1"
	pod.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	for _, t := range []corev1.PodConditionType{corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady} {
		setCondition(pod, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	pod.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: new(bool(true)),
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
}

func setCondition(pod *corev1.Pod, cond corev1.PodCondition) {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == cond.Type {
			pod.Status.Conditions[i] = cond
			return
		}
	}
	pod.Status.Conditions = append(pod.Status.Conditions, cond)
}
