#!/usr/bin/env bash
# Runs make targets one after another, as make test's stages: each is headed
# by the time it starts, and a table of every stage's duration ends the output,
# also when a stage fails (the run stops there, as make would). A failed
# stage's output ends with a digest of why each of its tests failed
# (hack/testdigest), so that a log cut in its middle still says.
#
#   hack/stages.sh MAKE TARGET...
set -uo pipefail
make=${1:?usage: stages.sh MAKE TARGET...}
shift
since() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
begin=$SECONDS
rows=()
log=$(mktemp)
summary() {
	echo
	echo "make test stages:"
	printf '  %-26s %s\n' "${rows[@]}"
	printf '  %-26s %s\n' total "$(since $((SECONDS - begin)))"
	rm -f "$log"
}
trap summary EXIT
for target in "$@"; do
	echo "==> make $target (starts $(date -u +%H:%M:%S) UTC, $(since $((SECONDS - begin))) into the run)"
	start=$SECONDS
	$make --no-print-directory "$target" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	if ((rc != 0)); then
		rows+=("$target" "$(since $((SECONDS - start))) FAILED")
		"${GO:-go}" run ./hack/testdigest "$log"
		exit "$rc"
	fi
	rows+=("$target" "$(since $((SECONDS - start)))")
done
