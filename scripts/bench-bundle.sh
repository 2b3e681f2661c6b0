#!/usr/bin/env bash
# Packs what decryptd-bench needs on a machine without Go or the Debian
# packages (a many-core box lent for one run) into one directory: a static
# decryptd-bench, mosquitto and mosquitto_sub with every shared library
# ldd names for them, glibc and its loader included, so that they run
# whatever the target's libc is (they are started through the bundled
# loader, never the system's), taskset, a go test binary of the decrypt
# package's benchmarks, and two scripts:
#
#   scripts/bench-bundle.sh DIR
#   DIR/run.sh -cold=false -sinks=false -connections 8 ...   (decryptd-bench flags)
#   DIR/many-core.sh OUTDIR                                   (the prepared many-core run)
#
# many-core.sh is the one command to give a lent machine: the MQTT drain
# with the C client at 2 CPUs (taskset) and at every CPU, the Kafka drain,
# and BenchmarkDecrypt, each into OUTDIR, then OUTDIR packed into one
# tar.gz beside it (the device tool brings back few files).
set -euo pipefail
dir=${1:?usage: scripts/bench-bundle.sh DIR}
mkdir -p "$dir/lib" "$dir/bin"
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$dir/decryptd-bench" ./cmd/decryptd-bench
CGO_ENABLED=0 go test -c -trimpath -o "$dir/decrypt.test" ./internal/decrypt
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
sub=$(command -v mosquitto_sub || echo /usr/bin/mosquitto_sub)
cp "$mosq" "$dir/bin/mosquitto.real"
cp "$sub" "$dir/bin/mosquitto_sub.real"
# taskset (util-linux, libc only): -broker-cpus runs the broker under it.
cp "$(command -v taskset)" "$dir/bin/taskset.real"
loader=""
for bin in "$mosq" "$sub" "$(command -v taskset)"; do
  while read -r lib; do
    cp -L "$lib" "$dir/lib/"
  done < <(ldd "$bin" | awk '$3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}')
  l=$(ldd "$bin" | awk '$1 ~ /ld-linux/ {print $1}')
  loader=${l:-$loader}
done
[ -n "$loader" ] || { echo "bench-bundle: no dynamic loader found for $mosq" >&2; exit 1; }
loader=$(basename "$loader")
# Each binary is started by the bundled loader with the bundled libraries:
# a wrapper that execs, so the broker's pid is the wrapper's (the bench
# signals it).
for b in mosquitto mosquitto_sub taskset; do
  cat > "$dir/bin/$b" <<WRAP
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "\$here/lib/$loader" --library-path "\$here/lib" "\$here/bin/$b.real" "\$@"
WRAP
  chmod +x "$dir/bin/$b"
done
cat > "$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled decryptd-bench with the bundled Mosquitto binaries.
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$here/bin:$PATH" # taskset, when the machine has none
exec "$here/decryptd-bench" -mosquitto "$here/bin/mosquitto" -mosquitto-sub "$here/bin/mosquitto_sub" "$@"
RUN
cat > "$dir/many-core.sh" <<'MANY'
#!/usr/bin/env bash
# The prepared many-core run (issues 15 and 17; not timed end to end:
# several minutes on 16 CPUs). OUTDIR gets each part's JSON and log, then
# OUTDIR.tar.gz.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: many-core.sh OUTDIR}
mkdir -p "$out"
n=$(nproc)
{ date -u; nproc; lscpu | grep -E 'Model name|^CPU\(s\)'; } > "$out/machine.txt"
export PATH="$here/bin:$PATH"
# CPU per message at 2 CPUs and at every CPU (issue 17: within 1.5x),
# and against the C client, plain TCP and mutual TLS.
taskset -c 0,1 "$here/run.sh" -plain -cold=false -sinks=false -rounds 3 -input mqtt -connections 1 \
  -out "$out/mqtt-2cpu-plain.json" > "$out/mqtt-2cpu-plain.txt" 2>&1
"$here/run.sh" -plain -cold=false -sinks=false -rounds 3 -input mqtt \
  -profile-dir "$out/prof-mqtt-$n" -out "$out/mqtt-${n}cpu-plain.json" > "$out/mqtt-${n}cpu-plain.txt" 2>&1
taskset -c 0,1 "$here/run.sh" -cold=false -sinks=false -rounds 3 -input mqtt -connections 1 \
  -out "$out/mqtt-2cpu-tls.json" > "$out/mqtt-2cpu-tls.txt" 2>&1
"$here/run.sh" -cold=false -sinks=false -rounds 3 -input mqtt \
  -out "$out/mqtt-${n}cpu-tls.json" > "$out/mqtt-${n}cpu-tls.txt" 2>&1
# The Kafka drain against the bare franz-go consumer (issue 15: >= 0.9x).
"$here/run.sh" -cold=false -sinks=false -rounds 3 -input kafka -messages 500000 \
  -profile-dir "$out/prof-kafka-$n" -out "$out/kafka-${n}cpu.json" > "$out/kafka-${n}cpu.txt" 2>&1
# The same with kfake in a process of its own on the last CPU and the
# drainers on the others, as a cluster would be: the broker's fetch work is
# then neither in the drainers' CPU per record nor slowed by their garbage
# collection, and its CPU per record is reported apart.
"$here/decryptd-bench" -serve-kfake 127.0.0.1:19092 > "$out/kfake.txt" 2>&1 &
kpid=$!
taskset -pc "$((n - 1))" "$kpid" > "$out/kfake-cpus.txt" 2>&1
for _ in $(seq 50); do grep -q 'kfake serving' "$out/kfake.txt" && break; sleep 0.2; done
taskset -c "0-$((n - 2))" "$here/run.sh" -cold=false -sinks=false -rounds 3 -input kafka -messages 500000 \
  -kafka-brokers 127.0.0.1:19092 -kafka-broker-pid "$kpid" \
  -out "$out/kafka-${n}cpu-own-broker.json" > "$out/kafka-${n}cpu-own-broker.txt" 2>&1
kill "$kpid"
# The decrypt core against AES-GCM alone (issue 17: toward 6x).
"$here/decrypt.test" -test.run XXX -test.bench 'BenchmarkDecrypt$' -test.benchtime 200000x -test.count 3 \
  > "$out/micro-decrypt.txt" 2>&1
tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
ls -l "$out.tar.gz"
MANY
chmod +x "$dir/run.sh" "$dir/many-core.sh"
du -sh "$dir" >&2
