#!/usr/bin/env bash
# Builds the linters (golangci-lint with Kubernetes' logcheck compiled in, see
# tools/lint/main.go) from the pinned module tools/lint into $TESSERA_LINT_CACHE/bin
# and prints that directory on stdout. The build is skipped when a stamp keyed by
# the pinned module files and the Go version matches, so a warm run costs a hash
# and nothing else. Progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "${root}/hack/lib/gobuild.sh"
cache="${TESSERA_LINT_CACHE:-${HOME}/.cache/tessera/lint}"
bin="${cache}/bin"
stamp="${cache}/stamp"

# A linter built by an older Go than the code it reads refuses it, so the Go
# version is part of the key.
key="$(files_key "${root}/tools/lint/go.mod" "${root}/tools/lint/go.sum" <(go env GOVERSION))"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${key}" && -x "${bin}/golangci-lint" ]]; then
  echo "${bin}"
  exit 0
fi

mkdir -p "${bin}"
rm -f "${stamp}"
go_build linters golangci-lint "${root}/tools/lint" . "${bin}/golangci-lint" "-s -w"
echo "${key}" > "${stamp}"
echo "${bin}"
