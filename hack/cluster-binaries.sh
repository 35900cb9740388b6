#!/usr/bin/env bash
# Builds the local cluster's control plane (etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager) from the pinned modules under tools/ into $TESSERA_CACHE/bin.
# The build is skipped when a stamp keyed by the pinned module files matches, so a
# warm run costs a hash and nothing else.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/hack/lib/gobuild.sh"
cache="${TESSERA_CACHE:-${HOME}/.cache/tessera/k8s-1.37.2}"
bin="${cache}/bin"
stamp="${cache}/stamp"
binaries=(etcd kube-apiserver kube-scheduler kube-controller-manager)

key="$(cat "${root}/tools/go.mod" "${root}/tools/go.sum" "${root}/tools/etcd/go.mod" "${root}/tools/etcd/go.sum" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${key}" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "${bin}/${b}" ]] || return 1; done
}

if up_to_date; then
  echo "cluster-binaries: up to date in ${bin}"
  exit 0
fi

mkdir -p "${bin}"
rm -f "${stamp}"

start_all=${SECONDS}
build() { # name module-dir package ldflags [tags]
  go_build cluster-binaries "$1" "$2" "$3" "${bin}/$1" "$4" "${5:-}"
}

build etcd "${root}/tools/etcd" go.etcd.io/etcd/server/v3 "-s -w"
for c in kube-apiserver kube-scheduler kube-controller-manager; do
  build "${c}" "${root}/tools" "k8s.io/kubernetes/cmd/${c}" "${kube_ldflags}"
done
echo "${key}" > "${stamp}"
echo "cluster-binaries: done in $((SECONDS - start_all))s -> ${bin}"
