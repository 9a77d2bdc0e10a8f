#!/usr/bin/env bash
# Runs every test of the repository: the main module with the race detector,
# then the peer servers' own module (bench/peers).
set -euo pipefail
cd "$(dirname "$0")/.."
go test -race -count=1 -timeout 15m ./...
(cd bench/peers && go test -count=1 -timeout 5m ./...)
