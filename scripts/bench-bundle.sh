#!/usr/bin/env bash
# Packs what decryptd-bench's drain needs on a machine without Go or the
# Debian packages (a many-core box lent for one run) into one directory:
# a static decryptd-bench, mosquitto and mosquitto_sub with the shared
# libraries ldd names for them (glibc's own excepted: the target needs a
# glibc at least as new, Debian 12's 2.36 here), taskset, and run.sh,
# which runs the bench with those binaries and libraries. Usage:
#
#   scripts/bench-bundle.sh DIR
#   DIR/run.sh -cold=false -sinks=false -connections 8 ...   (decryptd-bench flags)
set -euo pipefail
dir=${1:?usage: scripts/bench-bundle.sh DIR}
mkdir -p "$dir/lib"
CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$dir/decryptd-bench" ./cmd/decryptd-bench
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
sub=$(command -v mosquitto_sub || echo /usr/bin/mosquitto_sub)
cp "$mosq" "$dir/mosquitto"
cp "$sub" "$dir/mosquitto_sub"
# taskset (util-linux, libc only): -broker-cpus runs the broker under it.
cp "$(command -v taskset)" "$dir/taskset"
for bin in "$mosq" "$sub"; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}' | while read -r lib; do
    # glibc's own libraries must match the target's libc: left to it.
    case "$(basename "$lib")" in libc.so.*|ld-linux*|libm.so.*|libresolv.so.*|libpthread.so.*|libdl.so.*|librt.so.*) continue ;; esac
    cp -L "$lib" "$dir/lib/"
  done
done
cat > "$dir/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled decryptd-bench with the bundled Mosquitto binaries.
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$here:$PATH" # taskset, when the machine has none
exec "$here/decryptd-bench" -mosquitto "$here/mosquitto" -mosquitto-sub "$here/mosquitto_sub" "$@"
RUN
chmod +x "$dir/run.sh"
du -sh "$dir" >&2
