#!/usr/bin/env bash
# Kernel settings for a host holding many WebSocket connections (fanout
# nodes, the proxy in front of them, or a load-generating client), each one
# explained. By default it only PRINTS what it would set, next to the
# current value; nothing changes without --apply.
#
#   deploy/sysctl.sh [--conns N] [--role server|client|proxy] [--apply] [--persist FILE]
#
#   --conns N     connections this host must hold (default 1000000): sizes
#                 the file, TIME_WAIT and conntrack tables
#   --role R      server (default): fanout nodes, connections come in;
#                 proxy: nginx/HAProxy in front of fanout on this host (each
#                 client connection is also an outgoing connection to a
#                 node); client: a load generator such as cmd/flood
#   --apply       write the values with sysctl -w (root); never lowers a
#                 limit that is already higher (nor raises a timeout, nor
#                 narrows a port range); the per-socket buffer sizes and
#                 tcp_tw_reuse are written as given
#   --persist F   with --apply, also write them to F (e.g.
#                 /etc/sysctl.d/90-fanout.conf) so they survive a reboot
#
# The per-process descriptor limit is not a sysctl: set LimitNOFILE=1048576
# in the systemd unit (deploy/fanout.service does) or `ulimit -n` before
# starting fanout. Sizes and the figures behind them: docs/SIZING.md.
set -euo pipefail

CONNS=1000000
ROLE=server
APPLY=0
PERSIST=""
while [ $# -gt 0 ]; do
  case $1 in
  --conns) CONNS=${2:?--conns needs a number}; shift 2 ;;
  --role) ROLE=${2:?--role needs server, proxy or client}; shift 2 ;;
  --apply) APPLY=1; shift ;;
  --persist) PERSIST=${2:?--persist needs a file}; shift 2 ;;
  -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
  *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $ROLE in server | proxy | client) ;; *) echo "--role: server, proxy or client" >&2; exit 2 ;; esac
[[ $CONNS =~ ^[0-9]+$ ]] && [ "$CONNS" -gt 0 ] || { echo "--conns: a positive number" >&2; exit 2; }
if [ -n "$PERSIST" ] && [ $APPLY = 0 ]; then
  echo "--persist writes only with --apply" >&2
  exit 2
fi

PAGE=$(getconf PAGESIZE)
MEM_KIB=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
MEM_PAGES=$((MEM_KIB * 1024 / PAGE))
# Descriptors: one per connection in fanout (three with in-process TLS),
# two per connection in a proxy (client side and node side).
FDS_PER_CONN=1
[ "$ROLE" = proxy ] && FDS_PER_CONN=2
roundup() { # next power of two >= $1
  local v=1
  while [ $v -lt "$1" ]; do v=$((v * 2)); done
  echo $v
}
FILES=$(roundup $((CONNS * FDS_PER_CONN * 5 / 4 + 65536)))

# name|value|why|how. Values with spaces are vectors (tcp_mem, ranges).
# how: max (never lower what is there; the default), min (never raise:
# timeouts), range (a port range only widens), exact (written as given).
SETTINGS=()
add() { SETTINGS+=("$1|$2|$3|${4:-max}"); }

add fs.file-max "$FILES" \
  "System-wide open files. Every socket is a file: $CONNS connections x $FDS_PER_CONN descriptor(s) + 25% + 64k for everything else, to a power of two."
add fs.nr_open "$(roundup $((CONNS * FDS_PER_CONN + 65536)))" \
  "Ceiling of any process's RLIMIT_NOFILE (LimitNOFILE=, ulimit -n). The default 1048576 just allows LimitNOFILE=1048576; one process holding more needs this higher."
add net.core.somaxconn 65535 \
  "Cap on a listening socket's accept queue (fanout listens with the maximum backlog). After a deploy or network blip every client reconnects at once: a short queue drops SYNs and clients back off for seconds."
add net.ipv4.tcp_max_syn_backlog 65535 \
  "Half-open connections (SYN received, handshake not done) kept per listener before SYN cookies take over: the same reconnect storm."
add net.core.netdev_max_backlog 16384 \
  "Packets queued per CPU between the NIC and the TCP stack (default 1000). A broadcast to many connections, and its ACKs, arrive in bursts."
# tcp_mem is in pages and is the kernel-wide budget for socket buffers
# (sockstat 'TCP mem'): the default is ~4.7/6.25/9.4% of RAM.
add net.ipv4.tcp_mem "$((MEM_PAGES / 16)) $((MEM_PAGES / 8)) $((MEM_PAGES / 4))" \
  "Pages all TCP buffers may use: below the 1st no pressure, above the 2nd buffers are trimmed, at the 3rd new data is refused. The kernel default (max ~9% of RAM) is made for hosts whose job is not sockets; here 6.25/12.5/25% of RAM. An idle connection holds none; a broadcast queued to slow readers does."
add net.ipv4.tcp_rmem "4096 16384 4194304" \
  "Receive buffer per socket: min, initial, max (autotuned). Clients send little (subscribe, small publishes): start at 16 KiB (some distributions: 128 KiB) and cap at 4 MiB; memory is only taken while data waits, and tcp_mem bounds all sockets together. Written as given." exact
add net.ipv4.tcp_wmem "4096 16384 4194304" \
  "Send buffer per socket: min, initial, autotuned max. fanout keeps up to --write-queue-bytes (1 MiB) per connection in user space and closes a slower reader 1008; the kernel part is bounded by this max and, all sockets together, by tcp_mem. Written as given." exact
add net.ipv4.tcp_max_tw_buckets "$(roundup "$CONNS")" \
  "TIME_WAIT sockets kept (about 0.2 KB each). A drain or restart closes every connection at once from the server side; past this limit the kernel logs 'time wait bucket table overflow' and drops them early."
add net.ipv4.tcp_fin_timeout 15 \
  "Seconds a connection closed by us waits in FIN_WAIT2 for the peer's FIN (default 60): mass closes of dead clients free their sockets sooner." min
if [ "$ROLE" != server ]; then
  add net.ipv4.ip_local_port_range "1024 65535" \
    "Ephemeral ports for OUTGOING connections ($ROLE): one per connection per (source address, destination address:port). Default 32768-60999 (28k); widened, 64k. Beyond that use several source addresses (flood --source-ips, HAProxy 'source', several node ports)." range
  add net.ipv4.tcp_tw_reuse 1 \
    "Reuse a TIME_WAIT port for a new outgoing connection when timestamps show it is safe (2, the default, does so for loopback only). Lets a $ROLE reconnect quickly after closing many connections." exact
fi
# Connection tracking: only when the module is loaded (stateful iptables or
# nftables rules, Docker). A full table drops new connections silently
# ('nf_conntrack: table full, dropping packet' in dmesg).
if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
  CT=$(roundup $((CONNS * FDS_PER_CONN * 5 / 4)))
  add net.netfilter.nf_conntrack_max "$CT" \
    "Connections tracked by netfilter (about 0.3 KB each), loaded on this host. Better: exempt the WebSocket port from tracking (nft: notrack, iptables -t raw ... -j CT --notrack) and skip this."
  if [ -w /proc/sys/net/netfilter/nf_conntrack_buckets ] || [ -e /proc/sys/net/netfilter/nf_conntrack_buckets ]; then
    add net.netfilter.nf_conntrack_buckets "$((CT / 4))" \
      "Hash buckets of the conntrack table: a quarter of nf_conntrack_max keeps lookups short."
  fi
fi

key_path() { echo "/proc/sys/${1//.//}"; }
current() {
  local p
  p=$(key_path "$1")
  [ -r "$p" ] && tr -s '\t ' ' ' <"$p" | sed 's/ *$//' || echo "(absent)"
}
# want HOW CUR NEW: the value to write (see add), element by element for a
# vector.
want() {
  local how=$1 cur=$2 new=$3
  if [ "$cur" = "(absent)" ] || [ "$how" = exact ]; then echo "$new"; return; fi
  local -a c n o
  read -r -a c <<<"$cur"
  read -r -a n <<<"$new"
  if [ ${#c[@]} != ${#n[@]} ]; then echo "$new"; return; fi
  for i in "${!n[@]}"; do
    if [ "$how" = min ] || { [ "$how" = range ] && [ "$i" = 0 ]; }; then
      o+=($((c[i] < n[i] ? c[i] : n[i])))
    else
      o+=($((c[i] > n[i] ? c[i] : n[i])))
    fi
  done
  echo "${o[*]}"
}

echo "# fanout kernel settings: role $ROLE, $CONNS connections, $((MEM_KIB / 1048576)) GiB RAM, page $PAGE B"
[ $APPLY = 1 ] || echo "# dry run: nothing is changed (add --apply to write these values)"
echo
CHANGES=()
for s in "${SETTINGS[@]}"; do
  IFS='|' read -r key val why how <<<"$s"
  cur=$(current "$key")
  new=$(want "$how" "$cur" "$val")
  mark="keep"
  [ "$cur" != "$new" ] && mark="SET" && CHANGES+=("$key=$new")
  printf '%-34s %-6s %s\n' "$key" "$mark" "current: $cur -> $new"
  echo "$why" | fold -s -w 96 | sed 's/^/    # /'
done
echo
echo "# per process: LimitNOFILE=1048576 (deploy/fanout.service) or ulimit -n; now $(ulimit -n) here."
echo "#   fanout's --max-conns defaults to that limit less max(256, 5%) (a third with TLS)."

if [ $APPLY = 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "--apply needs root" >&2
  exit 1
fi
if [ ${#CHANGES[@]} = 0 ]; then
  echo "nothing to change"
else
  for kv in "${CHANGES[@]}"; do
    # Some keys are read-only outside the host's initial network namespace
    # (containers): say so and go on.
    sysctl -w "$kv" || { echo "could not set ${kv%%=*}" >&2; FAILED=1; }
  done
fi
if [ -n "$PERSIST" ]; then
  {
    echo "# written by fanout deploy/sysctl.sh --role $ROLE --conns $CONNS on $(date -u '+%Y-%m-%d')"
    for s in "${SETTINGS[@]}"; do
      IFS='|' read -r key _ why _ <<<"$s"
      echo "# $why" | fold -s -w 96 | sed '2,$s/^/# /'
      echo "$key = $(current "$key")"
    done
  } >"$PERSIST"
  echo "wrote $PERSIST"
fi
exit "${FAILED:-0}"
