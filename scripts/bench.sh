#!/usr/bin/env bash
# Runs decryptd's benchmarks in one go (make bench):
#   1. the Go micro-benchmarks of the decryption core and the key cache;
#   2. the end-to-end drain: a backlog queued at QoS 1 on a local Mosquitto,
#      drained by a bare paho subscriber and by decryptd, alternately;
#      The same for a Kafka backlog (an in-process kfake broker, 12
#      partitions): a bare franz-go group consumer against decryptd with
#      input.type kafka (-input mqtt|kafka|both; both by default);
#   3. the cold start: first messages of many devices against the Key
#      Protect emulator answering after 20 ms.
# It installs Mosquitto when missing (scripts/test-deps.sh, as root), writes
# docs/bench/results.json, docs/bench/micro.txt and the chart
# docs/bench/drain.svg (the files BENCHMARKS.md shows; commit them with the
# figures), and prints a summary. Extra arguments go to decryptd-bench, e.g.
#   ./scripts/bench.sh -messages 50000 -rounds 1
#   ./scripts/bench.sh -drain=false -cold-devices 100000   # the full cold start
# BENCH_OUT overrides the output directory; BENCH_MICRO=0 skips step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${BENCH_OUT:-docs/bench}"
mkdir -p "$out"
log() { printf 'bench: %s\n' "$*" >&2; }

# Mosquitto (and PostgreSQL, which the benchmarks do not need) when missing.
./scripts/test-deps.sh >/dev/null

if [ "${BENCH_MICRO:-1}" != 0 ]; then
  log "micro-benchmarks (decrypt, key cache)"
  go test -run '^$' -bench 'BenchmarkDecrypt|BenchmarkResolveHit|BenchmarkCacheMemory' -benchmem \
    ./internal/decrypt ./internal/keycache | tee "$out/micro.txt" >&2
else
  : > "$out/micro.txt"
fi

log "building decryptd-bench"
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/decryptd-bench" ./cmd/decryptd-bench

log "drain and cold start (progress below)"
DECRYPTD_TEST_PG_DSN="${DECRYPTD_TEST_PG_DSN:-$(./scripts/test-deps.sh | tail -n1)}" "$bin/decryptd-bench" -micro "$out/micro.txt" -out "$out/results.json" -svg "$out/drain.svg" "$@"
log "results: $out/results.json, chart: $out/drain.svg"
