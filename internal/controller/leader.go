package controller

import (
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaderElectionID names the controller's leader-election Lease. The chart's
// decision-fence policy takes that Lease as its parameter: it refuses a
// decision whose recorded holder is not the Lease's holder.
const LeaderElectionID = "tessera-dra-controller"

// leaderLock is the leader-election lock that controller-runtime would make
// (a Lease named LeaderElectionID, identity "<hostname>_<uuid>", a client
// timeout of half its 10 s renew deadline), made here so that the identity
// is known: every decision records it.
func leaderLock(cfg *rest.Config, namespace string) (resourcelock.Interface, string, error) {
	host, err := os.Hostname()
	if err != nil {
		return nil, "", fmt.Errorf("leader-election identity: %w", err)
	}
	id := host + "_" + string(uuid.NewUUID())
	c := rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	c.Timeout = 5 * time.Second
	clients, err := kubernetes.NewForConfig(c)
	if err != nil {
		return nil, "", fmt.Errorf("leader-election client: %w", err)
	}
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, namespace, LeaderElectionID, clients.CoreV1(), clients.CoordinationV1(),
		resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		return nil, "", fmt.Errorf("leader-election lock: %w", err)
	}
	return lock, id, nil
}
