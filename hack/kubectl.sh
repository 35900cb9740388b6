#!/usr/bin/env bash
# Builds kubectl at the local cluster's version from the pinned module tools/kubectl
# into the tools cache and prints its path (see hack/go-tool.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/hack/lib/gobuild.sh"
exec "${root}/hack/go-tool.sh" kubectl tools/kubectl k8s.io/kubernetes/cmd/kubectl "${kube_ldflags}"
