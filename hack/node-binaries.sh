#!/usr/bin/env bash
# Builds what make node-e2e runs on a real node: the kubelet from the pinned
# k8s.io/kubernetes (tools/kubelet), containerd 2.x with its CRI plugin, its runc
# shim and ctr (tools/containerd), and the upstream pause binary compiled from
# k8s.io/kubernetes' build/pause/linux/pause.c, into $TESSERA_CACHE/node/bin.
# Like hack/cluster-binaries.sh, it is skipped when a stamp keyed by the pinned
# module files matches.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/hack/lib/gobuild.sh"
cache="${TESSERA_CACHE:-${HOME}/.cache/tessera/k8s-1.37.2}"
bin="${cache}/node/bin"
stamp="${cache}/node/stamp"
binaries=(kubelet containerd containerd-shim-runc-v2 ctr pause)

key="$(cat "${root}/tools/kubelet/go.mod" "${root}/tools/kubelet/go.sum" "${root}/tools/containerd/go.mod" "${root}/tools/containerd/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${key}" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "${bin}/${b}" ]] || return 1; done
}

if up_to_date; then
  echo "node-binaries: up to date in ${bin}"
  exit 0
fi

mkdir -p "${bin}"
rm -f "${stamp}"
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=v2.4.2"

start_all=${SECONDS}
build() { # name module-dir package ldflags [tags]
  go_build node-binaries "$1" "$2" "$3" "${bin}/$1" "$4" "${5:-}"
}

# The pause container of every pod sandbox: upstream's own pause.c, static, so
# that the sandbox image needs nothing else.
kube_dir="$(cd "${root}/tools/kubelet" && go mod download -json k8s.io/kubernetes | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [[ -z "${kube_dir}" ]]; then
  echo "node-binaries: cannot find the k8s.io/kubernetes module source" >&2
  exit 1
fi
echo "node-binaries: compiling pause from ${kube_dir}/build/pause/linux/pause.c"
${CC:-cc} -Os -static -DVERSION=v1.37.2 -o "${bin}/pause.tmp" "${kube_dir}/build/pause/linux/pause.c"
mv "${bin}/pause.tmp" "${bin}/pause"

# containerd without cgo drops only the btrfs snapshotter (overlayfs and native
# remain); no_devmapper and no_zfs keep out snapshotters the node does not use.
containerd_tags="no_btrfs no_devmapper no_zfs"
for c in containerd containerd-shim-runc-v2 ctr; do
  build "${c}" "${root}/tools/containerd" "github.com/containerd/containerd/v2/cmd/${c}" "${containerd_ldflags}" "${containerd_tags}"
done
build kubelet "${root}/tools/kubelet" k8s.io/kubernetes/cmd/kubelet "${kube_ldflags}"
echo "${key}" > "${stamp}"
echo "node-binaries: done in $((SECONDS - start_all))s -> ${bin}"
