# Linters. Included by the top-level Makefile (hack/make/*.mk); `make verify` runs lint.
#
#   make linters   build golangci-lint (with Kubernetes' logcheck compiled in) from the
#                  pinned module tools/lint into $(TESSERA_LINT_CACHE)/bin
#                  (minutes once, then cached by a hash of tools/lint/go.{mod,sum})
#   make lint      run it over the module with .golangci.yml

TESSERA_LINT_CACHE ?= $(HOME)/.cache/tessera/lint
export TESSERA_LINT_CACHE

# Extra flags for golangci-lint run, e.g. LINT_FLAGS=--fix.
LINT_FLAGS ?=

.PHONY: linters lint

linters: ## Build the pinned linters (cached)
	@hack/linters.sh >/dev/null

lint: ## Run golangci-lint with logcheck (.golangci.yml)
	@bin=$$(hack/linters.sh) && "$$bin/golangci-lint" run $(LINT_FLAGS) ./...
	@# The linters' own module stays tidy, so its go.sum pins exactly what is built.
	@cd tools/lint && $(GO) mod tidy && git diff --exit-code --stat -- go.mod go.sum
