package main

// Echo mode: every connection keeps --inflight messages in flight in a
// closed loop; each returning message is timed (round trip) and replaced
// by a new one while the load phase lasts. With raw the server echoes the
// message itself; with a fanout protocol each connection subscribes to its
// own channel (<channel>.echo.<index>) and publishes to it, so the round
// trip includes the broker. Counts.Pending is the number still in flight,
// which the drain waits for.

// startEcho sends every ready connection's initial window.
func (a *agent) startEcho() {
	for _, c := range a.subs {
		if !c.ready.Load() || c.dead.Load() {
			continue
		}
		w := c.ws.Load()
		if w == nil {
			continue
		}
		c.measure.Store(true)
		a.ctr.measured.Add(1)
		for i := 0; i < a.cfg.Inflight && a.running(); i++ {
			c.sendEcho(w)
		}
	}
}
