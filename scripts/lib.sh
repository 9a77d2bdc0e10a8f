# Helpers shared by scripts/compare.sh, scripts/bigrun.sh and
# scripts/tlscost.sh (sourced).

# The flood's publishers send at full rate: lift fanout's per-connection
# command rate limit (100/s by default) and publish byte rate (1 MiB/s per
# user or anonymous connection), which are for untrusted clients.
# Environment variables, so that older fanout binaries (PREBUILT) ignore
# them.
export FANOUT_COMMAND_RATE=-1
export FANOUT_PUBLISH_BYTES_PER_SECOND=-1

# wait_port PORT: wait up to 10 s for a server to accept on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2
  return 1
}

# build_bins: BIN=$PREBUILT when set (binaries built elsewhere: fanout,
# flood, idlerss), else a new temporary directory with them built from here.
build_bins() {
  if [ -n "${PREBUILT:-}" ]; then
    BIN=$PREBUILT
    return
  fi
  BIN=$(mktemp -d)
  echo "building into $BIN" >&2
  go build -o "$BIN/fanout" ./cmd/fanout
  go build -o "$BIN/flood" ./cmd/flood
  go build -o "$BIN/idlerss" ./bench/idlerss
}
