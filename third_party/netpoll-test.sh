#!/usr/bin/env bash
# Runs upstream netpoll's own test suite against the patched copy in
# third_party/netpoll (its own module). ./scripts/test.sh calls it; see
# third_party/README.md for why the tests run one process each and which
# tests are skipped.
#
# The root package's tests each run in a fresh process. Upstream's tests
# leave connections, goroutines and descriptors behind for the tests that
# follow, and netpoll's listener.Close closes its descriptor twice, so a
# descriptor number that a later test reuses can be closed under it. Run
# as one process, the suite failed or hung in about 1 run in 4 on a
# busy 2-core machine, with the patch and without it. One process per test
# keeps every assertion and removes that interference.
set -euo pipefail
cd "$(dirname "$0")/netpoll"

budget=${NETPOLL_TEST_BUDGET:-600} # seconds for the whole suite
per_test=${NETPOLL_TEST_TIMEOUT:-2m}
start=$SECONDS

go test -race -count=1 -timeout "$per_test" ./internal/... ./mux/...

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go test -race -c -o "$dir/netpoll.test" .
# The race detector waits 1 s at exit by default; 80 processes would add
# well over a minute.
export GORACE="atexit_sleep_ms=50 ${GORACE:-}"

passed=0 failed=() skipped=()
for t in $("$dir/netpoll.test" -test.list '^Test'); do
  if (( SECONDS - start > budget )); then
    echo "netpoll tests: over the budget of ${budget}s before $t" >&2
    failed+=("$t(not run: budget)")
    break
  fi
  if "$dir/netpoll.test" -test.run "^$t\$" -test.count=1 -test.v \
    -test.timeout "$per_test" >"$dir/out" 2>&1; then
    if grep -q "^--- SKIP: $t " "$dir/out"; then
      why=$(grep -B1 "^--- SKIP: $t " "$dir/out" | head -1 | sed 's/^ *//; s/ *$//')
      if [[ $why == "=== RUN"* || $why == *: ]]; then why="$why (no reason given)"; fi
      skipped+=("$t: $why")
    else
      passed=$((passed + 1))
    fi
  else
    failed+=("$t")
    echo "--- netpoll $t FAILED; its output:" >&2
    tail -n 200 "$dir/out" >&2
  fi
done

echo "netpoll github.com/cloudwego/netpoll: $passed passed, ${#skipped[@]} skipped, ${#failed[@]} failed, $((SECONDS - start))s"
for s in "${skipped[@]}"; do echo "  SKIPPED netpoll $s"; done
if ((${#failed[@]})); then
  echo "  FAILED: ${failed[*]}" >&2
  exit 1
fi
