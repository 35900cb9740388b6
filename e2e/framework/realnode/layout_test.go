package realnode

import "testing"

// TestSocketPathsFit: a node whose kubelet directory leaves no room for the
// plugin's socket (which carries its pod's UID) is refused before it starts,
// instead of a plugin that crashes with "bind: invalid argument".
func TestSocketPathsFit(t *testing.T) {
	cases := map[string]struct {
		dir     string
		wantErr bool
	}{
		"short work directory": {"/tmp/tne-1234567890/n", false},
		"long work directory":  {"/tmp/tessera-node-e2e-1234567890/nodes/127.0.0.1", true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			err := NewLayout(tc.dir, DriverLayouts[DefaultDriverLayout]).checkSocketPaths()
			if (err != nil) != tc.wantErr {
				t.Errorf("checkSocketPaths() = %v, want error %t", err, tc.wantErr)
			}
		})
	}
}
