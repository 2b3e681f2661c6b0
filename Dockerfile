# decryptd container: static binaries on a minimal base, running as non-root.
# Build: docker build -t decryptd .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/decryptd ./cmd/decryptd \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/dekctl ./cmd/dekctl

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/decryptd /out/dekctl /usr/local/bin/
# Metrics, /healthz and /readyz.
EXPOSE 9464
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/decryptd"]
CMD ["run", "--config", "/etc/decryptd/config.yaml"]
