# Container images (Dockerfile). Included by the top-level Makefile (hack/make/*.mk).
#
#   make images   build $(IMAGE):$(TAG) with docker or podman, where an engine runs

IMAGE ?= ghcr.io/tessera-gpu/tessera
TAG ?= $(shell awk '/^appVersion:/ {gsub(/"/, "", $$2); print $$2}' deployments/helm/tessera/Chart.yaml)

.PHONY: images
images:
	@engine=""; \
	for e in docker podman; do if command -v $$e >/dev/null && $$e info >/dev/null 2>&1; then engine=$$e; break; fi; done; \
	if [ -z "$$engine" ]; then \
		echo "images: no running container engine (docker or podman) on this machine; the image is built where one runs:" >&2; \
		echo "  docker build -t $(IMAGE):$(TAG) ." >&2; exit 1; fi; \
	echo "$$engine build -t $(IMAGE):$(TAG) ."; \
	$$engine build --build-arg VERSION=$(TAG) -t $(IMAGE):$(TAG) .
