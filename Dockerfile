# Tessera's image: the two driver binaries in one image, so the controller
# Deployment and the kubelet plugin DaemonSet of the Helm chart run the same
# build. Nothing else ships: not the capacity simulator (research/cmd/tessera-sim, which
# reaches test code), not tessera-scheduler (a module of its own); make
# verify-imports checks that the two import no test, e2e or research code.
#
#   make images IMAGE=ghcr.io/tessera-gpu/tessera TAG=0.1.0   (docker or podman)
#   make image  IMAGE=ghcr.io/tessera-gpu/tessera TAG=0.1.0   (no engine: an OCI archive)
#
# dra-controller is fully static (CGO_ENABLED=0). dra-kubelet-plugin needs cgo:
# go-nvml dlopens the host driver's libnvidia-ml.so at start, which a static glibc
# binary cannot do reliably, so it links glibc dynamically and nothing else.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
COPY pkg/ pkg/
ARG VERSION=dev
ENV CGO_CFLAGS=-Wno-deprecated-declarations
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o /out/dra-kubelet-plugin ./cmd/dra-kubelet-plugin && \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w -buildid=" -o /out/dra-controller ./cmd/dra-controller

# distroless/base carries glibc for the plugin and nothing else: no shell, no
# package manager. The default user is nonroot (65532); the chart runs the
# controller as that user and the privileged plugin as root. No entrypoint:
# the image holds two binaries and the chart names each container's command.
# `make image` builds the same contents without an engine (hack/image: only
# the part of Debian 12's libc6 the binaries need, locked by checksum).
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/ /
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source=https://github.com/tessera-gpu/tessera \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION}
USER 65532:65532
