#!/usr/bin/env bash
# Builds a copy of the pinned allocator module (k8s.io/dynamic-resource-allocation) with
# indexed-shares.patch, then node-cache.patch, applied to one file,
# structured/internal/incubating/allocator_incubating.go (the variant kube-scheduler 1.37
# uses by default), and testdata/node_cache_test.go copied beside it; tracker-device-count.patch
# and its test to resourceslice/tracker; and a go.mod for the
# -modfile flag that points the module at that copy; prints the go.mod's path. MODULE is the directory
# of the module to build (Tessera's own by default; research/cmd/tessera-scheduler for the binary
# that carries the patch). See research/patches/allocator/README.md.
#
# ALLOCATOR_PATCHES names the patches to apply, in order (default: all three), e.g.
# ALLOCATOR_PATCHES=indexed-shares to measure what node-cache.patch buys.
# placement-choice.patch (a device order a scheduler can register, api/device_order.go)
# changes nothing until something registers an order: tessera-scheduler does.
#
#   go test -modfile "$(research/patches/allocator/overlay.sh bin/allocator)" ./research/scheduling/
#   make tessera-scheduler   (the same for research/cmd/tessera-scheduler's module: hack/make/placement.mk)
set -euo pipefail
command -v patch >/dev/null || { echo "overlay.sh: needs patch (apt-get install patch)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=$(mkdir -p "${1:?usage: overlay.sh OUTDIR [MODULE]}" && cd "$1" && pwd)
module=$(cd "$root/${2:-.}" && pwd)
dir=$(cd "$module" && go list -m -f '{{.Dir}}' k8s.io/dynamic-resource-allocation)
# Rebuilt only when the pinned module, the patches or their selection changed, so that go build's
# cache (keyed by file contents) stays warm either way.
read -r -a patches <<<"${ALLOCATOR_PATCHES:-indexed-shares node-cache placement-choice}"
# Each patch is written against the file the ones before it produce.
case "${patches[*]}" in
"indexed-shares" | "indexed-shares node-cache" | "indexed-shares node-cache placement-choice") ;;
*)
	echo "overlay.sh: ALLOCATOR_PATCHES='${patches[*]}': want 'indexed-shares', 'indexed-shares node-cache' or 'indexed-shares node-cache placement-choice' (each applies on top of the ones before)" >&2
	exit 1
	;;
esac
stamp="$dir ${patches[*]} $(cat "$here/indexed-shares.patch" "$here/node-cache.patch" "$here/placement-choice.patch" "$here/tracker-device-count.patch" "$here"/testdata/*_test.go | sha256sum | cut -d' ' -f1)"
if [[ ! -f $out/stamp || $(cat "$out/stamp") != "$stamp" ]]; then
	rm -rf "$out/dynamic-resource-allocation"
	cp -r "$dir" "$out/dynamic-resource-allocation"
	chmod -R u+w "$out/dynamic-resource-allocation"
	pkg="$out/dynamic-resource-allocation/structured/internal/incubating"
	for p in "${patches[@]}"; do
		if [[ $p == placement-choice ]]; then
			# Two files: the allocator's and a new one in the module's api package.
			patch --quiet --forward -p1 -d "$out/dynamic-resource-allocation" <"$here/$p.patch"
		else
			patch --quiet --forward -d "$pkg" allocator_incubating.go "$here/$p.patch"
		fi
	done
	# Always: upstream's ResourceSlice tracker indexes a slice's devices by
	# position when a DeviceTaintRule changes, and panics when the slice
	# gained or lost devices meanwhile (Tessera's withdrawal does that while
	# its sharing taints change rules); tessera-scheduler crashed on it in e2e.
	patch --quiet --forward -d "$out/dynamic-resource-allocation/resourceslice/tracker" tracker.go "$here/tracker-device-count.patch"
	cp "$here/testdata/tracker_device_count_test.go" "$out/dynamic-resource-allocation/resourceslice/tracker/"
	if [[ " ${patches[*]} " == *" node-cache "* ]]; then
		cp "$here/testdata/node_cache_test.go" "$pkg/"
	fi
	echo "$stamp" >"$out/stamp"
fi
cp "$module/go.mod" "$out/go.mod"
cp "$module/go.sum" "$out/go.sum"
(cd "$module" && go mod edit -modfile="$out/go.mod" -replace "k8s.io/dynamic-resource-allocation=$out/dynamic-resource-allocation")
echo "$out/go.mod"
