#!/usr/bin/env bash
# Installs and starts what the test suite talks to, when it is missing:
# Mosquitto (the tests start their own brokers from the binary),
# PostgreSQL (the registry's tests create a database each), and the C
# toolchain and libraries that internal/e2e/cdevice builds the C reference
# device (device/c) with. Meant for a fresh
# Debian machine where it runs as root; on a machine that already has both
# (CI, a developer's box) it changes nothing and only prints what it found.
#
# It prints the DSN the tests should use as its last line of stdout.
set -euo pipefail

log() { printf 'test-deps: %s\n' "$*" >&2; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# mosquitto_sub: decryptd-bench's C-client baseline (internal/bench's drain test).
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
# kcat (librdkafka's CLI): the Kafka sink's test reads its topic back with it.
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
# The C reference device: gcc, make, pkg-config, OpenSSL's libcrypto and
# libmosquitto headers.
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
pkg-config --exists libcrypto 2>/dev/null || need_apt+=(libssl-dev)
pkg-config --exists libmosquitto 2>/dev/null || need_apt+=(libmosquitto-dev)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing ${need_apt[*]} and not root: install them (apt-get install ${need_apt[*]}) or rerun as root"
    exit 1
  fi
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

# PostgreSQL: start the cluster if it is not accepting connections.
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
if ! pg_up; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$ver" ]; then
    log "PostgreSQL is installed but has no cluster; creating one"
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    pg_createcluster "$ver" main >&2
  fi
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 || pg_ctlcluster "$ver" main start >&2
  for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
  pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
fi

# Which DSN works: the CI machine trusts postgres@127.0.0.1; a stock Debian
# install does not, so there we make a test-only role with a password. It is
# a superuser because the shred tests read raw table pages (pageinspect).
dsn="${DECRYPTD_TEST_PG_DSN:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}"
if ! psql "$dsn" -qAtc 'select 1' >/dev/null 2>&1; then
  log "creating the local test role decryptd_test (SUPERUSER for pageinspect, password auth on 127.0.0.1)"
  su postgres -c "psql -qAt -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='decryptd_test') THEN CREATE ROLE decryptd_test LOGIN SUPERUSER PASSWORD 'decryptd_test'; ELSE ALTER ROLE decryptd_test SUPERUSER; END IF; END \\\$\\\$;\"" >&2
  dsn="postgres://decryptd_test:decryptd_test@127.0.0.1:5432/postgres?sslmode=disable"
  psql "$dsn" -qAtc 'select 1' >/dev/null || { log "cannot connect with $dsn"; exit 1; }
fi
log "mosquitto: $(command -v mosquitto || echo /usr/sbin/mosquitto); mosquitto_sub: $(command -v mosquitto_sub); kcat: $(command -v kcat); postgres: ok"
echo "$dsn"
