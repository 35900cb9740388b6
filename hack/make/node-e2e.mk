# Real-node e2e targets. Included by the top-level Makefile (hack/make/*.mk).
#
#   make node-binaries   build the kubelet, containerd (+ shim, ctr) and pause into
#                        $(TESSERA_CACHE)/node/bin (minutes once, then cached)
#   make node-e2e-host   install what the host needs from Debian (runc, CNI plugins,
#                        static busybox); needs root and apt
#   make node-e2e        run e2e/node on the local control plane plus a real node
#                        (kubelet + containerd + runc), with Tessera installed as a
#                        user installs it: the image of make image imported into
#                        containerd, the chart installed with Helm; needs root.
#                        NODE_E2E_DRIVER_LAYOUT picks the fake driver root's layout
#                        (host, gpu-operator, usr-local-nvidia; CI runs host)
#   make node-e2e-layouts  make node-e2e once per driver-root layout
#
# docs/node-e2e.md says what the host needs and what the suite proves.

NODE_E2E_TIMEOUT ?= 20m
# go test flags for the real-node suite, e.g. NODE_E2E_FLAGS="-v -run TestRestartsLoseNothing".
NODE_E2E_FLAGS ?= -v
# A go test -run pattern, passed quoted ("TestA|TestB" is safe there).
NODE_E2E_RUN ?=
# The fake driver root's layout (e2e/framework/realnode.DriverLayouts).
NODE_E2E_DRIVER_LAYOUT ?= host
NODE_E2E_DRIVER_LAYOUTS := host gpu-operator usr-local-nvidia

.PHONY: node-binaries node-e2e-host node-e2e-check-host node-mps-standin node-e2e node-e2e-layouts

node-binaries: ## Build the kubelet, containerd, its shim, ctr and pause into $(TESSERA_CACHE)/node/bin (cached)
	@hack/node-binaries.sh

node-e2e-host: ## Install what node-e2e needs from Debian (runc, CNI plugins, static busybox); root and apt
	apt-get install -y --no-install-recommends runc containernetworking-plugins busybox-static

# The host is checked first: a machine that cannot run the node (not root, no
# cgroups, ...) fails at once, listing what is missing, before minutes of builds.
node-e2e-check-host: ## List what this machine lacks for node-e2e (root, cgroups, overlayfs, mknod, runc, CNI)
	@$(GO) run ./e2e/framework/realnode/checkhost

# The suite runs on a node with one GPU (every test's GPU is GPU 0); the rolling
# upgrade needs a whole GPU, a MIG partition and a share running at once, so it
# runs again on a node of NODE_E2E_UPGRADE_GPUS GPUs (skipped on one GPU).
NODE_E2E_UPGRADE_GPUS ?= 3
# The stand-in MPS program the fake driver root runs as its MPS control daemon
# and server (e2e/framework/realnode/mps-standin), static so that it runs in the plugin's
# image and in the test image alike. A test tool: the product image never has it.
MPS_STANDIN := _output/node-e2e/mps-standin
NODE_E2E_ENV = TESSERA_NODE_E2E=1 TESSERA_MPS_STANDIN=$(CURDIR)/$(MPS_STANDIN) TESSERA_IMAGE=$(IMAGE):$(TAG) TESSERA_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_ARCHIVE) \
	TESSERA_NODE_DRIVER_LAYOUT=$(NODE_E2E_DRIVER_LAYOUT)

# Always rebuilt (go build is incremental), so the lane runs the stand-in as it is now.
node-mps-standin: ## Build the static stand-in MPS program of node-e2e's fake driver root (a test tool, never in the image)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(MPS_STANDIN) ./e2e/framework/realnode/mps-standin

node-e2e: node-e2e-check-host cluster-binaries node-binaries image node-mps-standin ## Run e2e/node: a real kubelet and containerd here, Tessera installed by its chart (root)
	helm="$$($(HELM_TOOL))"; $(NODE_E2E_ENV) TESSERA_HELM="$$helm" \
		go test -count=1 -timeout $(NODE_E2E_TIMEOUT) $(NODE_E2E_FLAGS) $(if $(NODE_E2E_RUN),-run '$(NODE_E2E_RUN)') ./e2e/node/
	helm="$$($(HELM_TOOL))"; $(NODE_E2E_ENV) TESSERA_HELM="$$helm" TESSERA_NODE_GPUS=$(NODE_E2E_UPGRADE_GPUS) \
		go test -count=1 -timeout $(NODE_E2E_TIMEOUT) -v -run '^TestRollingUpgradeLosesNothing$$' ./e2e/node/

node-e2e-layouts: ## Run node-e2e once per driver-root layout (host, gpu-operator, usr-local-nvidia)
	@for l in $(NODE_E2E_DRIVER_LAYOUTS); do echo "== node-e2e, driver layout $$l"; $(MAKE) --no-print-directory node-e2e NODE_E2E_DRIVER_LAYOUT=$$l || exit 1; done
