# What the image ships. Included by the top-level Makefile (hack/make/*.mk).
#
#   make verify-imports   fail when the shipped binaries (dra-kubelet-plugin,
#                         dra-controller) import test, e2e, simulator or
#                         scheduler code (part of make verify)

.PHONY: verify-imports
verify: verify-imports
verify-imports: ## Fail when the shipped binaries import test, e2e, simulator or scheduler code (part of verify)
	$(GO) run ./hack/importcheck
