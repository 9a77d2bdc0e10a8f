package engine

import (
	"sync/atomic"

	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// stats are the server's counters: plain atomics on the hot path, read by
// the Prometheus collectors in metrics.go.
type stats struct {
	accepted          atomic.Uint64
	upgrades          atomic.Uint64
	handshakeFailed   atomic.Uint64
	handshakeTimeouts atomic.Uint64
	httpConns         atomic.Uint64
	open              atomic.Int64
	framesIn          atomic.Uint64
	messagesIn        atomic.Uint64
	commandErrors     atomic.Uint64
	writevs           atomic.Uint64
	socketFullWaits   atomic.Uint64 // times the write poller was armed for a full socket
	slowConsumers     atomic.Uint64
	writeTimeouts     atomic.Uint64
	writeErrors       atomic.Uint64 // writev failures (the peer reset or vanished)
	closeTimeouts     atomic.Uint64 // peers that did not close within CloseTimeout
	sweepChecks       atomic.Uint64 // connections the sweeper visited
	rateLimited       atomic.Uint64 // commands refused by the per-connection rate limit
	closes            [closeCodeSlots]atomic.Uint64
}

// closeCodeSlots counts 1000..1015 individually and everything else in the
// last slot.
const closeCodeSlots = 17

func (st *stats) closeSent(code uint16) {
	i := int(code) - 1000
	if i < 0 || i >= closeCodeSlots-1 {
		i = closeCodeSlots - 1
	}
	st.closes[i].Add(1)
}

// sharedPing is one ping frame queued to every connection that needs it;
// the server holds a reference forever so it is never recycled.
var sharedPing = wsframe.New(ws.OpPing, nil)

// pingFrame returns sharedPing with a reference for the receiver.
func pingFrame() *wsframe.Frame {
	sharedPing.Retain(1)
	return sharedPing
}
