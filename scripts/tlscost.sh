#!/usr/bin/env bash
# What TLS costs fanout (engine/tls.go), plain and TLS side by side on this
# machine, in one run:
#
#   idle    server RSS growth per idle upgraded connection (bench/idlerss,
#           with --tls for TLS), $IDLE connections
#   bcast   server CPU per delivered message: $SUBS subscribers, one
#           publisher, $RATE publications/s of 128 bytes for $DUR (below
#           saturation, so all deliver the same), the server's utime+stime
#           over the flood's load phase divided by the deliveries
#   full    the same at full rate (--rate 0): messages are coalesced, many
#           per write. With TLS the flood client (a goroutine per wss
#           connection) is what saturates on a small machine, so compare the
#           server's CPU per message, not the rates.
#
# Three servers: plain (ws://), tls (fanout --tls-cert/--tls-key, TLS
# terminated in the process) and, when haproxy is installed, haproxy (TLS
# terminated by HAProxy in front of a plain fanout; idle: HAProxy's RSS per
# connection, fanout's own is the plain figure; CPU: both processes
# together).
#
#   scripts/tlscost.sh                # ~3 minutes
#   IDLE=2000 SUBS=500 DUR=4s scripts/tlscost.sh
#
# Raw JSON under $OUT (default bench/results/tls-<date>).
set -euo pipefail
export FANOUT_COMMAND_RATE=-1 FANOUT_PUBLISH_BYTES_PER_SECOND=-1
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

IDLE=${IDLE:-5000}
SUBS=${SUBS:-1000}
RATE=${RATE:-50}
DUR=${DUR:-10s}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9}
OUT=${OUT:-bench/results/tls-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"

build_bins
CERTS=$(mktemp -d)
# A self-signed ECDSA P-256 certificate (Go's own generator), or
# PREBUILT's cert.pem and key.pem.
if [ -n "${PREBUILT:-}" ] && [ -f "$PREBUILT/cert.pem" ]; then
  cp "$PREBUILT/cert.pem" "$PREBUILT/key.pem" "$CERTS/"
else
  (cd "$CERTS" && go run "$(go env GOROOT)/src/crypto/tls/generate_cert.go" --host 127.0.0.1 --ecdsa-curve P256 2>/dev/null)
fi
TLSFLAGS="--tls-cert $CERTS/cert.pem --tls-key $CERTS/key.pem"

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$CERTS"
  if [ -z "${PREBUILT:-}" ]; then rm -rf "$BIN"; fi
}
trap cleanup EXIT

# cpu_ticks PID...: utime+stime of the processes together.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done
  echo "$t"
}

jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@" 2>/dev/null || echo nan; }

MODES="plain tls"
if command -v haproxy >/dev/null; then
  MODES="plain tls haproxy"
  cat "$CERTS/cert.pem" "$CERTS/key.pem" >"$CERTS/both.pem"
fi

# haproxy_cfg PORT BACKEND_PORT: HAProxy terminating TLS on PORT for a
# plain fanout on BACKEND_PORT; its connections to fanout come from the
# $SOURCES addresses in turn (fanout limits connections per address).
haproxy_cfg() {
  local cfg=$CERTS/haproxy-$1.cfg i=0 src
  {
    printf 'global\n  maxconn 9000\n'
    printf 'defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n  timeout tunnel 1h\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s ssl crt %s alpn http/1.1\n  default_backend be\n' "$1" "$CERTS/both.pem"
    printf 'backend be\n  balance roundrobin\n'
    for src in ${SOURCES//,/ }; do
      i=$((i + 1))
      printf '  server s%d 127.0.0.1:%s source %s\n' "$i" "$2" "$src"
    done
  } >"$cfg"
  echo "$cfg"
}

# bcast MODE(plain|tls|haproxy) PORT RATE NAME
bcast() {
  local mode=$1 port=$2 rate=$3 name=$4 flags="" scheme=ws fport=$2 pid pids sampler
  if [ "$mode" != plain ]; then scheme=wss; fi
  if [ "$mode" = tls ]; then flags=$TLSFLAGS; fi
  if [ "$mode" = haproxy ]; then fport=$((port + 1)); fi
  # shellcheck disable=SC2086
  "$BIN/fanout" --addr "127.0.0.1:$fport" --log-level warn $flags >/dev/null 2>&1 &
  pid=$!
  PIDS+=("$pid")
  pids=$pid
  wait_port "$fport"
  if [ "$mode" = haproxy ]; then
    haproxy -db -f "$(haproxy_cfg "$port" "$fport")" >/dev/null 2>&1 &
    PIDS+=("$!")
    pids="$pid $!"
    wait_port "$port"
  fi
  # The servers' CPU, sampled every 100 ms, to take the load phase alone.
  # shellcheck disable=SC2086
  (while kill -0 $pids 2>/dev/null; do echo "$(date +%s.%N) $(cpu_ticks $pids)"; sleep 0.1; done) >"$OUT/$name.cpu" 2>/dev/null &
  sampler=$!
  "$BIN/flood" broadcast --url "$scheme://127.0.0.1:$port/ws" --insecure --protocol fanout-json \
    --conns "$SUBS" --connect-rate 2000 --rate "$rate" --size 128 --duration "$DUR" \
    --source-ips "$SOURCES" --progress off --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 || true
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  # shellcheck disable=SC2086
  wait $pids 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  python3 - "$OUT/$name.json" "$OUT/$name.cpu" "$(getconf CLK_TCK)" <<'PY'
import json, sys, datetime
d = json.load(open(sys.argv[1])); hz = float(sys.argv[3])
def ts(s):
    s = s.rstrip('Z'); base, _, frac = s.partition('.')
    return datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc).timestamp() + float('0.' + (frac or '0'))
t0, t1 = ts(d['load_start']), ts(d['load_stop'])
samples = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 2]
def at(t):  # CPU ticks at time t, linear between samples
    prev = samples[0]
    for s in samples:
        if s[0] >= t:
            if s[0] == prev[0]: return s[1]
            return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
        prev = s
    return samples[-1][1]
cpu = (at(t1) - at(t0)) / hz
sm = d['summary']
deliv = sm['delivered']
print(f"deliveries={deliv} delivery_rate={sm['delivery_rate']:.0f}/s server_cpu_s={cpu:.2f} "
      f"server_us_per_msg={cpu / max(deliv, 1) * 1e6:.3f} client_us_per_msg={sm['cpu_per_msg_us']:.3f} "
      f"p99_ms={sm['latency_ms']['p99']:.1f} loss_pct={sm['loss_pct']:.2f}")
PY
}

echo "== idle memory per connection, $IDLE connections" | tee "$OUT/summary.txt"
for mode in $MODES; do
  port=$((9400 + RANDOM % 500)); flags=""; tlsopt=""
  if [ "$mode" = tls ]; then flags=$TLSFLAGS; tlsopt=--tls; fi
  if [ "$mode" = haproxy ]; then
    # HAProxy's own RSS (idlerss measures its child), fanout behind it.
    "$BIN/fanout" --addr "127.0.0.1:$((port + 1))" --log-level warn >/dev/null 2>&1 &
    fpid=$!
    PIDS+=("$fpid")
    wait_port $((port + 1))
    "$BIN/idlerss" --tls --source-ips "$SOURCES" --addr "127.0.0.1:$port" --conns "$IDLE" --read-first --json \
      -- haproxy -db -f "$(haproxy_cfg "$port" $((port + 1)))" >"$OUT/idle-$mode.json" || echo '{}' >"$OUT/idle-$mode.json"
    kill "$fpid" 2>/dev/null || true
    wait "$fpid" 2>/dev/null || true
  else
    # shellcheck disable=SC2086
    "$BIN/idlerss" $tlsopt --source-ips "$SOURCES" --addr "127.0.0.1:$port" --conns "$IDLE" --read-first --json \
      -- "$BIN/fanout" --addr "127.0.0.1:$port" --log-level warn $flags >"$OUT/idle-$mode.json" 2>/dev/null
  fi
  echo "$mode: $(jget "$OUT/idle-$mode.json" "'%d conns, %.0f B/conn, %.0f connects/s' % (d['conns'], d['bytes_per_conn'], d['connects_per_second'])")" | tee -a "$OUT/summary.txt"
done

echo "== broadcast, $SUBS subscribers, $RATE publications/s, 128 B, $DUR" | tee -a "$OUT/summary.txt"
for mode in $MODES; do
  echo "$mode: $(bcast "$mode" $((9400 + RANDOM % 500)) "$RATE" "bcast-$mode")" | tee -a "$OUT/summary.txt"
done
echo "== broadcast at full rate, $SUBS subscribers, $DUR" | tee -a "$OUT/summary.txt"
for mode in $MODES; do
  echo "$mode: $(bcast "$mode" $((9400 + RANDOM % 500)) 0 "full-$mode")" | tee -a "$OUT/summary.txt"
done
echo "results in $OUT" >&2
