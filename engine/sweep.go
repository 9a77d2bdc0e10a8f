package engine

import (
	"runtime/debug"
	"sync"
	"time"
)

// The sweeper is the server's one timer. Instead of a timer per connection
// (or a walk over every connection each tick, O(connections): 1.8 ms at
// 100k, ~180 ms at 1M), every connection sits in one slot of a timing wheel,
// the slot of the next moment something may be due for it. A tick visits
// only the connections of its slot: each is checked (checkConn) and put in
// the slot of its next deadline. Activity does not move a connection
// (lastActive is an atomic the check reads), so reading never touches the
// wheel; only events that bring a deadline closer do (a frame started, the
// socket became full, the close frame went out, the connection became
// trimmable), through scheduleBy. A connection is visited about once per
// half idle timeout when nothing happens to it.

// timingWheel holds every connection in the slot of its next check.
// Lock order: wheel.mu is a leaf (taken under Conn.rmu or Conn.wmu).
type timingWheel struct {
	mu    sync.Mutex
	tick  int64 // nanoseconds per slot
	now   int64 // the tick being processed or last processed
	slots [][]*Conn
	spare []*Conn
}

// wheelSlot is where a connection sits in the wheel; the zero value is in
// none. Fields are guarded by timingWheel.mu.
type wheelSlot struct {
	due  int64 // tick at which the connection is checked
	slot int32 // 1 + the slot's index; 0: in none
	pos  int32
}

func newTimingWheel(tick time.Duration, horizon time.Duration, nowNs int64) *timingWheel {
	n := int(horizon/tick) + 2
	return &timingWheel{
		tick:  tick.Nanoseconds(),
		now:   nowNs / tick.Nanoseconds(),
		slots: make([][]*Conn, n),
	}
}

// scheduleBy makes sure c is checked no later than deadlineNs (server
// clock): it moves c to an earlier slot if needed, never to a later one.
func (w *timingWheel) scheduleBy(c *Conn, deadlineNs int64) {
	w.mu.Lock()
	w.placeLocked(c, deadlineNs, false)
	w.mu.Unlock()
}

// placeLocked puts c in the slot of deadlineNs. Unless force, a connection
// already due earlier stays where it is.
func (w *timingWheel) placeLocked(c *Conn, deadlineNs int64, force bool) {
	t := (deadlineNs + w.tick - 1) / w.tick
	if t <= w.now {
		t = w.now + 1
	}
	if max := w.now + int64(len(w.slots)) - 1; t > max {
		t = max // checked early, rescheduled then
	}
	ws := &c.wheel
	if ws.slot != 0 {
		if !force && ws.due <= t {
			return
		}
		w.removeLocked(c)
	}
	i := int32(t % int64(len(w.slots)))
	ws.due, ws.slot, ws.pos = t, i+1, int32(len(w.slots[i]))
	w.slots[i] = append(w.slots[i], c)
}

func (w *timingWheel) removeLocked(c *Conn) {
	ws := &c.wheel
	i := ws.slot - 1
	s := w.slots[i]
	last := len(s) - 1
	moved := s[last]
	s[ws.pos] = moved
	moved.wheel.pos = ws.pos
	s[last] = nil
	w.slots[i] = s[:last]
	ws.slot = 0
}

// remove takes c out of the wheel (it closed).
func (w *timingWheel) remove(c *Conn) {
	w.mu.Lock()
	if c.wheel.slot != 0 {
		w.removeLocked(c)
	}
	w.mu.Unlock()
}

// advance moves the wheel to nowNs and appends to dst the connections due
// by then, taking them out of the wheel. Ticks the sweeper missed (a busy
// machine) are caught up, slot by slot.
func (w *timingWheel) advance(nowNs int64, dst []*Conn) []*Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	target := nowNs / w.tick
	if target-w.now > int64(len(w.slots)) {
		w.now = target - int64(len(w.slots))
	}
	for w.now < target {
		w.now++
		i := w.now % int64(len(w.slots))
		for _, c := range w.slots[i] {
			c.wheel.slot = 0
			dst = append(dst, c)
		}
		clear(w.slots[i])
		w.slots[i] = w.slots[i][:0]
	}
	return dst
}

// sweepInterval is the wheel's tick: a fraction of the shortest timeout,
// within [10 ms, 500 ms].
func (s *Server) sweepInterval() time.Duration {
	d := min(s.cfg.IdleTimeout, s.cfg.HandshakeTimeout, s.cfg.FrameTimeout, 4*s.cfg.CloseTimeout) / 8
	return min(max(d, 10*time.Millisecond), 500*time.Millisecond)
}

// sweep runs the wheel: each tick it checks the connections due.
func (s *Server) sweep() {
	t := time.NewTicker(s.sweepInterval())
	defer t.Stop()
	var due []*Conn
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
		}
		// Memory is sampled on upgrades and scrapes, and here, so that
		// history is trimmed under pressure even when neither happens.
		if s.adm.mem != nil {
			s.adm.mem.overLimit(s.trimHistory, s.restoreHistory)
		}
		due = s.wheel.advance(s.now(), due[:0])
		for i, c := range due {
			s.checkConnSafe(c)
			due[i] = nil
		}
	}
}

// checkConnSafe is checkConn behind a recover: a bug in one connection's
// check must not stop the one goroutine that enforces every timeout.
func (s *Server) checkConnSafe(c *Conn) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic checking a connection", "panic", r, "stack", string(debug.Stack()))
			c.closeSocket()
		}
	}()
	s.checkConn(c)
}

// checkConn enforces c's deadlines as of now and puts c back
// in the wheel at its next one. It pings connections idle for half the idle
// timeout and closes those idle for all of it (1001) or holding a frame or
// message started more than FrameTimeout ago (1002); trims the input of busy
// connections gone quiet; drops sockets that accepted no byte for
// WriteTimeout, that never completed a handshake, or whose peer did not
// answer the close within CloseTimeout. checkAuth closes 1008 those that
// did not authenticate in time or whose token expired, and sends the
// refresh push before that.
func (s *Server) checkConn(c *Conn) {
	s.stats.sweepChecks.Add(1)
	now := s.now()
	cfg := &s.cfg
	idle := cfg.IdleTimeout.Nanoseconds()
	lastActive := c.lastActive.Load()
	next := now + idle/2
	due := func(at int64) bool {
		if at <= now {
			return true
		}
		next = min(next, at)
		return false
	}
	if b := c.blockedSince.Load(); b != 0 && due(b+cfg.WriteTimeout.Nanoseconds()) {
		s.stats.writeTimeouts.Add(1)
		c.closeSocket()
	}
	state := c.state.Load()
	switch state {
	case stateHandshake:
		if due(lastActive + cfg.HandshakeTimeout.Nanoseconds()) {
			s.stats.handshakeTimeouts.Add(1)
			c.closeSocket()
		}
	case stateOpen:
		if c.trimPending.Load() && due(lastActive+trimAfter.Nanoseconds()) {
			c.trimInput()
		}
		if p := c.partialSince.Load(); p != 0 && due(p+cfg.FrameTimeout.Nanoseconds()) {
			c.CloseWith(errFrameTimeout)
		} else if due(lastActive + idle) {
			c.CloseWith(errIdle)
		} else if !c.pingSent.Load() && due(lastActive+idle/2) {
			c.pingSent.Store(true)
			c.Send(pingFrame())
			due(lastActive + idle)
		}
		// The connect deadline and the token's expiry (authn.go).
		s.checkAuth(c, due)
	case stateClosing, stateRejected:
		closing := c.closingSince.Load()
		switch {
		case closing != 0 && due(closing+cfg.CloseTimeout.Nanoseconds()):
			// The peer did not close its side in time.
			s.stats.closeTimeouts.Add(1)
			c.closeSocket()
		case state == stateRejected && due(lastActive+cfg.HandshakeTimeout.Nanoseconds()):
			c.closeSocket()
		case state == stateClosing && due(lastActive+cfg.WriteTimeout.Nanoseconds()+cfg.CloseTimeout.Nanoseconds()):
			// The close frame is still queued behind a backlog the peer
			// drains, but too slowly: a socket that takes nothing meets
			// WriteTimeout (blockedSince, above); one that takes a byte
			// now and then would otherwise hold its queue for ever.
			s.stats.closeTimeouts.Add(1)
			c.closeSocket()
		}
	case stateHTTP, stateClosed:
		return // no longer ours to time
	}
	if c.state.Load() == stateClosed {
		return
	}
	s.wheel.mu.Lock()
	if c.state.Load() != stateClosed {
		s.wheel.placeLocked(c, next, false)
	}
	s.wheel.mu.Unlock()
}
