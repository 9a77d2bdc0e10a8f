#!/usr/bin/env bash
# Runs every test of the repository: the main module with the race detector,
# then the peer servers' own module (bench/peers), then upstream netpoll's own
# test suite against the patched copy in third_party/netpoll (its own module;
# third_party/README.md says how it runs and which tests it skips, and why).
set -euo pipefail
cd "$(dirname "$0")/.."

# A test skipped for a missing external program (Chromium) or a known
# upstream flake writes one line to $FANOUT_SKIP_LOG. go test prints nothing
# of a passing package without -v, so the lines are repeated here at the
# end, whether the run passes or fails.
FANOUT_SKIP_LOG=$(mktemp)
export FANOUT_SKIP_LOG
trap 'if [ -s "$FANOUT_SKIP_LOG" ]; then
  echo "=== $(wc -l <"$FANOUT_SKIP_LOG") test(s) SKIPPED:" >&2
  cat "$FANOUT_SKIP_LOG" >&2
fi
rm -f "$FANOUT_SKIP_LOG"' EXIT

go test -race -count=1 -timeout 15m ./...
(cd bench/peers && go test -count=1 -timeout 5m ./...)
./third_party/netpoll-test.sh # bounded: 2 min a test, no new test after 10 min
