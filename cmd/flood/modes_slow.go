package main

import (
	"strings"
	"time"
)

// Slow mode: broadcast where --slow-pct of the subscribers (spread evenly
// over the index range) subscribe and then stop reading, on sockets with a
// small receive buffer (--slow-rcvbuf), so the server's queue for them
// grows. The others are measured as usual: their latency shows whether the
// server keeps them fast. When the load phase ends the slow subscribers
// read again, discarding data, to learn how each one ended:
//
//	slow_shed     closed by the server with 1008 (what fanout should do)
//	slow_dropped  closed otherwise (another code, or no close frame)
//	slow_open     still open: it was never shed
//
// A slow subscriber that stays quiet for slowIdle while reading counts as
// open.
const slowIdle = time.Second

// resumeSlow starts reading every slow subscriber again.
func (a *agent) resumeSlow() {
	for _, c := range a.subs {
		if c.role != roleSlow || c.dead.Load() {
			continue
		}
		w := c.ws.Load()
		if w == nil || !c.resumed.CompareAndSwap(false, true) {
			continue
		}
		a.ctr.pending.Add(1)
		go w.serve(slowIdle)
	}
}

// slowOutcome records how a slow subscriber's connection ended.
func (a *agent) slowOutcome(c *client, cause string) {
	if c.dead.Load() {
		return
	}
	if c.resumed.Load() {
		a.ctr.pending.Add(-1)
	}
	switch {
	case cause == "close_1008":
		a.ctr.slowShed.Add(1)
	case cause == "idle" || cause == causeClient:
		a.ctr.slowOpen.Add(1)
		cause = "still_open"
	case strings.HasPrefix(cause, "close_") || cause == "eof" || cause == "reset":
		a.ctr.slowDropped.Add(1)
	default:
		a.ctr.slowDropped.Add(1)
	}
	a.slowCauses.add(cause, 1)
}
