# fanout's container image: one static binary in an otherwise empty image,
# run as nobody (65534), serving on 8080.
#
#   docker build -t fanout .
#   podman build --format docker -t fanout .      (docker format: OCI images
#   buildah bud --format docker -t fanout .        have no HEALTHCHECK)
#
# GO_IMAGE is the build stage's image: the official golang image by
# default; any image with Go 1.26 on PATH and a CA bundle at
# /etc/ssl/certs/ca-certificates.crt does (the RUN steps are exec form, so
# no shell is needed: scripts/image-test.sh builds one from the host's Go
# where no registry is reachable). The build needs the Go module proxy.
ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Static (no cgo, so no libc in the image), reproducible paths, and no
# toolchain download: the image's Go builds.
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath
# Modules first: this layer is reused until go.mod or go.sum change. The
# netpoll replacement lives in third_party.
COPY go.mod go.sum ./
COPY third_party/ third_party/
RUN ["go", "mod", "download"]
COPY . .
RUN ["go", "build", "-ldflags=-s -w", "-o", "/out/fanout", "./cmd/fanout"]
RUN ["go", "version", "-m", "/out/fanout"]

FROM scratch
# CA roots for rediss:// (--broker) and any https the server makes.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/fanout /fanout
# nobody:nogroup. scratch has no /etc/passwd; the server needs no home and
# writes no file.
USER 65534:65534
ENV FANOUT_ADDR=:8080
EXPOSE 8080
# Liveness only (/healthz): /readyz turns 503 during a drain and while the
# broker is down, which must take the node out of the load balancer, not
# have it restarted. There is no curl in scratch: the binary checks itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/fanout", "healthcheck"]
# SIGTERM starts the drain (--drain-delay + --drain-timeout, 15 s by
# default): give the container at least that before SIGKILL (compose:
# stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/fanout"]
