#!/usr/bin/env bash
# Runs every fuzz target of the repository for a set time each (default 30s;
# FUZZTIME=5m scripts/fuzz.sh for a longer session). New crashers are written
# by go test under the package's testdata/fuzz/<Target>/ and become seeds:
# commit them with the fix. `go test ./...` (CI) runs every seed and kept
# crasher without fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-30s}
fail=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "=== $pkg $target ($FUZZTIME)"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" "$pkg"; then
      echo "!!! $pkg $target found a failure (see testdata/fuzz/$target/)"
      fail=1
    fi
  done
done
exit $fail
