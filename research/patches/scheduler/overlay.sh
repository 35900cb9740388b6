#!/usr/bin/env bash
# Makes tessera-scheduler's copy of k8s.io/kubernetes (as pinned by research/cmd/tessera-scheduler/go.mod)
# with claim-watch.patch, count-once.patch and final-choice.patch applied to kube-scheduler's DynamicResources plugin
# (pkg/scheduler/framework/plugins/dynamicresources) and the tests of testdata/ beside
# it, in OUTDIR/kubernetes, and points MODFILE (a go.mod for -modfile, as
# research/patches/allocator/overlay.sh writes it) at that copy. The copy's files are hard links into the
# module cache where it can (same file system), except the ones the patch writes, so it costs
# no disk space and a second to make. See research/patches/scheduler/README.md.
#
#   research/patches/scheduler/overlay.sh bin/scheduler-patches "$(research/patches/allocator/overlay.sh bin/allocator-scheduler research/cmd/tessera-scheduler)"
#   (make tessera-scheduler)
set -euo pipefail
command -v patch >/dev/null || { echo "overlay.sh: needs patch (apt-get install patch)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=$(mkdir -p "${1:?usage: overlay.sh OUTDIR MODFILE}" && cd "$1" && pwd)
modfile=${2:?usage: overlay.sh OUTDIR MODFILE}
rel=pkg/scheduler/framework/plugins/dynamicresources
dir=$(cd "$root/research/cmd/tessera-scheduler" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
# Rebuilt only when the pinned module or the patch changed, so that go build's cache stays warm.
patches=(claim-watch count-once final-choice)
stamp="$dir $(for p in "${patches[@]}"; do cat "$here/$p.patch"; done | cat - "$here"/testdata/*_test.go | sha256sum | cut -d' ' -f1)"
if [[ ! -f $out/stamp || $(cat "$out/stamp") != "$stamp" ]]; then
	# The module cache's directories are read-only, and so are the copy's: make the copy's (never
	# a file: a file may be a hard link into the cache) writable to remove or patch it.
	[[ ! -d $out/kubernetes ]] || find "$out/kubernetes" -type d -exec chmod u+w {} +
	rm -rf "$out/kubernetes"
	cp -al "$dir" "$out/kubernetes" 2>/dev/null || cp -r "$dir" "$out/kubernetes"
	find "$out/kubernetes" -type d -exec chmod u+w {} +
	pkg="$out/kubernetes/$rel"
	# Never write through a hard link into the module cache: the patched package gets files of its own.
	rm -rf "$pkg"
	cp -r "$dir/$rel" "$pkg"
	chmod -R u+w "$pkg"
	for p in "${patches[@]}"; do
		patch --quiet --forward -p1 -d "$pkg" <"$here/$p.patch"
	done
	cp "$here"/testdata/*_test.go "$pkg/"
	echo "$stamp" >"$out/stamp"
fi
(cd "$root/research/cmd/tessera-scheduler" && go mod edit -modfile="$modfile" -replace "k8s.io/kubernetes=$out/kubernetes")
