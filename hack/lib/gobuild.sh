# Sourced by the scripts that build pinned Go commands into a cache
# (hack/cluster-binaries.sh, hack/node-binaries.sh, hack/go-tool.sh,
# hack/linters.sh). Progress goes to stderr, so that a script can print its
# result on stdout.

# The Kubernetes version of the pinned modules, stamped into the binaries built
# from k8s.io/kubernetes so that they report v1.37.2 instead of v0.0.0-master, which
# clients and version-skew checks read.
kube_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"

# files_key FILE... prints the hash a cached build is stamped with: the pinned
# module files it was built from, and whatever else the caller names.
files_key() {
  cat "$@" | sha256sum | cut -d' ' -f1
}

# go_build PREFIX NAME MODULE_DIR PACKAGE OUT LDFLAGS [TAGS]
# builds PACKAGE of the module in MODULE_DIR into OUT, static and reproducible
# (CGO_ENABLED=0, -trimpath), through OUT.tmp so that an interrupted build
# leaves nothing that looks built. The large commands compile for minutes, so it
# says every minute that it is still building: nobody (and no CI log watchdog)
# should take the silence for a hang.
go_build() {
  local prefix=$1 name=$2 dir=$3 pkg=$4 out=$5 ldflags=$6 tags=${7:-} start=${SECONDS}
  echo "${prefix}: building ${name} (${pkg}) ..." >&2
  # The ticker kills its sleep when stopped: an orphaned sleep would hold stderr
  # open for up to a minute after the build.
  (
    trap 'kill "${s}" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 60 & s=$!
      wait "${s}"
      echo "${prefix}:   still building ${name} ($((SECONDS - start))s)" >&2
    done
  ) &
  local ticker=$! rc=0
  (cd "${dir}" && CGO_ENABLED=0 go build -trimpath -tags="${tags}" -ldflags="${ldflags}" -o "${out}.tmp" "${pkg}") >&2 || rc=$?
  kill "${ticker}" 2>/dev/null || true
  wait "${ticker}" 2>/dev/null || true
  if ((rc != 0)); then
    echo "${prefix}: building ${name} failed" >&2
    return "${rc}"
  fi
  mv "${out}.tmp" "${out}"
  echo "${prefix}: built ${name} in $((SECONDS - start))s" >&2
}
