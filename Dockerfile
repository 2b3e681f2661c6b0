# syntax=docker/dockerfile:1
# decryptd container: static binaries on a minimal base, running as a
# numeric non-root user.
# Build: docker build -t decryptd:0.1.0 .
#
# Base images are pinned by tag and digest, so a rebuild cannot silently
# pick up another image. The digests were taken from public pins of these
# tags (this repository's build machine reaches no container registry);
# check and refresh them with `crane digest golang:1.26.8-bookworm` and
# `crane digest gcr.io/distroless/static-debian12:nonroot`.
FROM golang:1.26.8-bookworm@sha256:a688600ca24f8a4d3ca77f95b0dd40704a9fc787c826660eb7ba0b641b8b175d AS build
WORKDIR /src
COPY . .
# No `go mod download`: go.mod also lists the test-only modules (the
# Prometheus server, kustomize, the Kubernetes API types), which the
# binaries do not import; go build fetches only the modules it compiles.
# The cache mounts keep modules and build cache between builds (BuildKit).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/decryptd ./cmd/decryptd \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/dekctl ./cmd/dekctl

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /out/decryptd /out/dekctl /usr/local/bin/
# Metrics, /healthz and /readyz.
EXPOSE 9464
# By number: Kubernetes' runAsNonRoot can only verify a numeric user
# (distroless' "nonroot" is 65532:65532; the manifests set the same ids).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/decryptd"]
CMD ["run", "--config", "/etc/decryptd/config.yaml"]
