package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestFromEnv(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	name := fs.String("node-name", "", "")
	given := fs.String("pool", "default", "")
	interval := fs.Duration("rediscover-interval", time.Second, "")
	if err := fs.Parse([]string{"--pool=cli"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "n1")
	t.Setenv("POOL", "env")
	t.Setenv("REDISCOVER_INTERVAL", "5s")
	if err := FromEnv(fs); err != nil {
		t.Fatal(err)
	}
	if *name != "n1" || *interval != 5*time.Second {
		t.Errorf("unset flags from the environment: node-name %q, interval %v", *name, *interval)
	}
	if *given != "cli" {
		t.Errorf("the command line must win over the environment, got pool %q", *given)
	}

	t.Setenv("REDISCOVER_INTERVAL", "soon")
	fs = pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.Duration("rediscover-interval", time.Second, "")
	if err := FromEnv(fs); err == nil || !strings.Contains(err.Error(), "REDISCOVER_INTERVAL") {
		t.Errorf("a bad value must name its variable, got %v", err)
	}
}

func TestKubeConfigNamesTheMissingFile(t *testing.T) {
	if _, err := KubeConfig("/nonexistent/kubeconfig"); err == nil || !strings.Contains(err.Error(), "/nonexistent/kubeconfig") {
		t.Errorf("got %v, want an error naming the file", err)
	}
}
