package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/klog/v2/ktesting"
)

// TestHandleErrorStopsOnlyOnFatalErrors: a recoverable background error
// (e.g. a failed slice update that the helper retries) is logged and the
// plugin keeps running; any other stops it with the error as the cause, so
// that it restarts cleanly.
func TestHandleErrorStopsOnlyOnFatalErrors(t *testing.T) {
	_, ctx := ktesting.NewTestContext(t)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	d := &Driver{cancel: cancel}
	d.HandleError(ctx, fmt.Errorf("update slice: %w", kubeletplugin.ErrRecoverable), "publishing slices")
	if ctx.Err() != nil {
		t.Fatalf("a recoverable error stopped the plugin: %v", context.Cause(ctx))
	}
	d.HandleError(ctx, errors.New("informer died"), "watching slices")
	if err := stopCause(ctx); err == nil || !strings.Contains(err.Error(), "watching slices: informer died") {
		t.Errorf("after a fatal error the plugin stops with %v, want the error and what was being done", err)
	}
}
