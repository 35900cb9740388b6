# Tessera's Helm chart (deployments/helm/tessera). Included by the top-level
# Makefile (hack/make/*.mk).
#
#   make helm          build the pinned Helm CLI (tools/helm) into the cache; print its path
#   make chart-lint    helm lint --strict
#   make chart-docs    regenerate docs/values.md from the chart's schema (part of make generate)
#   make promtool      build the pinned promtool (tools/promtool), which tests the
#                      chart's recording rules; print its path

HELM_TOOL := hack/go-tool.sh helm tools/helm helm.sh/helm/v4/cmd/helm
# remove_all_sd leaves Prometheus's service-discovery plugins (the cloud SDKs)
# out of promtool: testing rules needs none, and they are a fifth of its build.
PROMTOOL_TOOL := hack/go-tool.sh promtool tools/promtool github.com/prometheus/prometheus/cmd/promtool "-s -w" remove_all_sd
CHART_DIR := deployments/helm/tessera

.PHONY: helm promtool chart-lint chart-docs

helm: ## Build the pinned Helm CLI (tools/helm) into the cache and print its path
	@$(HELM_TOOL)

promtool: ## Build the pinned promtool (tools/promtool), which tests the recording rules, and print its path
	@$(PROMTOOL_TOOL)

chart-lint: ## helm lint --strict on the chart
	"$$($(HELM_TOOL))" lint --strict $(CHART_DIR)

chart-docs: ## Regenerate docs/values.md from the chart's schema (part of make generate)
	$(GO) run ./hack/valuesdoc $(CHART_DIR) docs/values.md
