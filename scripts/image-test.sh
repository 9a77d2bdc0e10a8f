#!/usr/bin/env bash
# Builds the container image with buildah and checks what is in it, without
# running a container (this sandbox refuses to): the image's config (user,
# entrypoint, health check, port, stop signal), its files (the binary and
# the CA bundle, nothing else), the binary (static, no cgo, trimmed paths),
# and the binary itself run from the image's filesystem (--help, and the
# health check against a server and a closed port).
#
#   scripts/image-test.sh            build with GO_IMAGE (default: the
#                                    Dockerfile's golang image) and test
#   GO_IMAGE=local scripts/image-test.sh
#                                    no registry reachable: build the build
#                                    stage's image from this host's Go
#                                    (scratch + $(go env GOROOT) + CA bundle)
#   IMAGE=fanout:x SKIP_BUILD=1 scripts/image-test.sh   test an image built before
#
# Needs: buildah (apt-get install buildah), file, python3. Root, or rootless
# buildah set up; storage driver vfs (works in containers: no overlay).
set -euo pipefail
cd "$(dirname "$0")/.."

for prog in buildah file python3; do
  command -v "$prog" >/dev/null || { echo "image-test: $prog not installed (apt-get install buildah file python3)" >&2; exit 2; }
done
B=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
IMAGE=${IMAGE:-localhost/fanout:image-test}
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ "${SKIP_BUILD:-}" != 1 ]; then
  args=()
  if [ "${GO_IMAGE:-}" = local ]; then
    goroot=$(go env GOROOT)
    ctr=$("${B[@]}" from scratch)
    "${B[@]}" copy "$ctr" "$goroot" /usr/local/go >/dev/null
    "${B[@]}" copy "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt >/dev/null
    "${B[@]}" config --env PATH=/usr/local/go/bin --env HOME=/tmp --env GOPATH=/tmp/go --env GOCACHE=/tmp/gocache "$ctr"
    "${B[@]}" commit -q "$ctr" localhost/fanout-go-toolchain:local >/dev/null
    "${B[@]}" rm "$ctr" >/dev/null
    args+=(--build-arg GO_IMAGE=localhost/fanout-go-toolchain:local)
  elif [ -n "${GO_IMAGE:-}" ]; then
    args+=(--build-arg "GO_IMAGE=$GO_IMAGE")
  fi
  # chroot isolation: RUN steps without user namespaces; docker format:
  # OCI image configs have no HEALTHCHECK.
  "${B[@]}" bud --isolation chroot --format docker "${args[@]}" -t "$IMAGE" .
fi

# Config.
"${B[@]}" inspect --type image "$IMAGE" | python3 -c '
import json, sys
c = json.load(sys.stdin)["Docker"]["config"]
want = {
    "User": "65534:65534",
    "Entrypoint": ["/fanout"],
    "ExposedPorts": {"8080/tcp": {}},
    "StopSignal": "SIGTERM",
}
bad = [f"{k}={c.get(k)!r}, want {v!r}" for k, v in want.items() if c.get(k) != v]
hc = c.get("Healthcheck") or {}
if hc.get("Test") != ["CMD", "/fanout", "healthcheck"]:
    bad.append(f"Healthcheck={hc!r}")
if "FANOUT_ADDR=:8080" not in (c.get("Env") or []):
    bad.append("Env lacks FANOUT_ADDR=:8080: %r" % c.get("Env"))
if bad:
    sys.exit("FAIL: image config: " + "; ".join(bad))
print("ok: config: user 65534:65534, entrypoint /fanout, healthcheck /fanout healthcheck, port 8080/tcp, SIGTERM")
'

# Files.
ctr=$("${B[@]}" from "$IMAGE")
trap '"${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$("${B[@]}" mount "$ctr")
files=$(cd "$mnt" && find . -type f -o -type l | sort | tr '\n' ' ')
[ "$files" = "./etc/ssl/certs/ca-certificates.crt ./fanout " ] || fail "image files: $files"
echo "ok: files: $files"
bin=$mnt/fanout
desc=$(file -b "$bin")
case $desc in
  *"statically linked"*) ;;
  *) fail "binary not static: $desc" ;;
esac
echo "ok: static: $desc"
info=$(go version -m "$bin")
grep -q $'\tbuild\tCGO_ENABLED=0' <<<"$info" || fail "binary built with cgo: $info"
grep -q $'\tbuild\t-trimpath=true' <<<"$info" || fail "binary built without -trimpath: $info"
# (grep on the file itself: `strings | grep -q` under pipefail could not fail)
if grep -qaF -- "$PWD" "$bin"; then fail "binary holds the build directory's path"; fi
echo "ok: CGO_ENABLED=0, -trimpath"

# The binary, run from the image's filesystem (not in a container).
help=$("$bin" --help 2>&1) || fail "fanout --help exited $?"
grep -q "Usage: fanout" <<<"$help" || fail "fanout --help: $help"
echo "ok: /fanout --help"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
FANOUT_ADDR=127.0.0.1:$port FANOUT_LOG_LEVEL=error "$bin" & pid=$!
trap 'kill $pid 2>/dev/null || true; "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
ok=
for _ in $(seq 100); do
  if FANOUT_ADDR=:$port "$bin" healthcheck >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || fail "fanout healthcheck never succeeded against the image's binary serving on :$port"
echo "ok: /fanout healthcheck against the image's binary serving"
kill -TERM $pid; wait $pid || true
if FANOUT_ADDR=127.0.0.1:$port "$bin" healthcheck --timeout 1s >/dev/null 2>&1; then
  fail "healthcheck succeeded with no server"
fi
echo "ok: /fanout healthcheck fails with no server"
echo "image-test: $IMAGE passed"
