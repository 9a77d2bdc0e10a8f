#!/usr/bin/env bash
# 100,000+ concurrent WebSocket connections on one host whose open-file limit
# is 20,000 per process (issue 11, item 3): a Redis engine, NODES fanout nodes
# sharing one port with --reuse-port (one --broker, so a publication entering
# any node reaches the subscribers of all), and the flood tool in broadcast
# mode with as many worker processes as its open-file limit needs, spread
# over several loopback source addresses. Every connection subscribes to one
# channel; one publisher publishes RATE messages/s for DURATION, each
# delivered to every connection.
#
#   scripts/run-100k.sh [OUTDIR]        (default: a new /tmp/run-100k.XXXXXX)
#
# Environment (defaults):
#   CONNS (105000)          subscribers (the flood adds one publisher)
#   NODES (6)               fanout processes on one port (--reuse-port)
#   NODE_MAX_CONNS (19000)  --max-conns per node: a node answers 503 before it
#                           runs out of descriptors (kernel balancing across
#                           reuse-port listeners is by 4-tuple hash: +-1%)
#   SOURCES (127.0.0.2-127.0.0.9)  flood source addresses: each reaches one
#                           destination from ~28k ephemeral ports
#   PROCS (0)               flood worker processes (0: as the fd limit needs)
#   CONNECT_RATE (5000)     new connections/s, all workers together
#   RATE (1)                publications/s (each one delivery per connection)
#   SIZE (128)              publication data bytes
#   DURATION (30s)          load phase, after every subscriber is subscribed
#   DRAIN (20s)             after it, how long the flood waits for messages
#                           still in flight (it stops early when all came);
#                           what has not arrived by then counts as lost
#   CONNECT_TIMEOUT (30s)   per connection: handshake and subscribe reply
#                           (a subscribe answered "unavailable" is retried)
#   DEADLINE (290)          hard limit in seconds on the whole script
#   PREBUILT                directory with fanout and flood already built
#
# Output: a summary table on stdout and in OUTDIR/summary.txt (also
# summary.json); OUTDIR also gets the flood's table, JSON and HTML report,
# every node's and Redis's log, samples.jsonl (one line per second: server
# connections, RSS and CPU per process, /proc/net/sockstat, socket slab
# caches) and settings.txt.
#
# Bounds: the script re-executes itself under `timeout DEADLINE` (its own
# process group: on expiry everything it started gets SIGTERM, SIGKILL 10 s
# later); the flood has its own --deadline inside that; on any exit the EXIT
# trap stops every process it started, by PID (TERM, then KILL).
set -euo pipefail
cd "$(dirname "$0")/.."

DEADLINE=${DEADLINE:-290}
if [ -z "${RUN100K_UNDER_TIMEOUT:-}" ]; then
  export RUN100K_UNDER_TIMEOUT=$(($(date +%s) + DEADLINE))
  exec timeout -k 10 "$DEADLINE" bash "$0" "$@"
fi
END_BY=$RUN100K_UNDER_TIMEOUT
START=$((END_BY - DEADLINE))

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

CONNS=${CONNS:-105000}
NODES=${NODES:-6}
NODE_MAX_CONNS=${NODE_MAX_CONNS:-19000}
SOURCES=${SOURCES:-127.0.0.2-127.0.0.9}
PROCS=${PROCS:-0}
CONNECT_RATE=${CONNECT_RATE:-5000}
RATE=${RATE:-1}
SIZE=${SIZE:-128}
DURATION=${DURATION:-30s}
DRAIN=${DRAIN:-20s}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-30s}
OUT=${1:-$(mktemp -d /tmp/run-100k.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PY=$(python3 -c 'import sys; print(sys.executable)') # past pyenv's shim
TMPD=$(mktemp -d /tmp/run-100k-tmp.XXXXXX)

PIDS=() # every process started, stopped by PID at exit
SAMPLER_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local p
  for p in ${SAMPLER_PID:+"$SAMPLER_PID"} "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in ${SAMPLER_PID:+"$SAMPLER_PID"} "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMPD"
  [ -n "${BIN_BUILT:-}" ] && rm -rf "$BIN_BUILT"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "run-100k: stopped by signal" >&2; exit 143' INT TERM

# free_ports N: N distinct ports free on 127.0.0.1, below the ephemeral
# range (so no outgoing connection of this or another test takes one
# between this check and the listen).
free_ports() {
  "$PY" - "$1" <<'PY'
import random, socket, sys
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
hi, lo = lo - 1, max(1024, lo - 12000)
got = set()
while len(got) < int(sys.argv[1]):
    p = random.randint(lo, hi)
    if p in got:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        got.add(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
PY
}

# wait_up PID PORT: wait up to 10 s for PID to accept on 127.0.0.1:PORT;
# fails at once if PID exits (a port taken meanwhile).
wait_up() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

left() { echo $((END_BY - $(date +%s))); }

if [ -z "${PREBUILT:-}" ]; then
  build_bins
  BIN_BUILT=$BIN
else
  BIN=$PREBUILT
fi

for a in ${SOURCES//,/ }; do
  a=${a%%-*}
  if ! "$PY" -c "import socket, sys; socket.socket().bind((sys.argv[1], 0))" "$a" 2>/dev/null; then
    echo "run-100k: cannot bind source address $a: set SOURCES" >&2
    exit 1
  fi
done

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "open files per process: $(ulimit -n); ip_local_port_range: $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range); somaxconn: $(cat /proc/sys/net/core/somaxconn)"
  echo "CONNS=$CONNS NODES=$NODES NODE_MAX_CONNS=$NODE_MAX_CONNS SOURCES=$SOURCES PROCS=$PROCS CONNECT_RATE=$CONNECT_RATE RATE=$RATE SIZE=$SIZE DURATION=$DURATION DRAIN=$DRAIN CONNECT_TIMEOUT=$CONNECT_TIMEOUT DEADLINE=$DEADLINE"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (working tree modified)')"
} | tee "$OUT/settings.txt"

# The sampler: one line of JSON per second while the run lasts (--once: one
# line now). Server connections from each node's /metrics (admin port), RSS
# and CPU ticks from /proc, kernel socket memory from /proc/net/sockstat and
# the slab caches a TCP socket is made of.
cat >"$TMPD/sample.py" <<'PY'
import json, os, sys, time, urllib.request

SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")

def status_kib(pid, key):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

def cpu_ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])  # utime + stime
    except (OSError, IndexError):
        return 0

def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            out += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
    except OSError:
        pass
    return out

def metrics(port):
    want = ("fanout_connections", "fanout_hub_subscriptions", "fanout_hub_deliveries_total",
            "fanout_upgrades_refused_total", "fanout_slow_consumers_total")
    m = {}
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5).read().decode()
    except Exception:
        return None
    for line in body.splitlines():
        for w in want:
            if line.startswith(w + " ") or line.startswith(w + "{"):
                m[w] = m.get(w, 0) + float(line.rsplit(" ", 1)[1])
    return m

def sockstat():
    s = {}
    for line in open("/proc/net/sockstat"):
        k, rest = line.split(":", 1)
        f = rest.split()
        for i in range(0, len(f) - 1, 2):
            s[f"{k}_{f[i]}"] = int(f[i + 1])
    return s

def slab_bytes():
    out, page = {}, os.sysconf("SC_PAGE_SIZE")
    try:
        for line in open("/proc/slabinfo"):
            f = line.split()
            if f and f[0] in SLABS:
                # num_slabs * pages per slab * page size: what the cache holds
                out[f[0]] = int(f[-2]) * int(f[5]) * page
    except OSError:
        pass
    return out

def meminfo_kib(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0

def sample(a):
    nodes = [int(p) for p in a["node_pids"].split(",") if p]
    ports = [int(p) for p in a["admin_ports"].split(",") if p]
    d = {"t": time.time(), "node_rss_kib": [status_kib(p, "VmRSS") for p in nodes],
         "node_cpu_ticks": [cpu_ticks(p) for p in nodes]}
    ms = [metrics(p) for p in ports]
    for k in ("fanout_connections", "fanout_hub_subscriptions", "fanout_hub_deliveries_total",
              "fanout_upgrades_refused_total", "fanout_slow_consumers_total"):
        d[k] = sum((m or {}).get(k, 0) for m in ms)
    d["node_conns"] = [(m or {}).get("fanout_connections", -1) for m in ms]
    if a.get("redis_pid"):
        d["redis_rss_kib"] = status_kib(a["redis_pid"], "VmRSS")
        d["redis_cpu_ticks"] = cpu_ticks(a["redis_pid"])
    if a.get("flood_pid"):
        fl = [int(a["flood_pid"])] + children(a["flood_pid"])
        d["flood_rss_kib"] = sum(status_kib(p, "VmRSS") for p in fl)
        d["flood_cpu_ticks"] = sum(cpu_ticks(p) for p in fl)
        d["flood_procs"] = len(fl)
    # host CPU: the cpu line of /proc/stat (user nice system idle iowait
    # irq softirq steal), ticks
    d["host_cpu_ticks"] = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    d["sockstat"] = sockstat()
    d["slab_bytes"] = slab_bytes()
    d["meminfo_slab_kib"] = meminfo_kib("Slab")
    d["mem_available_kib"] = meminfo_kib("MemAvailable")
    return d

a = dict(x.split("=", 1) for x in sys.argv[1:] if "=" in x)
if "--once" in sys.argv:
    print(json.dumps(sample(a)), flush=True)
    sys.exit(0)
fp = a.get("flood_pid")
while True:
    t0 = time.time()
    print(json.dumps(sample(a)), flush=True)
    if fp and not os.path.exists(f"/proc/{fp}"):
        break
    time.sleep(max(0.05, 1 - (time.time() - t0)))
PY

"$PY" "$TMPD/sample.py" --once node_pids= admin_ports= >"$OUT/baseline-kernel.json"

# Redis (no persistence, its files in a temporary directory) and the
# nodes, on free ports; started again on other ports, up to 3 times, if a
# port was taken meanwhile.
start_all() {
  local ports i
  read -r -a ports <<<"$(free_ports $((NODES + 2)))"
  RPORT=${ports[0]} PORT=${ports[1]}
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMPD" \
    --protected-mode yes --loglevel warning --logfile "$OUT/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_up "$REDIS_PID" "$RPORT" || return 1
  NODE_PIDS=() ADMIN_PORTS=()
  for i in $(seq 0 $((NODES - 1))); do
    "$BIN/fanout" --addr "127.0.0.1:$PORT" --reuse-port --admin-addr "127.0.0.1:${ports[$((i + 2))]}" \
      --broker "redis://127.0.0.1:$RPORT" --max-conns "$NODE_MAX_CONNS" --log-level warn \
      --handshake-timeout 30s --idle-timeout 10m --drain-delay 0s --drain-timeout 2s \
      >"$OUT/node-$i.log" 2>&1 &
    NODE_PIDS+=($!) ADMIN_PORTS+=("${ports[$((i + 2))]}")
    PIDS+=($!)
  done
  for i in "${!NODE_PIDS[@]}"; do wait_up "${NODE_PIDS[$i]}" "${ADMIN_PORTS[$i]}" || return 1; done
  wait_up "${NODE_PIDS[0]}" "$PORT"
}
stop_started() {
  local p
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
for try in 1 2 3; do
  if start_all; then break; fi
  echo "run-100k: redis or a node did not start (try $try; $(tail -n 2 "$OUT/redis.log" "$OUT"/node-*.log 2>/dev/null | tr '\n' ' '))" | tee -a "$OUT/settings.txt"
  stop_started
  [ "$try" = 3 ] && exit 1
done
NODE_PIDS_CSV=$(
  IFS=,
  echo "${NODE_PIDS[*]}"
)
ADMIN_PORTS_CSV=$(
  IFS=,
  echo "${ADMIN_PORTS[*]}"
)
echo "redis pid $REDIS_PID port $RPORT; fanout port $PORT, nodes (pid:admin port): $(for i in "${!NODE_PIDS[@]}"; do printf '%s:%s ' "${NODE_PIDS[$i]}" "${ADMIN_PORTS[$i]}"; done)" |
  tee -a "$OUT/settings.txt"
sleep 1
"$PY" "$TMPD/sample.py" --once node_pids="$NODE_PIDS_CSV" admin_ports="$ADMIN_PORTS_CSV" \
  redis_pid="$REDIS_PID" >"$OUT/baseline-nodes.json"

# The flood: its own deadline ends it 25 s before ours, leaving time to stop
# and summarize.
FLOOD_DEADLINE=$(($(left) - 25))
if [ "$FLOOD_DEADLINE" -lt 30 ]; then
  echo "run-100k: only $(left) s left for the flood: raise DEADLINE" >&2
  exit 1
fi
FLOOD_CMD=("$BIN/flood" broadcast --url "ws://127.0.0.1:$PORT/ws" --protocol fanout-json
  --conns "$CONNS" --connect-rate "$CONNECT_RATE" --source-ips "$SOURCES" --procs "$PROCS"
  --publishers 1 --rate "$RATE" --size "$SIZE" --duration "$DURATION" --drain "$DRAIN"
  --connect-timeout "$CONNECT_TIMEOUT"
  --deadline "${FLOOD_DEADLINE}s" --progress off
  --json "$OUT/flood.json" --report "$OUT/flood.html")
echo "flood: ${FLOOD_CMD[*]}" | sed "s|$BIN/||" >>"$OUT/settings.txt"
"${FLOOD_CMD[@]}" >"$OUT/flood.txt" 2>"$OUT/flood.stderr" &
FLOOD_PID=$!
PIDS+=("$FLOOD_PID")
"$PY" "$TMPD/sample.py" node_pids="$NODE_PIDS_CSV" admin_ports="$ADMIN_PORTS_CSV" \
  redis_pid="$REDIS_PID" flood_pid="$FLOOD_PID" >"$OUT/samples.jsonl" &
SAMPLER_PID=$!
echo "flood pid $FLOOD_PID: $CONNS subscribers at $CONNECT_RATE/s, then $RATE publications/s for $DURATION ($(left) s left before the deadline)"
flood_rc=0
wait "$FLOOD_PID" || flood_rc=$?
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
[ "$flood_rc" = 0 ] || echo "run-100k: flood exited $flood_rc (see $OUT/flood.stderr)" | tee -a "$OUT/settings.txt"

# Summary.
"$PY" - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, os, re, sys
from datetime import datetime

out = sys.argv[1]
tick = os.sysconf("SC_CLK_TCK")
page = os.sysconf("SC_PAGE_SIZE")
kb = json.load(open(f"{out}/baseline-kernel.json"))
nb = json.load(open(f"{out}/baseline-nodes.json"))
samples = [json.loads(l) for l in open(f"{out}/samples.jsonl") if l.strip()]
try:
    fl = json.load(open(f"{out}/flood.json"))
except (OSError, ValueError):
    fl = None
s = fl["summary"] if fl else {}

def ts(x):
    # Go's RFC 3339 with nanoseconds: keep microseconds for fromisoformat
    if not x or x.startswith("0001-"):
        return 0
    x = re.sub(r"(\.\d{6})\d*", r"\1", x.replace("Z", "+00:00"))
    return datetime.fromisoformat(x).timestamp()

def fmt(n):
    return format(int(round(n)), ",")

def mib(b):
    return f"{b / 2**20:,.0f} MiB"

def kernel_bytes(d):
    return sum(d["slab_bytes"].values()) + d["sockstat"].get("TCP_mem", 0) * page

# "held": the last sample before the load phase, every subscriber connected
# and idle (else the first with the most server connections).
if not samples:
    print("no samples: the run did not start")
    sys.exit(1)
ls, le = ts(fl.get("load_start")) if fl else 0, ts(fl.get("load_stop")) if fl else 0
top = max(d["fanout_connections"] for d in samples)
before = [d for d in samples if ls and d["t"] < ls and d["fanout_connections"] >= 0.99 * top]
held = before[-1] if before else next(d for d in samples if d["fanout_connections"] >= top)
conns = held["fanout_connections"]
load = [d for d in samples if ls and ls <= d["t"] <= le]

def per(x):
    return x / conns if conns else 0

srv_base = sum(nb["node_rss_kib"]) * 1024
srv_held = sum(held["node_rss_kib"]) * 1024
srv_peak = max(sum(d["node_rss_kib"]) for d in samples) * 1024
k_base, k_held = kernel_bytes(kb), kernel_bytes(held)
k_peak = max(kernel_bytes(d) for d in samples)
slab_base, slab_held = kb["meminfo_slab_kib"] * 1024, held["meminfo_slab_kib"] * 1024
fl_held = held.get("flood_rss_kib", 0) * 1024

rows = []
def row(k, v):
    rows.append((k, v))

row("connections held", f"{fmt(conns)} at the server (sum of {len(held['node_conns'])} nodes' fanout_connections: "
    + " / ".join(fmt(c) for c in held["node_conns"]) + ")")
if fl:
    row("flood", f"{fmt(s.get('ready', 0))} subscribers ready, {fmt(s.get('measured', 0))} measured, "
        f"peak open {fmt(s.get('peak_open', 0))}, {fmt(s.get('conn_fail', 0))} failed connects, "
        f"{fmt(s.get('disconnects', 0))} dropped, {fl['procs']} worker processes, ramp {fl.get('ramp_seconds', 0):.1f} s "
        f"({fmt(s.get('connect_rate', 0))}/s), {fmt(s.get('sub_retries', 0))} subscribes retried after \"unavailable\"")
    for c in s.get("not_ready") or []:
        row("  not ready", f"{c.get('cause')}: {fmt(c.get('count', 0))}")
    for c in s.get("connect_failures") or []:
        row("  connect failures", f"{c.get('cause')}: {fmt(c.get('count', 0))}")
    row("publications", f"{fmt(s.get('sent', 0))} sent, {fmt(s.get('acked', 0))} acknowledged, "
        f"{s.get('send_rate', 0):.2f}/s over {s.get('load_seconds', 0):.1f} s")
    row("deliveries/s", f"{fmt(s.get('delivery_rate', 0))}  ({fmt(s.get('delivered', 0))} delivered)")
    lat = s.get("latency_ms", {})
    row("latency publish->receive", f"p50 {lat.get('p50', 0):.1f} ms  p90 {lat.get('p90', 0):.1f}  "
        f"p99 {lat.get('p99', 0):.1f}  p99.9 {lat.get('p99_9', 0):.1f}  max {lat.get('max', 0):.1f} ms")
    row("loss", f"{fmt(s.get('lost', 0))} of {fmt(s.get('expected', 0))} expected ({s.get('loss_pct', 0):.4f} %)")
row("server RSS (all nodes)", f"{mib(srv_held)} held ({mib(srv_base)} with no connections), peak {mib(srv_peak)}")
row("  per connection", f"{fmt(per(srv_held - srv_base))} B (total / conns: {fmt(per(srv_held))} B)")
kh = held["slab_bytes"]
row("kernel socket memory", f"{mib(k_held - k_base)} over the baseline: slab "
    + ", ".join(f"{k} {mib(kh.get(k, 0) - kb['slab_bytes'].get(k, 0))}" for k in sorted(kh))
    + f"; TCP buffers {held['sockstat'].get('TCP_mem', 0)} pages; peak {mib(k_peak - k_base)}")
row("  per connection", f"{fmt(per(k_held - k_base))} B for both ends (client and server socket), "
    f"~{fmt(per(k_held - k_base) / 2)} B per end; all slab (meminfo) {fmt(per(slab_held - slab_base))} B")
row("  sockstat", f"sockets used {fmt(held['sockstat'].get('sockets_used', 0))}, TCP inuse "
    f"{fmt(held['sockstat'].get('TCP_inuse', 0))}, TCP mem {held['sockstat'].get('TCP_mem', 0)} pages")
row("flood RSS (client side)", f"{mib(fl_held)} held over {held.get('flood_procs', 0)} processes: "
    f"{fmt(per(fl_held))} B per connection")
row("redis RSS", mib(held.get("redis_rss_kib", 0) * 1024))
if len(load) >= 2:
    a, b = load[0], load[-1]
    dt = b["t"] - a["t"]
    dlv = b["fanout_hub_deliveries_total"] - a["fanout_hub_deliveries_total"]
    scpu = (sum(b["node_cpu_ticks"]) - sum(a["node_cpu_ticks"])) / tick
    fcpu = (b.get("flood_cpu_ticks", 0) - a.get("flood_cpu_ticks", 0)) / tick
    rcpu = (b.get("redis_cpu_ticks", 0) - a.get("redis_cpu_ticks", 0)) / tick
    row("CPU in the load phase", f"server {scpu / dt:.2f} cores ({scpu * 1e6 / dlv if dlv else 0:.2f} us per delivery, "
        f"{fmt(dlv / dt)} deliveries/s counted by the hubs), flood {fcpu / dt:.2f} cores, redis {rcpu / dt:.3f} cores, over {dt:.0f} s")
    if "host_cpu_ticks" in a:
        h = [y - x for x, y in zip(a["host_cpu_ticks"], b["host_cpu_ticks"])]
        user, nice, system, idle, iowait, irq, softirq, steal = [v / tick / dt for v in h]
        busy = user + nice + system + irq + softirq + steal
        row("  host (all processes)", f"{busy:.2f} of {os.cpu_count()} cores busy (user {user + nice:.2f}, system {system:.2f}, "
            f"softirq {softirq + irq:.2f}, steal {steal:.2f}), idle {idle + iowait:.2f}; not ours: "
            f"{max(0, user + nice + system - scpu / dt - fcpu / dt - rcpu / dt):.2f} cores of user+system")
    row("slow consumers closed", fmt(b["fanout_slow_consumers_total"]))
row("upgrades refused", fmt(max(d["fanout_upgrades_refused_total"] for d in samples)))
row("memory available", f"{mib(kb['mem_available_kib'] * 1024)} before, lowest {mib(min(d['mem_available_kib'] for d in samples) * 1024)} during the run")

w = max(len(k) for k, _ in rows)
print("== run-100k summary ==")
for k, v in rows:
    print(f"{k:<{w}}  {v}")
json.dump({"conns": conns, "node_conns": held["node_conns"], "flood": s,
           "server_rss_bytes": {"base": srv_base, "held": srv_held, "peak": srv_peak},
           "kernel_bytes": {"base": k_base, "held": k_held, "peak": k_peak},
           "flood_rss_bytes_held": fl_held}, open(f"{out}/summary.json", "w"), indent=1)
PY
echo "whole run: $(($(date +%s) - START)) s (deadline $DEADLINE s); output in $OUT" | tee -a "$OUT/summary.txt"
exit "$flood_rc"
