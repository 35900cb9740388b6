# Local cluster, demo and e2e targets. Included by the top-level Makefile (hack/make/*.mk).
#
#   make cluster-binaries  build etcd + kube-apiserver/-scheduler/-controller-manager
#                          into $(TESSERA_CACHE)/bin (minutes once, then cached)
#   make e2e               run the e2e suite on a local cluster
#   make demo              local cluster + sample workloads; Ctrl-C stops it
#   make dev-cluster       local cluster with Tessera; prints "ready kubeconfig=<path>"
#   make kubectl           kubectl at the cluster's version into bin/kubectl (a newcomer
#                          has none; demo and dev-cluster build it)

TESSERA_CACHE ?= $(HOME)/.cache/tessera/k8s-1.37.2
export TESSERA_CACHE

E2E_TIMEOUT ?= 20m
# go test flags for the suite; -v lists which checks ran and which skipped, and why.
# Narrow with E2E_RUN, a go test -run pattern passed quoted ("TestA|TestB" is
# safe there), or with E2E_FLAGS="-v -run TestPluginRestart".
E2E_FLAGS ?= -v
E2E_RUN ?=

.PHONY: cluster-binaries e2e demo dev-cluster e2e-plugin tessera-local kubectl

cluster-binaries: ## Build etcd and the Kubernetes control plane into $(TESSERA_CACHE)/bin (minutes once, then cached)
	@hack/cluster-binaries.sh

# Always rebuilt (go build is incremental), so the suite runs the plugin as it is now.
e2e-plugin: ## Build the kubelet plugin the local cluster runs into bin/ (e2e and demo use it)
	go build -o bin/dra-kubelet-plugin ./cmd/dra-kubelet-plugin

kubectl: ## Build kubectl at the local cluster's version into bin/kubectl
	@mkdir -p $(BIN) && ln -sf "$$(hack/kubectl.sh)" $(BIN)/kubectl

tessera-local: ## Build bin/tessera-local (hack/tessera-local), the local cluster runner behind demo and dev-cluster
	go build -o bin/tessera-local ./hack/tessera-local

e2e: cluster-binaries e2e-plugin ## Run the e2e suite on a local cluster (narrow with E2E_RUN='TestA|TestB')
	helm="$$($(HELM_TOOL))"; TESSERA_E2E=1 TESSERA_PLUGIN_BINARY=$(CURDIR)/bin/dra-kubelet-plugin TESSERA_HELM="$$helm" \
		go test -race -count=1 -timeout $(E2E_TIMEOUT) $(E2E_FLAGS) $(if $(E2E_RUN),-run '$(E2E_RUN)') ./e2e/localcluster/ ./e2e/framework/...

demo: cluster-binaries e2e-plugin tessera-local kubectl ## Start the local cluster with Tessera and the sample workloads; Ctrl-C stops it
	helm="$$($(HELM_TOOL))"; bin/tessera-local demo --bin-dir=$(TESSERA_CACHE)/bin --plugin=$(CURDIR)/bin/dra-kubelet-plugin --helm="$$helm" --kubectl=$(BIN)/kubectl

dev-cluster: cluster-binaries e2e-plugin tessera-local kubectl ## Start a local cluster with Tessera and print its kubeconfig; Ctrl-C stops it
	@helm="$$($(HELM_TOOL))"; bin/tessera-local dev-cluster --bin-dir=$(TESSERA_CACHE)/bin --plugin=$(CURDIR)/bin/dra-kubelet-plugin --helm="$$helm"
