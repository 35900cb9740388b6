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

# The same image without a container engine: hack/image assembles it from the
# two binaries built here and glibc from the Debian packages that
# hack/image/debian.lock records by version and SHA-256, as an OCI
# image-layout tarball that `ctr images import` (containerd) accepts.
#
#   make image          write $(IMAGE_ARCHIVE), named $(IMAGE):$(TAG); print the name and digest
#   make image-verify   build it twice from two copies of HEAD at different paths and compare the archives
#   make image-lock     record the libc6 apt serves now in hack/image/debian.lock
IMAGE_DIR := _output/image
IMAGE_ARCHIVE := $(IMAGE_DIR)/tessera.oci.tar
# image-lock: the architectures to lock, comma-separated (arm64 needs
# `dpkg --add-architecture arm64 && apt-get update` first).
IMAGE_ARCHS ?= $(shell $(GO) env GOARCH)
IMAGE_SOURCE ?= https://github.com/tessera-gpu/tessera
# Every file's mtime and the image's creation time: the commit's, so that the
# same commit gives the same digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
IMAGE_REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
# As the Dockerfile builds them: no paths, no build ID, no symbols.
IMAGE_LDFLAGS := -s -w -buildid=

# image_build DIR SRC: build the two shipped binaries of the tree at SRC into
# DIR/bin and assemble DIR/tessera.oci.tar.
define image_build
	mkdir -p $(1)/bin
	cd $(2) && CGO_ENABLED=1 $(GO) build -trimpath -ldflags="$(IMAGE_LDFLAGS)" -o $(abspath $(1))/bin/dra-kubelet-plugin ./cmd/dra-kubelet-plugin
	cd $(2) && CGO_ENABLED=0 $(GO) build -trimpath -ldflags="$(IMAGE_LDFLAGS)" -o $(abspath $(1))/bin/dra-controller ./cmd/dra-controller
	$(GO) run ./hack/image build -name $(IMAGE):$(TAG) -out $(1)/tessera.oci.tar -epoch $(SOURCE_DATE_EPOCH) \
		-bin /dra-kubelet-plugin=$(1)/bin/dra-kubelet-plugin -bin /dra-controller=$(1)/bin/dra-controller \
		-label org.opencontainers.image.source=$(IMAGE_SOURCE) -label org.opencontainers.image.version=$(TAG) \
		-label org.opencontainers.image.revision=$(IMAGE_REVISION)
endef

.PHONY: image image-verify image-lock
image: ## Write the product image as an OCI archive, _output/image/tessera.oci.tar, without a container engine
	@if [ -n "$$(git status --porcelain -- cmd internal pkg api go.mod go.sum 2>/dev/null)" ]; then \
		echo "image: the tree has uncommitted changes: the revision label $(IMAGE_REVISION) does not describe these binaries" >&2; fi
	$(call image_build,$(IMAGE_DIR),.)

image-verify: ## Build the OCI image twice from two copies of HEAD at different paths; fail unless the archives match
	rm -rf $(IMAGE_DIR)/verify && mkdir -p $(IMAGE_DIR)/verify/a/src $(IMAGE_DIR)/verify/b/copy/src
	git archive HEAD | tar -x -C $(IMAGE_DIR)/verify/a/src
	git archive HEAD | tar -x -C $(IMAGE_DIR)/verify/b/copy/src
	$(call image_build,$(IMAGE_DIR)/verify/a,$(IMAGE_DIR)/verify/a/src)
	$(call image_build,$(IMAGE_DIR)/verify/b,$(IMAGE_DIR)/verify/b/copy/src)
	@a=$$(sha256sum < $(IMAGE_DIR)/verify/a/tessera.oci.tar); b=$$(sha256sum < $(IMAGE_DIR)/verify/b/tessera.oci.tar); \
	if [ "$$a" != "$$b" ]; then echo "image-verify: two builds of one commit differ" >&2; exit 1; fi; \
	echo "image-verify: two builds, one archive: sha256 $${a%% *}"

image-lock: ## Record in hack/image/debian.lock the Debian packages (libc6) apt serves now, by version and SHA-256
	$(GO) run ./hack/image lock -archs $(IMAGE_ARCHS)
