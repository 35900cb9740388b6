# Node-side prepare: regenerate the opaque config API's deepcopy.
CONTROLLER_GEN ?= go run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0

.PHONY: generate-config
generate-config:
	$(CONTROLLER_GEN) object paths=./api/config/...
