package plugin

import (
	"context"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// EventsReportingController is the reportingController of the Events the
// plugin records (events.k8s.io/v1).
const EventsReportingController = gpuapi.DriverName + "/kubelet-plugin"

// nodeEvents returns a recorder whose Events go to the API server through
// client (events.k8s.io/v1, which the chart's RBAC allows and its
// node-events admission policy limits to the plugin's own Node), and the
// function that flushes and stops it.
func nodeEvents(ctx context.Context, client kubernetes.Interface) (events.EventRecorder, func(), error) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	if err := b.StartRecordingToSinkWithContext(ctx); err != nil {
		return nil, nil, fmt.Errorf("start recording Events: %w", err)
	}
	return b.NewRecorder(scheme.Scheme, EventsReportingController), b.Shutdown, nil
}
