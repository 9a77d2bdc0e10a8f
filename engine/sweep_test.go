package engine

import (
	"fmt"
	"testing"
	"time"
)

func TestTimingWheel(t *testing.T) {
	const tick = int64(10 * time.Millisecond)
	w := newTimingWheel(10*time.Millisecond, time.Second, 0)
	newConn := func() *Conn { return &Conn{} }
	a, b, c := newConn(), newConn(), newConn()
	w.scheduleBy(a, 5*tick)
	w.scheduleBy(b, 50*tick)
	w.scheduleBy(c, 50*tick)
	w.scheduleBy(b, 3*tick)   // earlier: moves
	w.scheduleBy(a, 40*tick)  // later: stays at 5
	w.scheduleBy(c, 500*tick) // later: stays at 50
	w.remove(c)
	w.remove(c) // idempotent

	due := func(now int64) []*Conn { return w.advance(now, nil) }
	if got := due(2 * tick); len(got) != 0 {
		t.Fatalf("at tick 2: %d due, want none", len(got))
	}
	if got := due(3 * tick); len(got) != 1 || got[0] != b {
		t.Fatalf("at tick 3: %v, want b", got)
	}
	if got := due(4 * tick); len(got) != 0 {
		t.Fatalf("at tick 4: %d due", len(got))
	}
	// A sweeper that fell behind catches up: a is due at 5, c was removed.
	if got := due(60 * tick); len(got) != 1 || got[0] != a {
		t.Fatalf("at tick 60: %v, want a", got)
	}
	// A deadline past the horizon is checked at the horizon (and would be
	// rescheduled then), never lost.
	w.scheduleBy(a, 1000*tick)
	var got []*Conn
	for now := int64(61); now < 61+int64(len(w.slots))+1 && len(got) == 0; now++ {
		got = due(now * tick)
	}
	if len(got) != 1 {
		t.Fatal("a deadline past the horizon was never checked")
	}
	// A deadline in the past is due at the next tick.
	now := w.now
	w.scheduleBy(b, 0)
	if got := due((now + 1) * tick); len(got) != 1 || got[0] != b {
		t.Fatalf("past deadline: %v", got)
	}
}

// TestSweeperCostsWhatIsDue: the sweeper visits a connection when one of
// its deadlines may be due, not every tick (it walked every connection
// each tick: O(connections), 176 ms per tick projected at 1M).
func TestSweeperCostsWhatIsDue(t *testing.T) {
	const conns = 200
	// CloseTimeout 100 ms makes the tick 50 ms; idle connections are due
	// only after IdleTimeout/2 = 30 s.
	s := startServer(t, Config{IdleTimeout: time.Minute, CloseTimeout: 100 * time.Millisecond})
	if tick := s.sweepInterval(); tick != 50*time.Millisecond {
		t.Fatalf("tick %v", tick)
	}
	for i := 0; i < conns; i++ {
		c := dialRaw(t, s)
		c.upgrade()
		c.readFrame()
	}
	before := s.stats.sweepChecks.Load()
	start := time.Now()
	// Let at least 40 ticks pass.
	checkFor(t, time.Minute, 50*time.Millisecond, func() error {
		if time.Since(start) < 2*time.Second {
			return fmt.Errorf("waiting")
		}
		return nil
	})
	checks := s.stats.sweepChecks.Load() - before
	// Each connection is due once, at its handshake deadline, and then not
	// before 30 s; a walk would have made 40 ticks x 200 = 8,000 visits.
	if checks > 2*conns {
		t.Fatalf("%d checks of %d idle connections in 40+ ticks: the sweeper walks connections that are not due", checks, conns)
	}
	t.Logf("%d checks of %d idle connections", checks, conns)
}
