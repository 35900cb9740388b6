# Placement's targets: the capacity simulator and tessera-scheduler.
# Included by the top-level Makefile (hack/make/*.mk).
#
#   make sim-openb          the openb figures and plot of docs/benchmarks.md (10 seeds, ~3 min on 2 cores)
#   make sim-openb-variants the FGD paper's openb variants table of docs/benchmarks.md (10 seeds each)
#   make sim-openb-artifact FGD_CSV=<dir>
#                           the same variants from the FGD artifact's own files, replayed as its simulator does
#   make sim-openb-artifact-all FGD_CSV=<dir>
#                           every artifact file with a published FGD figure (17 files, ~40 min on 2 cores)
#   make sim-elastic        hard against elastic budgets on the openb timeline (docs/benchmarks.md, 10 seeds, a few min on 2 cores)
#   make sim-burst          bursts of shares against the same shares one by one, per scheduler (docs/benchmarks.md, seconds)
#   make tessera-scheduler  kube-scheduler with the TesseraPlacement plugin into bin/
#   make test-scheduler-patched
#                           the tests of tessera-scheduler's patched DynamicResources plugin
#                           (PreBind waits on the claim: research/patches/scheduler/README.md), with upstream's plugin cases (TestPlugin)

OPENB_DIR ?= ../shared/data
SIM_POLICIES ?= tessera,fgd,stock,whole
SIM_SEEDS ?= 10

.PHONY: sim-openb sim-openb-variants sim-openb-artifact sim-openb-artifact-all

sim-openb: ## The openb placement figures and plot of docs/benchmarks.md (10 seeds, ~3 min on 2 cores)
	$(GO) build -o $(BIN)/ ./research/cmd/tessera-sim
	$(BIN)/tessera-sim trace --pods $(OPENB_DIR)/openb_pod_list_default.csv \
		--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv \
		--policy $(SIM_POLICIES) --seeds $(SIM_SEEDS) --plot docs/placement-openb.png \
		| tee $(BIN)/sim-openb.json

SIM_VARIANTS ?= gpuspec10 gpuspec20 gpuspec33 gpushare100
# Every openb file of the FGD artifact with a published FGD figure
# ($(OPENB_DIR)/fgd_published_unallocated.csv): sim-openb-artifact-all runs them all.
FGD_PUBLISHED := default cpu050 cpu100 cpu200 cpu250 gpushare40 gpushare60 gpushare80 gpushare100 \
	gpuspec10 gpuspec20 gpuspec25 gpuspec33 multigpu20 multigpu30 multigpu40 multigpu50

sim-openb-variants: ## The FGD paper's openb variants (gpuspec10, 20, 33, gpushare100) table of docs/benchmarks.md (10 seeds each)
	$(GO) build -o $(BIN)/ ./research/cmd/tessera-sim
	for v in $(SIM_VARIANTS); do \
		$(BIN)/tessera-sim trace --pods $(OPENB_DIR)/openb_pod_list_default.csv \
			--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv --variant $$v \
			--policy tessera,stock,fgd --seeds $(SIM_SEEDS) | tee $(BIN)/sim-openb-$$v.json || exit 1; \
	done

# The FGD artifact's own variant files are not in this repository: FGD_CSV names the data/csv
# folder of a clone of github.com/hkust-adsl/kubernetes-scheduler-simulator.
FGD_CSV ?=

sim-openb-artifact: ## The FGD artifact's own openb variant files, replayed as its simulator does (FGD_CSV=<clone>/data/csv; docs/benchmarks.md)
	@test -n "$(FGD_CSV)" && test -f "$(FGD_CSV)/openb_pod_list_gpuspec10.csv" || { \
		echo "FGD_CSV must name the data/csv folder of a clone of github.com/hkust-adsl/kubernetes-scheduler-simulator" >&2; exit 2; }
	$(GO) build -o $(BIN)/ ./research/cmd/tessera-sim
	for v in $(SIM_VARIANTS); do \
		$(BIN)/tessera-sim trace --pods $(FGD_CSV)/openb_pod_list_$$v.csv --shuffle \
			--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv \
			--policy tessera,stock,fgd --seeds $(SIM_SEEDS) | tee $(BIN)/sim-openb-artifact-$$v.json || exit 1; \
	done

sim-openb-artifact-all: SIM_VARIANTS = $(FGD_PUBLISHED)
sim-openb-artifact-all: sim-openb-artifact ## Every FGD artifact file with a published FGD figure (FGD_CSV=<clone>/data/csv; 17 files, ~40 min on 2 cores)

# The openb timeline, arrivals 100x faster, on every 16th node (414 GPUs): demand exceeds
# the fleet for hours. Equal split of the pods among 4 tenants, then a 4:3:2:1 split (plotted).
SIM_ELASTIC_FLAGS ?= --tenants 4 --speedup 100 --node-every 16 --reclaim-delay 30 --seeds $(SIM_SEEDS)

.PHONY: sim-elastic
sim-elastic: ## Hard against elastic tenant budgets on the openb timeline, figures and plot of docs/benchmarks.md (10 seeds, ~2 min of CPU)
	$(GO) build -o $(BIN)/ ./research/cmd/tessera-sim
	$(BIN)/tessera-sim timeline --pods $(OPENB_DIR)/openb_pod_list_default.csv \
		--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv $(SIM_ELASTIC_FLAGS) \
		| tee $(BIN)/sim-elastic-equal.json
	$(BIN)/tessera-sim timeline --pods $(OPENB_DIR)/openb_pod_list_default.csv \
		--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv $(SIM_ELASTIC_FLAGS) --split 4,3,2,1 \
		--plot docs/elastic-openb.png | tee $(BIN)/sim-elastic-split.json

# Bursts of shares in the simulator: the e2e's setup (four shares of 25-34Gi on two H200s,
# TestShareBurstPacksLikeOneByOne), then eight 30Gi shares on an eight-GPU node with four free.
.PHONY: sim-burst
sim-burst: ## Bursts of shares against the same shares one by one, GPUs touched and left free per scheduler (docs/benchmarks.md, seconds)
	$(GO) build -o $(BIN)/ ./research/cmd/tessera-sim
	$(BIN)/tessera-sim burst --seeds $(SIM_SEEDS) | tee $(BIN)/sim-burst-e2e.json
	$(BIN)/tessera-sim burst --seeds $(SIM_SEEDS) --gpus 8 --busy-gpus 4 --shares 8 \
		--memory-min-gib 30 --memory-max-gib 30 | tee $(BIN)/sim-burst-eight.json
	$(BIN)/tessera-sim burst --seeds $(SIM_SEEDS) --gpus 3 --shares 6 \
		--memory-min-gib 28 --memory-max-gib 34 | tee $(BIN)/sim-burst-e2e-three.json
	$(BIN)/tessera-sim burst --seeds $(SIM_SEEDS) --gpus 8 --busy-gpus 4 --shares 8 \
		--memory-min-gib 28 --memory-max-gib 34 --binding-conditions=false | tee $(BIN)/sim-burst-e2e-eight.json

# tessera-scheduler is kube-scheduler with Tessera's plugin, built from its own module
# (research/cmd/tessera-scheduler/go.mod) so that k8s.io/kubernetes stays out of Tessera's module,
# on the patched allocator (shares walk indexed, node cache: research/patches/allocator/README.md; the go.mod
# overlay.sh writes replaces the pinned allocator module with a patched copy), and with
# PreBind waiting on the claim instead of polling it every 5 s (research/patches/scheduler/README.md:
# the same go.mod replaces k8s.io/kubernetes with a copy whose DynamicResources plugin is patched).
# Always rebuilt (go build is incremental). The e2e suite and dev-cluster run it as a
# second scheduler (schedulerName tessera-scheduler).
TESSERA_SCHEDULER_LDFLAGS := -s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37

.PHONY: tessera-scheduler
tessera-scheduler: ## Build kube-scheduler with the TesseraPlacement plugin into bin/
	modfile="$$(research/patches/allocator/overlay.sh $(BIN)/allocator-scheduler research/cmd/tessera-scheduler)"; \
	research/patches/scheduler/overlay.sh $(BIN)/scheduler-patches "$$modfile"; \
	cd research/cmd/tessera-scheduler && CGO_ENABLED=0 $(GO) build -modfile "$$modfile" -tags patched_allocator -trimpath -ldflags "$(TESSERA_SCHEDULER_LDFLAGS)" -o $(BIN)/tessera-scheduler .

e2e dev-cluster bench-binding: tessera-scheduler
e2e dev-cluster bench-binding: export TESSERA_SCHEDULER_BINARY = $(BIN)/tessera-scheduler

.PHONY: test-scheduler-patched
test-scheduler-patched: ## The tests of tessera-scheduler's patched DynamicResources plugin, with upstream's plugin cases (TestPlugin)
	modfile="$$(research/patches/allocator/overlay.sh $(BIN)/allocator-scheduler research/cmd/tessera-scheduler)"; \
	research/patches/scheduler/overlay.sh $(BIN)/scheduler-patches "$$modfile"; \
	cd research/cmd/tessera-scheduler && $(GO) test -modfile "$$modfile" -count=1 -run 'TestWaitForBinding|TestGatherAllocatedState|TestReserveTakesTheFinalChoice|TestPlugin' \
		k8s.io/kubernetes/pkg/scheduler/framework/plugins/dynamicresources

# The tessera-scheduler module follows Tessera's: after a change to go.mod, its
# go.mod/go.sum must be tidied too (no compile, a second or two).
.PHONY: verify-tessera-scheduler
verify: verify-tessera-scheduler
verify-tessera-scheduler: ## Check that tessera-scheduler's own module is tidy (part of verify)
	cd research/cmd/tessera-scheduler && $(GO) mod tidy
	@if [ -n "$$(git status --porcelain -- research/cmd/tessera-scheduler/go.mod research/cmd/tessera-scheduler/go.sum)" ]; then \
		echo "research/cmd/tessera-scheduler: go mod tidy changed go.mod/go.sum"; git diff -- research/cmd/tessera-scheduler/go.mod | head -30; exit 1; fi
