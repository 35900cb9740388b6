# Tenancy's targets. Included by the top-level Makefile (hack/make/*.mk).
#
#   make generate-tenancy  regenerate the GPUTenant deepcopy and its CRD, which
#                          the Helm chart takes from deployments/helm/tessera/crds
#   make bench-tenancy     the admission-decision benchmarks of docs/benchmarks.md

TENANCY_CRD_DIR := deployments/helm/tessera/crds

.PHONY: generate-tenancy bench-tenancy

generate-tenancy:
	$(CONTROLLER_GEN) object paths=./api/tenancy/...
	$(CONTROLLER_GEN) crd paths=./api/tenancy/... output:crd:artifacts:config=$(TENANCY_CRD_DIR)

bench-tenancy:
	go test -run '^$$' -bench . -benchtime 3x -count 3 ./pkg/tenancy/

# The local cluster runs the tenancy controller as it is now.
.PHONY: e2e-controller
e2e-controller:
	go build -o bin/dra-controller ./cmd/dra-controller

e2e demo dev-cluster: e2e-controller
