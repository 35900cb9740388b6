package prepare

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
)

// Reasons of the Events the Preparer records about its node. What an
// unprepare leaves to the background (a MIG mode that would not switch off,
// an instance that would not go) is invisible to the pod's owner, whose pod
// is gone: the node's Events, beside the metrics, tell an admin why a GPU
// offers less than it should.
const (
	// ReasonMIGModeOffDeferred (Warning): a GPU's MIG mode could not be
	// switched off after its last partition; retried in the background.
	ReasonMIGModeOffDeferred = "MIGModeOffDeferred"
	// ReasonMIGModeOff (Normal): a deferred MIG-off finally succeeded.
	ReasonMIGModeOff = "MIGModeOff"
	// ReasonMIGDestroyDeferred (Warning): an unprepare could not destroy a
	// MIG instance; it is recorded and destroyed in the background, and its
	// placement offered to no other claim meanwhile.
	ReasonMIGDestroyDeferred = "MIGDestroyDeferred"
	// ReasonMIGDestroyed (Normal): a deferred MIG instance was destroyed,
	// or found gone (GPU reset or reboot).
	ReasonMIGDestroyed = "MIGDestroyed"
)

// WithEvents records Events about the node through recorder (client-go's
// tools/events; the plugin's sends them to events.k8s.io/v1).
func WithEvents(recorder events.EventRecorder) Option {
	return func(p *Preparer) { p.events = recorder }
}

// event records an Event about the node; without a recorder it does nothing.
func (p *Preparer) event(eventType, reason, action, note string, args ...any) {
	if p.events == nil {
		return
	}
	// The kubelet names its Node the same way in the Events it records.
	node := &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: p.nodeName, UID: types.UID(p.nodeName)}
	p.events.Eventf(node, nil, eventType, reason, action, note, args...)
}
