# Tenancy's targets. Included by the top-level Makefile (hack/make/*.mk).
#
#   make generate-tenancy  regenerate the GPUTenant deepcopy and its CRD, which
#                          the Helm chart takes from deployments/helm/tessera/crds
#   make generate-rbac     regenerate the controller's ClusterRole rules from the
#                          +kubebuilder:rbac markers of internal/controller, which the
#                          chart takes from deployments/helm/tessera/files/controller-rbac
#   make bench-tenancy     the admission-decision benchmarks of docs/benchmarks.md
#   make bench-admission   admission under one tenant's flood of 5,000 over-budget
#                          claims, FIFO and fair queue side by side, on the local
#                          cluster (docs/benchmarks.md; ~15 min on 2 cores)
#   make bench-binding     a pod's create-to-bound latency, tenanted and untenanted
#                          alternately (50 pods), under kube-scheduler and
#                          tessera-scheduler, on the local cluster (docs/benchmarks.md)
#   make bench-burst       GPUs touched by bursts of shares against the same shares
#                          one by one, kube-scheduler and tessera-scheduler (make e2e
#                          runs tessera-scheduler's half only)

TENANCY_CRD_DIR := deployments/helm/tessera/crds
CONTROLLER_RBAC_DIR := deployments/helm/tessera/files/controller-rbac

.PHONY: generate-tenancy generate-rbac bench-tenancy bench-admission bench-binding bench-burst

generate-tenancy: ## Regenerate the GPUTenant deepcopy and CRD (part of generate)
	$(CONTROLLER_GEN) object paths=./api/tenancy/...
	$(CONTROLLER_GEN) crd paths=./api/tenancy/... output:crd:artifacts:config=$(TENANCY_CRD_DIR)

generate-rbac: ## Regenerate the controller's ClusterRole rules in the chart from internal/controller's RBAC markers (part of generate)
	$(CONTROLLER_GEN) rbac:roleName=tessera-controller paths=./internal/controller/... output:rbac:dir=$(CONTROLLER_RBAC_DIR)

bench-tenancy: ## The admission-decision benchmarks of docs/benchmarks.md
	go test -run '^$$' -bench . -benchtime 3x -count 3 ./pkg/tenancy/

bench-admission: cluster-binaries e2e-plugin e2e-controller ## Admission under one tenant's flood of 5,000 claims, FIFO and fair, on the local cluster (~15 min)
	helm="$$($(HELM_TOOL))"; TESSERA_E2E=1 TESSERA_PLUGIN_BINARY=$(CURDIR)/bin/dra-kubelet-plugin TESSERA_HELM="$$helm" \
		go test -count=1 -timeout 40m -v -run '^$$' -bench AdmissionFairness -benchtime 1x ./e2e/localcluster/

# tessera-scheduler and TESSERA_SCHEDULER_BINARY: hack/make/placement.mk.
bench-binding: cluster-binaries e2e-plugin e2e-controller ## Create-to-bound latency, tenanted and untenanted pods interleaved, kube-scheduler and tessera-scheduler, on the local cluster
	helm="$$($(HELM_TOOL))"; TESSERA_E2E=1 TESSERA_PLUGIN_BINARY=$(CURDIR)/bin/dra-kubelet-plugin TESSERA_HELM="$$helm" \
		go test -count=1 -timeout 40m -v -run '^$$' -bench TenancyBindingLatency -benchtime 1x ./e2e/localcluster/

bench-burst: cluster-binaries e2e-plugin e2e-controller tessera-scheduler ## GPUs touched by bursts of shares against one by one, kube-scheduler and tessera-scheduler, on the local cluster
	helm="$$($(HELM_TOOL))"; TESSERA_E2E=1 TESSERA_E2E_BURST_STOCK=1 TESSERA_SCHEDULER_BINARY=$(BIN)/tessera-scheduler \
		TESSERA_PLUGIN_BINARY=$(CURDIR)/bin/dra-kubelet-plugin TESSERA_HELM="$$helm" \
		go test -count=1 -timeout 40m -v -run '^TestShareBurstPacksLikeOneByOne$$' ./e2e/localcluster/

# The local cluster runs the tenancy controller as it is now.
.PHONY: e2e-controller
e2e-controller: ## Build the controller bench-admission runs into bin/
	go build -o bin/dra-controller ./cmd/dra-controller

e2e demo dev-cluster: e2e-controller
