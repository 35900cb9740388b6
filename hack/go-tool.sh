#!/usr/bin/env bash
# Builds one Go command from a pinned tools module into the cache and prints its
# path. The build is skipped while a stamp keyed by the module's go.mod and go.sum
# matches, so a warm call costs a hash.
#
#   hack/go-tool.sh NAME MODULE_DIR PACKAGE     e.g. hack/go-tool.sh helm tools/helm helm.sh/helm/v4/cmd/helm
set -euo pipefail

name=$1 dir=$2 pkg=$3
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TESSERA_TOOLS_CACHE:-${HOME}/.cache/tessera/tools}"
out="${cache}/${name}"
key="$(cat "${root}/${dir}/go.mod" "${root}/${dir}/go.sum" | sha256sum | cut -d' ' -f1)"

if [[ -x "${out}" && -f "${out}.stamp" && "$(cat "${out}.stamp")" == "${key}" ]]; then
  echo "${out}"
  exit 0
fi

mkdir -p "${cache}"
start=${SECONDS}
echo "go-tool: building ${name} (${pkg}) ..." >&2
(while sleep 60; do echo "go-tool:   still building ${name} ($((SECONDS - start))s)" >&2; done) &
ticker=$!
rc=0
(cd "${root}/${dir}" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "${out}.tmp" "${pkg}") >&2 || rc=$?
kill "${ticker}" 2>/dev/null || true
wait "${ticker}" 2>/dev/null || true
if ((rc != 0)); then
  echo "go-tool: building ${name} failed" >&2
  exit "${rc}"
fi
mv "${out}.tmp" "${out}"
echo "${key}" > "${out}.stamp"
echo "go-tool: built ${name} in $((SECONDS - start))s" >&2
echo "${out}"
