package plugin

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/dynamic-resource-allocation/kubeletplugin"

	gpuapi "github.com/tessera-gpu/tessera/api/gpu"
)

// healthResend is how often the full health report is sent again although
// nothing changed: the kubelet treats a device as Unknown when its report
// is older than the device's timeout.
const healthResend = 10 * time.Second

// WatchHealthStatus reports the health of every published device to the
// kubelet, which shows it in the status of the pods that use the device:
// a device with an unhealthy taint (a critical XID, a lost GPU) is
// Unhealthy with the taint as message, every other published device,
// dynamic MIG partitions included, is Healthy. The full report is sent
// first, on every change of the published taints, and every healthResend.
func (d *Driver) WatchHealthStatus(ctx context.Context, reports chan<- kubeletplugin.DeviceHealthReport) error {
	ticker := time.NewTicker(healthResend)
	defer ticker.Stop()
	for {
		report, changed := d.healthReport(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case reports <- report:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-ticker.C:
		}
	}
}

// healthReport builds the report of the published devices and returns the
// channel that is closed on the next change.
func (d *Driver) healthReport(now time.Time) (kubeletplugin.DeviceHealthReport, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	report := kubeletplugin.DeviceHealthReport{Devices: make([]kubeletplugin.DeviceHealth, 0, len(d.devices))}
	for _, name := range d.devices {
		h := kubeletplugin.DeviceHealth{
			PoolName: d.opts.NodeName, DeviceName: name, Health: kubeletplugin.HealthStatusHealthy,
			LastUpdated: now, HealthCheckTimeout: 3 * healthResend,
		}
		var why []string
		for _, t := range d.publishedTaints[name] {
			if t.Key == gpuapi.TaintKeyUnhealthy {
				why = append(why, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
			}
		}
		if len(why) > 0 {
			h.Health, h.Message = kubeletplugin.HealthStatusUnhealthy, strings.Join(why, ", ")
		}
		report.Devices = append(report.Devices, h)
	}
	return report, d.healthChanged
}
