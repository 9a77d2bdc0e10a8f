package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// coordinate runs a whole flood: it starts the workers, steps them through
// connect, (start, run, stop, drain) and finish, and merges their results.
// ctx ending (SIGINT) stops the run early; the results so far are still
// collected and returned.
func coordinate(ctx context.Context, cfg *Config, stderr io.Writer, prog *progressLine) (*Report, error) {
	t0 := time.Now()
	k, notes, err := resolveProcs(cfg)
	if err != nil {
		return nil, err
	}
	for _, n := range notes {
		fmt.Fprintln(stderr, "flood: note:", n)
	}
	hard, cancelHard := context.WithDeadline(context.Background(), t0.Add(cfg.hardDeadline()))
	defer cancelHard()
	// stopCtx ends on SIGINT or at the hard deadline.
	stopCtx, cancelStop := context.WithCancel(ctx)
	defer cancelStop()
	go func() {
		select {
		case <-hard.Done():
			cancelStop()
		case <-stopCtx.Done():
		}
	}()

	var before usage
	before.user, before.sys, _ = selfUsage()
	children := childrenUsage()
	f := &fleet{state: make([]workerState, k), events: make(chan workerMsg, 256), quit: make(chan struct{})}
	defer close(f.quit)
	links, err := startWorkers(cfg, k, t0, f.events, f.quit, stderr)
	f.links = links
	defer func() {
		for _, l := range f.links {
			l.kill()
		}
	}()
	if err != nil {
		return nil, err
	}

	phase := "connect"
	tick := func() {
		if prog != nil {
			prog.update(time.Since(t0), phase, f.total(), f)
		}
	}
	failed := func(s *workerState) bool { return s.err != "" || s.exited }
	if i := firstFailed(f, failed); i >= 0 {
		return nil, fmt.Errorf("worker %d failed: %s", i, f.state[i].err)
	}

	rep := &Report{Started: t0, Procs: k, Notes: notes}
	// Connect: until every worker has settled all its connections.
	connectBound := cfg.rampTime() + 2*cfg.ConnectTimeout + 10*time.Second
	f.wait(stopCtx, connectBound, func() bool {
		return f.all(func(s *workerState) bool { return s.ready || failed(s) })
	}, tick)
	if i := firstFailed(f, func(s *workerState) bool { return s.err != "" }); i >= 0 {
		return nil, fmt.Errorf("worker %d failed: %s", i, f.state[i].err)
	}
	rep.RampSeconds = time.Since(t0).Seconds()
	rep.RampConnOK = f.total().ConnOK

	if stopCtx.Err() == nil {
		if holdsAfterReady(cfg.Mode) {
			phase = "hold"
			rep.LoadStart = time.Now()
			f.wait(stopCtx, cfg.Duration, nil, tick)
			rep.LoadStop = time.Now()
		} else {
			phase = "run"
			f.broadcast(ctrlMsg{Type: "start"})
			f.wait(stopCtx, 10*time.Second, func() bool {
				return f.all(func(s *workerState) bool { return s.started || failed(s) })
			}, tick)
			f.broadcast(ctrlMsg{Type: "publish"})
			rep.LoadStart = time.Now()
			f.wait(stopCtx, cfg.Duration, nil, tick)
			f.broadcast(ctrlMsg{Type: "stop"})
			rep.LoadStop = time.Now()
			phase = "drain"
			dw := newDrainWatch(cfg)
			f.wait(stopCtx, cfg.Drain, func() bool {
				if !f.all(func(s *workerState) bool { return s.stopped || s.exited }) {
					return false
				}
				return dw.done(f.total())
			}, tick)
		}
	} else {
		f.broadcast(ctrlMsg{Type: "stop"})
	}
	if ctx.Err() != nil {
		rep.Interrupted = true
		rep.Notes = append(rep.Notes, "interrupted: stopped early")
	}
	if hard.Err() != nil {
		rep.DeadlineHit = true
		rep.Notes = append(rep.Notes, "hard deadline reached: stopped early")
	}

	// Finish: every worker closes its connections and sends its result.
	phase = "finish"
	f.broadcast(ctrlMsg{Type: "finish"})
	finishCtx, cancelFinish := context.WithTimeout(context.Background(), 30*time.Second+cfg.ConnectTimeout)
	defer cancelFinish()
	f.wait(finishCtx, time.Hour, func() bool {
		return f.all(func(s *workerState) bool { return s.result != nil || s.exited })
	}, tick)
	// Let worker processes exit on their own (so that their CPU time is
	// accounted), then kill what is left.
	waitCtx, cancelWait := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelWait()
	if k > 1 {
		f.wait(waitCtx, time.Hour, func() bool {
			return f.all(func(s *workerState) bool { return s.exited })
		}, nil)
	}
	if prog != nil {
		prog.clear()
	}
	rep.Finished = time.Now()
	for i := range f.state {
		if f.state[i].result == nil {
			rep.Notes = append(rep.Notes, fmt.Sprintf("worker %d sent no result", i))
		}
	}
	merge(rep, cfg, f, before, children)
	return rep, nil
}

func firstFailed(f *fleet, pred func(*workerState) bool) int {
	f.drainEvents()
	for i := range f.state {
		if pred(&f.state[i]) {
			return i
		}
	}
	return -1
}

// drainWatch decides when the drain after the load phase is complete:
// everything expected has arrived and nothing is pending, or nothing has
// changed for a second (what is missing then is lost).
type drainWatch struct {
	cfg       *Config
	last      Counts
	lastMoved time.Time
}

func newDrainWatch(cfg *Config) *drainWatch {
	return &drainWatch{cfg: cfg}
}

func (d *drainWatch) done(t Counts) bool {
	if d.lastMoved.IsZero() || t.Delivered != d.last.Delivered || t.Pending != d.last.Pending || t.Acked != d.last.Acked {
		d.last = t
		d.lastMoved = time.Now()
	}
	if t.Pending > 0 {
		return time.Since(d.lastMoved) > time.Second && d.cfg.Mode != modeSlow
	}
	switch d.cfg.Mode {
	case modeBroadcast, modeSlow:
		if t.Delivered >= expectedDeliveries(d.cfg, t) && t.Acked+t.PubErr >= t.Sent {
			return true
		}
	case modeEcho:
		return true
	}
	return time.Since(d.lastMoved) > time.Second
}

// expectedDeliveries is how many messages the measured subscribers should
// have received: every publish that was not rejected, to each of them.
func expectedDeliveries(cfg *Config, t Counts) int64 {
	switch cfg.Mode {
	case modeBroadcast, modeSlow, modeChurn:
		return (t.Sent - t.PubErr) * t.Measured
	case modeEcho:
		return t.Sent - t.PubErr
	}
	return 0
}

// resolveProcs picks the number of worker processes: enough that none
// needs more descriptors than the open-file limit allows.
func resolveProcs(cfg *Config) (int, []string, error) {
	var notes []string
	per := fileLimit() - fdReserve
	if per < 1 {
		per = 1
	}
	need := (cfg.Conns + cfg.Publishers + per - 1) / per
	k := cfg.Procs
	if k == 0 {
		k = max(1, need)
	}
	k = min(k, cfg.Conns)
	shares := cfg.split(k)
	if n := shares[0].N + shares[0].Publishers; n > per {
		return 0, nil, fmt.Errorf("%d connections in one process exceed the open-file limit (%d usable): use --procs %d or more", n, per, need+1)
	}
	if ports := localPortCount(); ports > 0 && len(cfg.SourceIPs) <= 1 && cfg.totalConns() > ports {
		notes = append(notes, fmt.Sprintf("%d connections to one address from one source address exceed the %d local ports: use --source-ips", cfg.totalConns(), ports))
	}
	return k, notes, nil
}
