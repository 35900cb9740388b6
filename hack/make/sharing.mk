# Tenant-exclusive time-sharing's targets. Included by the top-level
# Makefile (hack/make/*.mk).
#
#   make bench-sharing  GPUs needed with and without exclusive sharing, on the
#                       upstream allocator (docs/benchmarks.md)

.PHONY: bench-sharing

bench-sharing: ## GPUs needed with and without tenant-exclusive sharing, on the upstream allocator
	go test -run '^$$' -bench TenantExclusivePacking -benchtime 1x ./research/scheduling/
