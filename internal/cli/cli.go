// Package cli holds what Tessera's commands share on their command line: flags
// mirrored by environment variables, and the Kubernetes client configuration.
package cli

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// EnvName is the environment variable that mirrors flag name: upper case,
// "-" becomes "_" (--node-name is NODE_NAME).
func EnvName(flag string) string { return strings.ToUpper(strings.ReplaceAll(flag, "-", "_")) }

// FromEnv fills the flags the command line left unset from their
// environment variables. A value a flag refuses is an error naming the
// variable.
func FromEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		env := EnvName(f.Name)
		if v, ok := os.LookupEnv(env); ok && !f.Changed && err == nil {
			if serr := f.Value.Set(v); serr != nil {
				err = fmt.Errorf("environment variable %s: %w", env, serr)
			}
		}
	})
	return err
}

// KubeConfig loads the kubeconfig at path, or the in-cluster configuration
// when path is empty.
func KubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration (pass --kubeconfig outside a cluster): %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	return c, nil
}
