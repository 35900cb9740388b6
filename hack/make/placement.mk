# Placement's targets: the capacity simulator and tessera-scheduler.
# Included by the top-level Makefile (hack/make/*.mk).
#
#   make sim-openb   the openb figures and plot of docs/benchmarks.md (10 seeds, ~3 min on 2 cores)

OPENB_DIR ?= ../shared/data
SIM_POLICIES ?= whole,stock,tessera,fgd
SIM_SEEDS ?= 10

.PHONY: sim-openb

sim-openb:
	$(GO) build -o $(BIN)/ ./cmd/tessera-sim
	$(BIN)/tessera-sim trace --pods $(OPENB_DIR)/openb_pod_list_default.csv \
		--nodes $(OPENB_DIR)/openb_node_list_gpu_node.csv \
		--policy $(SIM_POLICIES) --seeds $(SIM_SEEDS) --plot docs/placement-openb.png \
		| tee $(BIN)/sim-openb.json
