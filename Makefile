# Tessera's build. `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c

GO ?= go
BIN := $(CURDIR)/bin
# go-nvml's cgo bindings declare functions NVIDIA has deprecated; their
# warnings drown real output.
export CGO_CFLAGS ?= -Wno-deprecated-declarations

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help: every target, one line each
	@awk 'BEGIN {FS = ":[^#]*## *"} /^[a-zA-Z0-9_-]+:[^=]*##/ {printf "  %-26s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Every target that make help cannot list is an error (part of verify).
.PHONY: verify-help
verify: verify-help
verify-help: ## Fail when a make target has no one-line description for make help (part of verify)
	@missing=$$(for f in $(MAKEFILE_LIST); do grep -oE '^[a-zA-Z0-9_-]+:([^=]|$$)' "$$f" | cut -d: -f1; done | sort -u | \
		while read -r t; do grep -qE "^$$t:[^=]*##" $(MAKEFILE_LIST) || echo "$$t"; done); \
	if [ -n "$$missing" ]; then echo "make targets without a ## line for make help:"; echo "$$missing"; exit 1; fi

.PHONY: build
build: ## Build the binaries into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: unit
unit: ## Run the unit tests with the race detector (the chart and lint-rule tests use the pinned Helm, promtool and golangci-lint)
	helm="$$($(HELM_TOOL))"; promtool="$$($(PROMTOOL_TOOL))"; lint="$$(hack/linters.sh)"; \
	TESSERA_HELM="$$helm" TESSERA_PROMTOOL="$$promtool" TESSERA_GOLANGCI_LINT="$$lint/golangci-lint" $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

.PHONY: test
TEST_STAGES := verify unit test-allocator-patched test-scheduler-patched e2e node-e2e
test: ## Run everything CI runs: verify, unit tests, tessera-scheduler's patches' tests, e2e suite, real-node suite (root); a table of each stage's time ends it
	@hack/stages.sh "$(MAKE)" $(TEST_STAGES)

.PHONY: bench
bench: ## Run the benchmarks of docs/benchmarks.md
	$(GO) test -run '^$$' -bench Packing -benchtime 1x ./research/scheduling/
	$(MAKE) bench-allocator
	$(MAKE) bench-prepare

.PHONY: fmt
fmt: ## Format the code
	gofmt -w $$(git ls-files '*.go')

.PHONY: generate
generate: generate-config generate-tenancy generate-rbac chart-docs ## Regenerate generated code and docs (deepcopy, CRDs, the controller's RBAC, the chart's values reference)

.PHONY: verify
verify: generate lint ## gofmt, go vet, linters, go mod tidy and generated files must leave no diff
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) mod tidy
	@if [ -n "$$(git status --porcelain -- go.mod go.sum api deployments docs)" ]; then \
		echo "go mod tidy or generation changed files:"; git status --porcelain -- go.mod go.sum api deployments docs; git diff -- go.mod go.sum docs | head -50; exit 1; fi

.PHONY: clean
clean: ## Remove build output
	rm -rf $(BIN)

# Each area's targets live in a fragment of its own: hack/make/<area>.mk.
include $(sort $(wildcard hack/make/*.mk))
