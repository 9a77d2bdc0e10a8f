package redisbroker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
)

// chanState is this node's delivery state of one channel of interest. All
// fields but gone belong to the channel's worker.
type chanState struct {
	ch, key string
	w       *worker
	gone    atomic.Bool // Unsubscribed (or a failed Subscribe): drop its tasks

	inited      bool     // baseline set by Subscribe's taskInit
	epoch       string   // epoch of the last publication delivered
	offset      uint64   // offset of the last publication delivered (or baseline)
	pending     [][]byte // messages received before the baseline
	syncPending bool     // a catch-up was asked for before the baseline
}

type taskKind uint8

const (
	taskMsg  taskKind = iota // a pub/sub message
	taskInit                 // Subscribe's baseline
	taskSync                 // catch up from history (after a reconnect)
)

type task struct {
	kind    taskKind
	st      *chanState
	payload []byte
	epoch   string
	offset  uint64
}

// worker delivers the channels hashed to it, one task at a time: a
// channel's publications reach the hub in order and never concurrently.
// Its queue is unbounded so that the pub/sub reader never waits (it would
// stop reading pongs); what it holds is bounded by what Redis sends.
type worker struct {
	b      *Broker
	mu     sync.Mutex
	q      []task
	closed bool
	wake   chan struct{}
}

func (w *worker) push(t task) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.q = append(w.q, t)
	first := len(w.q) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

func (w *worker) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) run() {
	defer w.b.wg.Done()
	var spare []task
	for {
		w.mu.Lock()
		for len(w.q) == 0 && !w.closed {
			w.mu.Unlock()
			<-w.wake
			w.mu.Lock()
		}
		if w.closed {
			w.mu.Unlock()
			return
		}
		ts := w.q
		w.q = spare[:0]
		w.mu.Unlock()
		for i := range ts {
			w.b.process(&ts[i])
		}
		clear(ts)
		spare = ts[:0]
	}
}

func (b *Broker) process(t *task) {
	st := t.st
	if st.gone.Load() {
		return
	}
	switch t.kind {
	case taskMsg:
		if !st.inited {
			st.pending = append(st.pending, t.payload)
			return
		}
		b.handleMsg(st, t.payload)
	case taskInit:
		st.inited, st.epoch, st.offset = true, t.epoch, t.offset
		pending := st.pending
		st.pending = nil
		for _, p := range pending {
			b.handleMsg(st, p)
		}
		if st.syncPending {
			st.syncPending = false
			b.catchUp(st)
		}
	case taskSync:
		if !st.inited {
			st.syncPending = true
			return
		}
		b.catchUp(st)
	}
}

// handleMsg delivers one pub/sub message: in sequence it goes to the hub;
// a duplicate is dropped; after a gap (or in another epoch) the channel is
// caught up from history first.
func (b *Broker) handleMsg(st *chanState, payload []byte) {
	if len(payload) > 0 && (payload[0] == 'j' || payload[0] == 'l') {
		b.handlePresenceMsg(st, payload)
		return
	}
	off, epoch, blob, err := parseMessage(payload)
	if err != nil {
		b.log.Error("redisbroker: malformed message", "channel", st.ch, "err", err)
		return
	}
	if epoch != st.epoch || off > st.offset+1 {
		if err := b.catchUp(st); err != nil {
			// History unreachable: deliver what came rather than stall;
			// whatever was skipped is lost to this node's subscribers.
			if epoch != st.epoch {
				b.log.Warn("redisbroker: epoch changed, history unreachable", "channel", st.ch, "from", st.epoch, "to", epoch, "err", err)
				st.epoch, st.offset = epoch, off-1
			} else if off > st.offset+1 {
				b.gap(st, off-st.offset-1, err)
				st.offset = off - 1
			}
		}
	}
	switch {
	case epoch != st.epoch:
		// From an epoch the history has since left behind: stale.
		b.duplicates.Add(1)
		return
	case off <= st.offset:
		b.duplicates.Add(1)
		return
	case off > st.offset+1:
		// catchUp found the history short of it (it was evicted).
		b.gap(st, off-st.offset-1, nil)
	}
	p := &codec.Publication{Channel: st.ch, Epoch: epoch, Offset: off}
	if err := decodeBlob(blob, p); err != nil {
		b.log.Error("redisbroker: malformed publication", "channel", st.ch, "offset", off, "err", err)
		st.offset = off
		return
	}
	st.offset = off
	b.delivered.Add(1)
	b.handler.HandlePublication(st.ch, p)
}

func (b *Broker) gap(st *chanState, n uint64, err error) {
	b.lost.Add(n)
	b.log.Warn("redisbroker: publications lost to this node (history no longer holds them)", "channel", st.ch, "after", st.offset, "missing", n, "err", err)
}

// catchUp delivers what the channel's history holds after st's position
// (everything held when the epoch changed), so that st is at the newest
// offset stored. A history that no longer reaches back to st's position is
// a gap: it is counted and logged, and delivery goes on from what is held.
func (b *Broker) catchUp(st *chanState) error {
	var (
		pubs []*codec.Publication
		pos  codec.StreamPosition
		err  error
	)
	for try := 0; try < 3; try++ {
		if st.gone.Load() {
			return nil
		}
		pubs, pos, err = b.history(context.Background(), st.ch, strconv.FormatUint(st.offset, 10), -1, st.epoch)
		if err == nil || errors.Is(err, hub.ErrClosed) || b.closed.Load() {
			break
		}
		time.Sleep(50 * time.Millisecond << try)
	}
	if err != nil {
		return err
	}
	if pos.Epoch == "" {
		return nil // the channel is gone entirely; its next publication starts an epoch
	}
	if pos.Epoch == st.epoch && pos.Offset < st.offset {
		// Redis lost acknowledged publications (it restarted without
		// them: appendfsync everysec) and would reuse their offsets.
		b.regressions.Add(1)
		b.log.Error("redisbroker: Redis lost acknowledged publications (offset went back); starting a new epoch (run Redis with appendfsync always)",
			"channel", st.ch, "epoch", st.epoch, "delivered", st.offset, "redis", pos.Offset)
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		res, err := resetScript.Run(ctx, b.rdb, []string{b.metaKey(st.ch), b.streamKey(st.ch)}, st.epoch, st.offset, newEpoch(), b.metaMS).Slice()
		cancel()
		if err != nil {
			return cmdErr(context.Background(), err)
		}
		e, o, ok := parsePosition(res)
		if !ok {
			return fmt.Errorf("redisbroker: reset: unexpected reply %v", res)
		}
		if e == st.epoch {
			return nil // not reset after all: leave it to the next publication
		}
		// The new epoch's publications so far (none when we reset it).
		return b.catchUpFrom(st, e, o)
	}
	if pos.Epoch != st.epoch {
		b.log.Warn("redisbroker: channel history lost, new epoch", "channel", st.ch, "from", st.epoch, "to", pos.Epoch)
		st.epoch, st.offset = pos.Epoch, 0
	}
	for _, p := range pubs {
		if p.Offset <= st.offset {
			continue
		}
		if p.Offset > st.offset+1 {
			b.gap(st, p.Offset-st.offset-1, nil)
		}
		st.offset = p.Offset
		b.caughtUp.Add(1)
		b.delivered.Add(1)
		if st.gone.Load() {
			return nil
		}
		b.handler.HandlePublication(st.ch, p)
	}
	if pos.Offset > st.offset {
		b.gap(st, pos.Offset-st.offset, nil)
		st.offset = pos.Offset
	}
	return nil
}

// catchUpFrom moves st to epoch e (at offset 0) and catches it up, unless
// e is empty or e's newest offset is 0 (nothing to deliver).
func (b *Broker) catchUpFrom(st *chanState, e string, newest uint64) error {
	if e == "" {
		return nil
	}
	st.epoch, st.offset = e, 0
	if newest == 0 {
		return nil
	}
	return b.catchUp(st)
}

// connLoop keeps one pub/sub link up: it dials, subscribes every channel
// of interest, and serves the link until it ends, then starts over after a
// backoff (50 ms doubling to 1 s).
func (b *Broker) connLoop() {
	defer b.wg.Done()
	backoff := 50 * time.Millisecond
	first := true
	for !b.closed.Load() {
		wasUp, err := b.connectAndServe(&first)
		if b.closed.Load() {
			return
		}
		b.setDown(err)
		if wasUp {
			backoff = 50 * time.Millisecond
		}
		select {
		case <-b.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (b *Broker) setDown(err error) {
	if err == nil {
		err = errors.New("connection lost")
	}
	b.lastErr.Store(&err)
	if b.up.Swap(false) {
		b.log.Warn("redisbroker: Redis unreachable; publishes fail with \"broker unavailable\" until it is back", "addr", b.opts.Addr, "err", err)
	}
}

// connectAndServe makes one link and serves it until it ends; up reports
// whether it came up.
func (b *Broker) connectAndServe(first *bool) (up bool, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-b.stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	defer cancel()
	l, rd, err := b.dialLink(ctx)
	if err != nil {
		return false, err
	}
	b.mu.Lock()
	if b.closed.Load() {
		b.mu.Unlock()
		l.kill(hub.ErrClosed)
		return false, hub.ErrClosed
	}
	keys := make([]string, 0, len(b.interest))
	for k := range b.interest {
		keys = append(keys, k)
	}
	b.link = l
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		if b.link == l {
			b.link = nil
		}
		b.mu.Unlock()
	}()

	// Subscribe everything, then a PING whose pong says it is all in place.
	readyTok, readyCh := l.expect()
	go func() {
		for len(keys) > 0 {
			n := min(len(keys), 512)
			if l.write(10*b.timeout, append([]string{"SUBSCRIBE"}, keys[:n]...)) != nil {
				return
			}
			keys = keys[n:]
		}
		_ = l.write(b.timeout, []string{"PING", readyTok})
	}()
	go b.pinger(l)
	readDone := make(chan error, 1)
	go func() { readDone <- b.read(l, rd) }()
	select {
	case err := <-readyCh:
		if err != nil {
			l.kill(err)
			return false, <-readDone
		}
	case err := <-readDone:
		return false, err
	}
	b.up.Store(true)
	if *first {
		*first = false
		b.log.Info("redisbroker: connected", "addr", b.opts.Addr)
	} else {
		b.reconnects.Add(1)
		b.log.Info("redisbroker: reconnected; catching up channels from history", "addr", b.opts.Addr)
	}
	b.once.Do(func() { close(b.ready) })
	// Whatever was published while no link was subscribed: every channel
	// catches up from its history (an inexpensive no-op for a channel
	// that missed nothing).
	b.mu.RLock()
	for _, st := range b.interest {
		st.w.push(task{kind: taskSync, st: st})
	}
	b.mu.RUnlock()
	return true, <-readDone
}

// pinger pings the link so that a silent connection is found dead.
func (b *Broker) pinger(l *link) {
	t := time.NewTicker(b.pingIvl)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			return
		case <-t.C:
			if l.write(b.timeout, []string{"PING", "hb"}) != nil {
				return
			}
		}
	}
}

// read serves the link's replies until it ends.
func (b *Broker) read(l *link, rd *bufio.Reader) error {
	for {
		_ = l.conn.SetReadDeadline(time.Now().Add(3*b.pingIvl + b.timeout))
		v, err := readValue(rd)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = fmt.Errorf("pub/sub connection silent: %w", err)
			}
			l.kill(err)
			return err
		}
		switch v := v.(type) {
		case []any:
			if len(v) == 0 {
				continue
			}
			kind, _ := v[0].([]byte)
			switch string(kind) {
			case "message":
				if len(v) != 3 {
					continue
				}
				key, _ := v[1].([]byte)
				payload, _ := v[2].([]byte)
				b.mu.RLock()
				st := b.interest[string(key)]
				b.mu.RUnlock()
				if st != nil {
					st.w.push(task{kind: taskMsg, st: st, payload: payload})
				}
			case "pong":
				if len(v) == 2 {
					tok, _ := v[1].([]byte)
					l.pong(string(tok))
				}
			}
		case []byte: // PING's reply outside subscribed mode
			l.pong(string(v))
		case respError:
			err := fmt.Errorf("redis: %s", string(v))
			l.kill(err)
			return err
		}
	}
}
