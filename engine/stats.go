package engine

import (
	"sync/atomic"

	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// stats are the server's counters: plain atomics on the hot path, read by
// the Prometheus collectors of newMetricsHandler (http.go, metrics.go).
type stats struct {
	accepted          atomic.Uint64
	upgrades          atomic.Uint64
	handshakeFailed   atomic.Uint64
	handshakeTimeouts atomic.Uint64
	httpConns         atomic.Uint64
	open              atomic.Int64
	framesIn          atomic.Uint64
	messagesIn        atomic.Uint64
	inflated          atomic.Uint64 // compressed messages received and inflated
	deflateUpgrades   atomic.Uint64 // upgrades that negotiated permessage-deflate
	commandErrors     atomic.Uint64
	writevs           atomic.Uint64
	socketFullWaits   atomic.Uint64 // times the write poller was armed for a full socket
	slowConsumers     atomic.Uint64
	writeTimeouts     atomic.Uint64
	writeErrors       atomic.Uint64                 // writev failures (the peer reset or vanished)
	closeTimeouts     atomic.Uint64                 // peers that did not close within CloseTimeout
	sweepChecks       atomic.Uint64                 // connections the sweeper visited
	rateLimited       atomic.Uint64                 // commands refused by the per-connection rate limit
	closes            [closeCodeSlots]atomic.Uint64 // by closeSlot (metrics.go)
	upgradeFailures   [numUpgradeFailures]atomic.Uint64
}

// closeSent counts a close frame sent with code.
func (st *stats) closeSent(code uint16) { st.closes[closeSlot(code)].Add(1) }

// upgradeFailed counts an upgrade refused for cause.
func (st *stats) upgradeFailed(cause upgradeFailure) { st.upgradeFailures[cause].Add(1) }

// sharedPing is one ping frame queued to every connection that needs it;
// the server holds a reference forever so it is never recycled.
var sharedPing = wsframe.New(ws.OpPing, nil)

// pingFrame returns sharedPing with a reference for the receiver.
func pingFrame() *wsframe.Frame {
	sharedPing.Retain(1)
	return sharedPing
}
