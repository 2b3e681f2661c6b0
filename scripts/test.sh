#!/usr/bin/env bash
# The whole test suite, as CI runs it: dependencies installed and started
# where missing, formatting and vet checks, every test under the race
# detector, then a short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

DECRYPTD_TEST_PG_DSN=$(scripts/test-deps.sh | tail -n1)
export DECRYPTD_TEST_PG_DSN

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi

echo "== go vet"
go vet ./...

echo "== go mod tidy (no diff)"
go mod tidy -diff

echo "== fuzz (short run of every target, ${FUZZTIME:=10s} each)"
: "${FUZZRETRY:=5000x}" # inputs a retry runs (see below)
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "-- $pkg $target"
    out=$(mktemp)
    if ! go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" -fuzzminimizetime=5s "$pkg" >"$out" 2>&1; then
      cat "$out"
      # A failing input (new, written to testdata/fuzz/<target>/, or a
      # seed) fails the run at once. Without one the fuzzer itself broke
      # down (a worker hung or was killed on a loaded machine): try again.
      if grep -q -e 'Failing input written to' -e 'failure while testing seed corpus entry' "$out"; then
        echo "fuzz: $target found a failing input (kept in $dir/testdata/fuzz/$target)"; exit 1
      fi
      # Go 1.26's fuzz coordinator can end a clean run with "context
      # deadline exceeded" and no input: a race between the -fuzztime
      # deadline and its workers' context (golang/go#75804, fixed in Go
      # 1.27). The retries run for a count of inputs instead of a time
      # (FUZZRETRY, 5000x): no deadline, so no race, and a real failure
      # still fails.
      ok=""
      for try in 2 3; do
        echo "fuzz: $target stopped without a failing input; try $try ($FUZZRETRY)"
        if go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZRETRY" -fuzzminimizetime=5s "$pkg" >"$out" 2>&1; then ok=1; break; fi
        cat "$out"
      done
      [ -n "$ok" ] || exit 1
    fi
    tail -n 2 "$out"; rm -f "$out"
  done
done

# The rotation issue's fleet test at its full size (1,000 devices): the
# race detector's overhead makes that run several minutes, so under -race
# below it uses 200 devices, and the full fleet runs here without it.
echo "== fleet rotation, 1,000 devices"
DECRYPTD_ROTATION_FLEET=1000 go test -count=1 -run '^TestFleetRotation$' ./internal/rotation

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...
