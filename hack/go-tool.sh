#!/usr/bin/env bash
# Builds one Go command from a pinned tools module into the cache and prints its
# path. The build is skipped while a stamp keyed by the module's go.mod and go.sum
# matches, so a warm call costs a hash.
#
#   hack/go-tool.sh NAME MODULE_DIR PACKAGE [LDFLAGS [TAGS]]
#   e.g. hack/go-tool.sh helm tools/helm helm.sh/helm/v4/cmd/helm
set -euo pipefail

name=$1 dir=$2 pkg=$3 ldflags=${4:-"-s -w"} tags=${5:-}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/hack/lib/gobuild.sh"
cache="${TESSERA_TOOLS_CACHE:-${HOME}/.cache/tessera/tools}"
out="${cache}/${name}"
key="$(files_key "${root}/${dir}/go.mod" "${root}/${dir}/go.sum" <(echo "${ldflags} ${tags}"))"

if [[ -x "${out}" && -f "${out}.stamp" && "$(cat "${out}.stamp")" == "${key}" ]]; then
  echo "${out}"
  exit 0
fi

mkdir -p "${cache}"
go_build go-tool "${name}" "${root}/${dir}" "${pkg}" "${out}" "${ldflags}" "${tags}"
echo "${key}" > "${out}.stamp"
echo "${out}"
