#!/usr/bin/env bash
# Builds a copy of the pinned allocator module (k8s.io/dynamic-resource-allocation) with
# indexed-shares.patch applied to structured/internal/incubating/allocator_incubating.go
# (the variant kube-scheduler 1.37 uses by default), and a go.mod for the -modfile flag
# that points the module at that copy; prints the go.mod's path. See hack/allocator/README.md.
#
#   go test -modfile "$(hack/allocator/overlay.sh bin/allocator)" ./test/scheduling/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(mkdir -p "${1:?usage: overlay.sh OUTDIR}" && cd "$1" && pwd)
dir=$(cd "$root" && go list -m -f '{{.Dir}}' k8s.io/dynamic-resource-allocation)
rm -rf "$out/dynamic-resource-allocation"
cp -r "$dir" "$out/dynamic-resource-allocation"
chmod -R u+w "$out/dynamic-resource-allocation"
patch --quiet --forward -d "$out/dynamic-resource-allocation/structured/internal/incubating" \
	allocator_incubating.go "$here/indexed-shares.patch"
cp "$root/go.mod" "$out/go.mod"
cp "$root/go.sum" "$out/go.sum"
(cd "$root" && go mod edit -modfile="$out/go.mod" -replace "k8s.io/dynamic-resource-allocation=$out/dynamic-resource-allocation")
echo "$out/go.mod"
