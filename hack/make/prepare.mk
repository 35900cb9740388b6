# Node-side prepare's targets. Included by the top-level Makefile (hack/make/*.mk).
#
#   make generate-config  regenerate the opaque config API's deepcopy
#   make bench-prepare    the node-side prepare benchmarks of docs/benchmarks.md

CONTROLLER_GEN ?= go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0

.PHONY: generate-config bench-prepare

generate-config: ## Regenerate the opaque config API's deepcopy (part of generate)
	$(CONTROLLER_GEN) object paths=./api/config/...

bench-prepare: ## The node-side prepare benchmarks of docs/benchmarks.md
	go test -run '^$$' -bench PrepareUnprepare -benchtime 500x -count 3 ./internal/prepare/
	go test -run '^$$' -bench Save -count 3 ./internal/checkpoint/
