package main

import (
	"time"

	"github.com/gobwas/ws"
)

// Churn mode (fanout protocols): broadcast, and once a second --churn-pct
// of this worker's subscribers (taken in turn) close their connection,
// reconnect and subscribe again with recover {epoch, offset of the last
// publication they saw}. Every subscriber checks that offsets follow each
// other across live pushes and recovered publications: a missing offset is
// a gap (a failure: the run exits with status 3), one seen twice a
// duplicate. A reply with recovered=false or another epoch counts as a
// recover failure, a reconnect that does not complete within
// --connect-timeout as a reconnect failure.

// churnLoop drops and reconnects subscribers until the load phase ends.
func (a *agent) churnLoop() {
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	cursor := 0
	carry := 0.0
	for {
		select {
		case <-a.stopCh:
			return
		case <-tk.C:
		}
		carry += float64(len(a.subs)) * a.cfg.ChurnPct / 100
		n := int(carry)
		carry -= float64(n)
		for tries := 0; n > 0 && tries < len(a.subs); tries++ {
			c := a.subs[cursor]
			cursor = (cursor + 1) % len(a.subs)
			if c.dead.Load() || !c.measure.Load() || !c.busy.CompareAndSwap(false, true) {
				continue
			}
			n--
			a.ctr.pending.Add(1)
			a.bg.Add(1)
			go func() {
				defer a.bg.Done()
				defer a.ctr.pending.Add(-1)
				defer c.busy.Store(false)
				a.reconnect(c)
			}()
		}
	}
}

// reconnect closes c's connection and opens a new one that resubscribes
// with recover.
func (a *agent) reconnect(c *client) {
	select {
	case a.sem <- struct{}{}:
	case <-a.stopCh:
		return
	}
	defer func() { <-a.sem }()
	if old := c.ws.Load(); old != nil {
		old.closeWith(ws.StatusNormalClosure, causeClient)
	}
	// Dial failures count as connect failures, the rest as "not ready";
	// both as reconnect failures.
	fail := func(set *causeSet, cause string) {
		a.ctr.reconnectFail.Add(1)
		if set != nil {
			set.add("reconnect_"+cause, 1)
		}
		c.dead.Store(true)
	}
	a.ctr.attempted.Add(1)
	began := time.Now()
	w, err := a.dialer.dial(a.runCtx, c.gid, c, transportEvent, 0)
	if err != nil {
		a.ctr.connFail.Add(1)
		fail(&a.connFails, causeOf(err))
		return
	}
	a.handshake.record(time.Since(began))
	a.ctr.connOK.Add(1)
	a.ctr.open.Add(1)
	c.ws.Store(w)
	done, err := c.subscribe(w)
	if err == nil {
		err = w.start()
	}
	if err != nil {
		fail(&a.subErrs, "subscribe_write")
		w.abort("subscribe_write")
		return
	}
	t := time.NewTimer(time.Until(began.Add(a.cfg.ConnectTimeout)))
	defer t.Stop()
	select {
	case <-done:
		c.mu.Lock()
		ok := c.synced
		c.mu.Unlock()
		if !ok {
			fail(nil, "") // the error reply was counted by its code
			w.closeWith(ws.StatusNormalClosure, causeClient)
		}
	case <-t.C:
		fail(&a.subErrs, "subscribe_timeout")
		w.closeWith(ws.StatusNormalClosure, causeClient)
	case <-a.runCtx.Done():
		fail(&a.subErrs, "unfinished")
	}
}
