#!/usr/bin/env bash
# Builds the linters (golangci-lint with Kubernetes' logcheck compiled in, see
# tools/lint/main.go) from the pinned module tools/lint into $TESSERA_LINT_CACHE/bin
# and prints that directory on stdout. The
# build is skipped when a stamp keyed by the pinned module files and the Go version
# matches, so a warm run costs a hash and nothing else. Progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TESSERA_LINT_CACHE:-${HOME}/.cache/tessera/lint}"
bin="${cache}/bin"
stamp="${cache}/stamp"
binaries=(golangci-lint)

# A linter built by an older Go than the code it reads refuses it, so the Go
# version is part of the key.
key="$( (cat "${root}/tools/lint/go.mod" "${root}/tools/lint/go.sum"; go env GOVERSION) | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${key}" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x "${bin}/${b}" ]] || return 1; done
}

if up_to_date; then
  echo "${bin}"
  exit 0
fi

mkdir -p "${bin}"
rm -f "${stamp}"
start_all=${SECONDS}
build() { # name package
  local name=$1 pkg=$2 start=${SECONDS}
  echo "linters: building ${name} (${pkg}) ..." >&2
  # golangci-lint compiles for minutes on a small machine; say so, so that nobody
  # (and no CI log watchdog) takes the silence for a hang.
  # The ticker kills its sleep when stopped: an orphaned sleep would hold stderr open
  # for up to a minute after the build.
  (
    trap 'kill "${s}" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 60 & s=$!
      wait "${s}"
      echo "linters:   still building ${name} ($((SECONDS - start))s)" >&2
    done
  ) &
  local ticker=$! rc=0
  (cd "${root}/tools/lint" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "${bin}/${name}.tmp" "${pkg}") >&2 || rc=$?
  kill "${ticker}" 2>/dev/null || true
  wait "${ticker}" 2>/dev/null || true
  if ((rc != 0)); then
    echo "linters: building ${name} failed" >&2
    exit "${rc}"
  fi
  mv "${bin}/${name}.tmp" "${bin}/${name}"
  echo "linters: built ${name} in $((SECONDS - start))s (total $((SECONDS - start_all))s)" >&2
}

build golangci-lint .
echo "${key}" > "${stamp}"
echo "linters: done in $((SECONDS - start_all))s -> ${bin}" >&2
echo "${bin}"
