# Scheduler benchmarks. Included by the top-level Makefile (hack/make/*.mk).
#
#   make bench-scheduler   the real kube-scheduler on a local control plane with
#                          BENCH_NODES simulated 8 x H200 nodes placing BENCH_PODS
#                          pods per layout (Tessera, plain whole devices, NVIDIA), then
#                          tessera-scheduler on Tessera's default layout
#   make bench-allocator   the allocator benchmarks of docs/benchmarks.md (one run, ~30 min on 2 cores)
#   make test-allocator-patched, bench-allocator-patched
#                          the same proofs and cost on tessera-scheduler's patched allocator
#                          (shares walk indexed, node cache: research/patches/allocator/README.md), and the
#                          patched package's own tests (upstream's and the node cache's)

BENCH_NODES ?= 500
BENCH_PODS ?= 1000
BENCH_PHASE_TIMEOUT ?= 3m

.PHONY: bench-scheduler bench-allocator

bench-scheduler: cluster-binaries tessera-scheduler ## The real kube-scheduler at scale: Tessera vs plain vs NVIDIA layouts, then tessera-scheduler on Tessera's layout
	go build -o bin/bench-scheduler ./research/cmd/bench-scheduler
	bin/bench-scheduler --bin-dir=$(TESSERA_CACHE)/bin --nodes=$(BENCH_NODES) --pods=$(BENCH_PODS) --phase-timeout=$(BENCH_PHASE_TIMEOUT) \
		--tessera-scheduler=$(BIN)/tessera-scheduler

bench-allocator: ## Allocator cost per claim and node, three layouts, and the levers
	go test -run '^$$' -bench 'Scheduler(Cost|Levers)' -benchtime 2x -timeout 90m ./research/scheduling/

# tessera-scheduler's patched allocator (research/patches/allocator/README.md), for measuring what
# the patches buy and proving they change no allocation.
ALLOCATOR_MODFILE = $(shell research/patches/allocator/overlay.sh bin/allocator)

.PHONY: test-allocator-patched bench-allocator-patched

test-allocator-patched: ## The allocator proofs of research/scheduling, and the allocator's own tests, on tessera-scheduler's patched allocator
	go test -count=1 -tags patched_allocator -modfile "$(ALLOCATOR_MODFILE)" ./research/scheduling/
	cd bin/allocator/dynamic-resource-allocation && go test -race -count=1 ./structured/internal/incubating/ ./resourceslice/tracker/

bench-allocator-patched: ## Scheduler cost per claim and node on tessera-scheduler's patched allocator
	go test -modfile "$(ALLOCATOR_MODFILE)" -run '^$$' -bench 'SchedulerCost' -benchtime 2x -timeout 60m ./research/scheduling/
