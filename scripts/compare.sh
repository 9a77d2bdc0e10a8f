#!/usr/bin/env bash
# Side-by-side run of fanout and the peer servers of bench/peers (gorilla
# chat hub, gws broadcaster, nbio), all driven by the same flood settings on
# this machine, in one run. Prints one table and fanout's ratio to the best
# peer on each column, and leaves the raw JSON under $OUT (default
# bench/results/compare-<date>).
#
#   scripts/compare.sh                 # full run (~10 minutes)
#   QUICK=1 scripts/compare.sh         # smaller counts, for a smoke test
#
# Columns:
#   idle_B/conn   server RSS growth per idle upgraded connection at $IDLE conns
#   bcast/s       broadcast deliveries per second, $SUBS subscribers, 128 B, full rate
#   p99_ms@10/s   broadcast p99 latency, $SUBS subscribers, 10 publications/s
#   echo/s        echoes per second, $ECHO_CONNS connections, 1 KiB, one in flight each
#                 (median of $ECHO_ROUNDS interleaved rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

IDLE=${IDLE:-15000}
SUBS=${SUBS:-10000}
ECHO_CONNS=${ECHO_CONNS:-1000}
DUR=${DUR:-10s}
ECHO_ROUNDS=${ECHO_ROUNDS:-3}
# Client source addresses: one address runs out of ephemeral ports after a
# few runs of 10,000+ connections (TIME_WAIT), and a run that could not
# connect everyone is not comparable.
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9}
if [ -n "${QUICK:-}" ]; then IDLE=2000; SUBS=1000; ECHO_CONNS=200; DUR=3s; ECHO_ROUNDS=1; fi
OUT=${OUT:-bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

# PREBUILT=dir uses binaries built elsewhere (fanout, flood, idlerss, gorilla,
# gws, nbio), for a machine without Go.
build_bins
if [ -z "${PREBUILT:-}" ]; then (cd bench/peers && go build -o "$BIN/" ./...); fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  if [ -z "${PREBUILT:-}" ]; then rm -rf "$BIN"; fi
}
trap cleanup EXIT

# server_cmd NAME MODE PORT -> the command line of that server
server_cmd() {
  local name=$1 mode=$2 port=$3
  case $name in
    fanout)
      if [ "$mode" = echo ]; then echo "$BIN/fanout --addr 127.0.0.1:$port --log-level warn --echo"
      else echo "$BIN/fanout --addr 127.0.0.1:$port --log-level warn"; fi ;;
    *) echo "$BIN/$name --addr 127.0.0.1:$port --mode $mode" ;;
  esac
}

protocol_of() { [ "$1" = fanout ] && [ "$2" != echo ] && echo fanout-json || echo raw; }


# run_flood NAME MODE PORT JSON ARGS... : start the server, run flood, stop it.
run_flood() {
  local name=$1 mode=$2 port=$3 json=$4; shift 4
  # shellcheck disable=SC2046
  $(server_cmd "$name" "$mode" "$port") >/dev/null 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  "$BIN/flood" "$@" --url "ws://127.0.0.1:$port/ws" --protocol "$(protocol_of "$name" "$mode")" \
    --source-ips "$SOURCES" --progress off --json "$json" >"${json%.json}.txt" 2>&1 || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@" 2>/dev/null || echo nan; }

port=9301
SERVERS=${SERVERS:-"fanout gorilla gws nbio"}
for name in $SERVERS; do
  port=$((port + 10))
  read_first=""; [ "$name" = fanout ] && read_first="--read-first"
  echo "$name: idle, broadcast, latency" >&2
  # shellcheck disable=SC2046
  "$BIN/idlerss" --addr "127.0.0.1:$port" --conns "$IDLE" --source-ips "$SOURCES" --json --name "$name" $read_first -- \
    $(server_cmd "$name" broadcast "$port") >"$OUT/$name-idle.json" 2>/dev/null || echo '{}' >"$OUT/$name-idle.json"
  run_flood "$name" broadcast $((port + 1)) "$OUT/$name-bcast.json" broadcast --conns "$SUBS" --connect-rate 5000 --rate 0 --size 128 --duration "$DUR"
  run_flood "$name" broadcast $((port + 2)) "$OUT/$name-lat.json" broadcast --conns "$SUBS" --connect-rate 5000 --rate 10 --size 128 --duration "$DUR"
done
# Echo is syscall-bound and the servers are close, so a single run is at the
# mercy of the machine's noise: $ECHO_ROUNDS rounds, interleaved (every
# server once per round), and the table takes each server's median.
for round in $(seq "$ECHO_ROUNDS"); do
  for name in $SERVERS; do
    port=$((port + 1))
    echo "$name: echo round $round" >&2
    run_flood "$name" echo "$port" "$OUT/$name-echo-$round.json" echo --conns "$ECHO_CONNS" --size 1024 --duration "$DUR"
  done
done

printf '%-8s %14s %12s %14s %10s\n' server idle_B/conn bcast/s p99_ms@10/s echo/s | tee "$OUT/table.txt"
for name in $SERVERS; do
  # A figure from a run that did not connect every client gets a '*' and
  # no ratio is taken from it.
  idle=$(jget "$OUT/$name-idle.json" "str(round(d['bytes_per_conn'])) + ('' if d['conns'] == $IDLE and d['failed_upgrades'] == 0 else '*')")
  bcast=$(jget "$OUT/$name-bcast.json" "str(round(d['summary']['delivery_rate'])) + ('' if d['summary']['ready'] >= $SUBS else '*')")
  p99=$(jget "$OUT/$name-lat.json" "str(round(d['summary']['latency_ms']['p99'],1)) + ('' if d['summary']['ready'] >= $SUBS else '*')")
  echo_rate=$(python3 -c "
import json, statistics, sys
rates, partial = [], False
for f in sys.argv[2:]:
    try:
        s = json.load(open(f))['summary']
        rates.append(s['delivery_rate'])
        partial = partial or s['ready'] < int(sys.argv[1])
    except Exception: pass
print(str(round(statistics.median(rates))) + ('*' if partial else '') if rates else 'nan')" "$ECHO_CONNS" "$OUT/$name"-echo-*.json)
  printf '%-8s %14s %12s %14s %10s\n' "$name" "$idle" "$bcast" "$p99" "$echo_rate" | tee -a "$OUT/table.txt"
done

python3 - "$OUT" <<'PY' | tee -a "$OUT/table.txt"
import sys
rows = {}
for line in open(sys.argv[1] + "/table.txt").read().splitlines()[1:]:
    f = line.split()
    if len(f) == 5:
        # '*': that run did not connect every client; not comparable.
        rows[f[0]] = [float(x) if x != "nan" and not x.endswith("*") else float("nan") for x in f[1:]]
if "fanout" not in rows:
    sys.exit()
fan = rows.pop("fanout")
lower_is_better = [True, False, True, False]
out = []
for i, low in enumerate(lower_is_better):
    peers = [r[i] for r in rows.values() if r[i] == r[i]]
    if not peers or fan[i] != fan[i]:
        out.append("nan"); continue
    best = min(peers) if low else max(peers)
    ratio = (best / fan[i]) if low else (fan[i] / best)
    out.append(f"{ratio:.2f}")
print("%-8s %14s %12s %14s %10s" % ("ratio", *out))
print("ratio = fanout vs the best peer on that column; >= 1.0 means fanout is ahead")
print("*: that run did not connect every client (left out of the ratio)")
PY
echo "raw results in $OUT" >&2
