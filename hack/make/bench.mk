# Scheduler benchmarks. Included by the top-level Makefile (hack/make/*.mk).
#
#   make bench-scheduler   the real kube-scheduler on a local control plane with
#                          BENCH_NODES simulated 8 x H200 nodes placing BENCH_PODS
#                          pods per layout (Tessera, plain whole devices, NVIDIA)
#   make bench-allocator   the allocator benchmarks of docs/benchmarks.md

BENCH_NODES ?= 500
BENCH_PODS ?= 1000
BENCH_PHASE_TIMEOUT ?= 3m

.PHONY: bench-scheduler bench-allocator

bench-scheduler: cluster-binaries ## The real kube-scheduler at scale: Tessera vs plain vs NVIDIA layouts
	go build -o bin/bench-scheduler ./e2e/cmd/bench-scheduler
	bin/bench-scheduler --bin-dir=$(TESSERA_CACHE)/bin --nodes=$(BENCH_NODES) --pods=$(BENCH_PODS) --phase-timeout=$(BENCH_PHASE_TIMEOUT)

bench-allocator: ## Allocator cost per claim and node, three layouts, and the levers
	go test -run '^$$' -bench 'SchedulerCost' -benchtime 3x -timeout 60m ./test/scheduling/
	go test -run '^$$' -bench 'SchedulerLevers' -benchtime 3x -timeout 60m ./test/scheduling/
