#!/usr/bin/env bash
# Large, bounded load runs for a machine with many cores and a raisable
# open-file limit (the development box has 2 cores and 20,000 files per
# process, so these sizes do not fit there). The server and the flood client
# are pinned to separate cores, so that the client's own CPU does not come
# out of the server's. Every step stops by itself (flood's --duration and
# --deadline, and a timeout around each command).
#
#   scripts/bigrun.sh OUTDIR [STEP ...]     STEP: latency fullrate idle (default: all)
#
# Environment (defaults): BIN (built into a temporary folder when it lacks
# fanout and flood), SRV_CPUS (0-3), CLI_CPUS (4 to the last core), DUR (20s),
# SUBS_SMALL (10000), SUBS_LARGE (100000), IDLE_CONNS (500000),
# SOURCES (127.0.0.2-127.0.0.17).
#
# Per step, OUTDIR gets the flood's JSON, its HTML report and its table, and
# summary.txt one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
OUT=${1:?usage: scripts/bigrun.sh OUTDIR [latency] [fullrate] [idle]}
shift
STEPS=${*:-latency fullrate idle}
mkdir -p "$OUT"

NCPU=$(nproc)
SRV_CPUS=${SRV_CPUS:-0-3}
CLI_CPUS=${CLI_CPUS:-4-$((NCPU - 1))}
DUR=${DUR:-20s}
SUBS_SMALL=${SUBS_SMALL:-10000}
SUBS_LARGE=${SUBS_LARGE:-100000}
IDLE_CONNS=${IDLE_CONNS:-500000}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.17}

if [ -z "${BIN:-}" ] || [ ! -x "$BIN/fanout" ] || [ ! -x "$BIN/flood" ]; then
  BIN=$(mktemp -d)
  go build -o "$BIN/fanout" ./cmd/fanout
  go build -o "$BIN/flood" ./cmd/flood
fi

# Many sockets: raise what this user may (root on a lent machine).
sysctl -qw fs.nr_open=2097152 net.ipv4.ip_local_port_range="1024 65535" \
  net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 2>/dev/null || true
ulimit -n 2000000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIN_SRV=(taskset -c "$SRV_CPUS")
PIN_CLI=(taskset -c "$CLI_CPUS")
if ! command -v taskset >/dev/null 2>&1; then
  echo "no taskset here: server and flood share all cores"
  PIN_SRV=() PIN_CLI=()
fi

# Sandboxes may not route the rest of 127.0.0.0/8: then one source address,
# hence at most ~60,000 connections to one port.
if ! python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.2', 0))" 2>/dev/null; then
  SOURCES=127.0.0.1
  IDLE_CONNS=$((IDLE_CONNS > 60000 ? 60000 : IDLE_CONNS))
  SUBS_LARGE=$((SUBS_LARGE > 60000 ? 60000 : SUBS_LARGE))
  echo "only 127.0.0.1 can be bound here: at most 60,000 connections per run"
fi

{
  echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "open files: $(ulimit -n); server on cores $SRV_CPUS, flood on cores $CLI_CPUS"
} | tee "$OUT/summary.txt"

SRV_PID=""
port=9500
stop_server() {
  if [ -n "$SRV_PID" ]; then
    kill "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
trap stop_server EXIT

start_server() {
  port=$((port + 1))
  "${PIN_SRV[@]}" "$BIN/fanout" --addr "127.0.0.1:$port" --log-level warn \
    --handshake-timeout 30s --idle-timeout 10m >"$OUT/server-$port.log" 2>&1 &
  SRV_PID=$!
  wait_port "$port"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# flood_run NAME ARGS...: one bounded flood run against a fresh server.
flood_run() {
  local name=$1
  shift
  start_server
  timeout 300 "${PIN_CLI[@]}" "$BIN/flood" "$@" --url "ws://127.0.0.1:$port/ws" \
    --source-ips "$SOURCES" --progress off --json "$OUT/$name.json" --report "$OUT/$name.html" \
    >"$OUT/$name.txt" 2>&1 || echo "$name: flood exited $?" | tee -a "$OUT/summary.txt"
  echo "$name: server max RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$SRV_PID/status")" >>"$OUT/$name.txt"
  stop_server
  python3 - "$OUT/$name.json" "$name" <<'PY' | tee -a "$OUT/summary.txt" || true
import json, sys
d = json.load(open(sys.argv[1])); s = d["summary"]; lat = s.get("latency_ms", {})
print("%-10s %7s subs %12s deliveries/s  p50 %s  p99 %s  p99.9 %s  max %s ms  loss %.2f%%  client %.2f us/msg" % (
    sys.argv[2], format(s.get("ready", 0), ","), format(round(s.get("delivery_rate", 0)), ","),
    lat.get("p50"), lat.get("p99"), lat.get("p99_9"), lat.get("max"), s.get("loss_pct", 0),
    s.get("cpu_per_msg_us", 0)))
PY
}

for step in $STEPS; do
  case $step in
  latency)
    # p99 at a steady 10 publications/s (SUBS_SMALL) and 2/s (SUBS_LARGE):
    # the figure the 2-core box could not measure, its client starving.
    flood_run lat-small broadcast --conns "$SUBS_SMALL" --connect-rate 20000 --rate 10 --size 128 --duration "$DUR"
    flood_run lat-large broadcast --conns "$SUBS_LARGE" --connect-rate 50000 --rate 2 --size 128 --duration "$DUR"
    ;;
  fullrate)
    flood_run full-small broadcast --conns "$SUBS_SMALL" --connect-rate 20000 --rate 0 --size 128 --duration "$DUR"
    flood_run full-large broadcast --conns "$SUBS_LARGE" --connect-rate 50000 --rate 0 --size 128 --duration "$DUR"
    ;;
  idle)
    # Memory per idle upgraded connection in one server process, read while
    # the flood holds them.
    start_server
    base=$(rss_kib "$SRV_PID")
    timeout 400 "${PIN_CLI[@]}" "$BIN/flood" connect --url "ws://127.0.0.1:$port/ws" \
      --conns "$IDLE_CONNS" --connect-rate 50000 --duration 30s --source-ips "$SOURCES" \
      --progress off --json "$OUT/idle.json" >"$OUT/idle.txt" 2>&1 &
    fpid=$!
    peak=0 peak_conns=0
    while kill -0 "$fpid" 2>/dev/null; do
      sleep 1
      rss=$(rss_kib "$SRV_PID")
      conns=$(ls "/proc/$SRV_PID/fd" 2>/dev/null | wc -l)
      echo "$(date +%s) rss_kib=$rss fds=$conns" >>"$OUT/idle-rss.txt"
      if [ "$conns" -gt "$peak_conns" ]; then peak_conns=$conns peak=$rss; fi
    done
    wait "$fpid" || true
    stop_server
    echo "idle: $peak_conns server fds, RSS $((peak / 1024)) MiB (base $((base / 1024)) MiB): $(((peak - base) * 1024 / (peak_conns > 0 ? peak_conns : 1))) B per connection" |
      tee -a "$OUT/summary.txt"
    grep -E "^(connections|connect rate|handshake|failures|client cpu|peak rss)" "$OUT/idle.txt" | tee -a "$OUT/summary.txt" || true
    ;;
  *)
    echo "unknown step $step" >&2
    exit 2
    ;;
  esac
done
