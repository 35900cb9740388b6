#!/usr/bin/env bash
# Builds a copy of the pinned allocator module (k8s.io/dynamic-resource-allocation) with
# indexed-shares.patch applied to structured/internal/incubating/allocator_incubating.go
# (the variant kube-scheduler 1.37 uses by default), and a go.mod for the -modfile flag
# that points the module at that copy; prints the go.mod's path. MODULE is the directory
# of the module to build (Tessera's own by default; cmd/tessera-scheduler for the binary
# that carries the patch). See hack/allocator/README.md.
#
#   go test -modfile "$(hack/allocator/overlay.sh bin/allocator)" ./test/scheduling/
#   make tessera-scheduler   (the same for cmd/tessera-scheduler's module: hack/make/placement.mk)
set -euo pipefail
command -v patch >/dev/null || { echo "overlay.sh: needs patch (apt-get install patch)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:?usage: overlay.sh OUTDIR [MODULE]}" && cd "$1" && pwd)
module=$(cd "$root/${2:-.}" && pwd)
dir=$(cd "$module" && go list -m -f '{{.Dir}}' k8s.io/dynamic-resource-allocation)
# Rebuilt only when the pinned module or the patch changed, so that go build's
# cache (keyed by file contents) stays warm either way.
stamp="$dir $(sha256sum "$here/indexed-shares.patch" | cut -d' ' -f1)"
if [[ ! -f $out/stamp || $(cat "$out/stamp") != "$stamp" ]]; then
	rm -rf "$out/dynamic-resource-allocation"
	cp -r "$dir" "$out/dynamic-resource-allocation"
	chmod -R u+w "$out/dynamic-resource-allocation"
	patch --quiet --forward -d "$out/dynamic-resource-allocation/structured/internal/incubating" \
		allocator_incubating.go "$here/indexed-shares.patch"
	echo "$stamp" >"$out/stamp"
fi
cp "$module/go.mod" "$out/go.mod"
cp "$module/go.sum" "$out/go.sum"
(cd "$module" && go mod edit -modfile="$out/go.mod" -replace "k8s.io/dynamic-resource-allocation=$out/dynamic-resource-allocation")
echo "$out/go.mod"
