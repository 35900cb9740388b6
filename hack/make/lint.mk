# Linters. Included by the top-level Makefile (hack/make/*.mk); `make verify` runs lint.
#
#   make linters   build golangci-lint (with Kubernetes' logcheck compiled in) from the
#                  pinned module tools/lint into $(TESSERA_LINT_CACHE)/bin
#                  (minutes once, then cached by a hash of tools/lint/go.{mod,sum})
#   make lint      run it with .golangci.yml over Tessera's module and the nested modules
#                  that hold code of their own (LINT_MODULES); test/lintrules proves the
#                  config's depguard rules (make unit)

TESSERA_LINT_CACHE ?= $(HOME)/.cache/tessera/lint
export TESSERA_LINT_CACHE

# Extra flags for golangci-lint run, e.g. LINT_FLAGS=--fix.
LINT_FLAGS ?=
# golangci-lint refuses to start while another run holds its lock (one per machine, in
# $TMPDIR); two checkouts verified at once wait for each other instead of failing.
LINT_RUN_FLAGS = --allow-serial-runners $(LINT_FLAGS)

# Nested modules with code of their own. They are linted with the flags their builds use
# (hack/go-tool.sh, hack/linters.sh, the tessera-scheduler target: CGO_ENABLED=0,
# -trimpath), so the type information golangci-lint compiles is the build cache those
# builds reuse, and a cold CI pays for it once. tools/{,containerd,etcd,helm,kubectl,kubelet}
# hold only blank imports behind the `tools` build tag: nothing to lint.
LINT_MODULES := research/cmd/tessera-scheduler tools/lint

.PHONY: linters lint

linters: ## Build the pinned linters (cached)
	@hack/linters.sh >/dev/null

lint: ## Run golangci-lint with logcheck (.golangci.yml)
	@bin=$$(hack/linters.sh) && "$$bin/golangci-lint" run $(LINT_RUN_FLAGS) ./... && \
	for m in $(LINT_MODULES); do \
		(cd "$$m" && CGO_ENABLED=0 GOFLAGS=-trimpath "$$bin/golangci-lint" run --config "$(CURDIR)/.golangci.yml" $(LINT_RUN_FLAGS) ./...); \
	done
	@# The linters' own module stays tidy, so its go.sum pins exactly what is built.
	@cd tools/lint && $(GO) mod tidy && git diff --exit-code --stat -- go.mod go.sum
