package cluster

import "path/filepath"

// PluginKubeconfig is the kubeconfig StartLocal wrote for the plugins: a token
// of the plugin's ServiceAccount, with only the RBAC a deployment gives it.
// Plugins started outside StartLocal (a real node's) use it too.
func (l *Local) PluginKubeconfig() string {
	return filepath.Join(l.WorkDir, "kubelet-plugin.kubeconfig")
}
