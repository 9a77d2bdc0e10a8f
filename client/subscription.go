package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Subscription is a Client's subscription to one channel. It delivers the
// channel's publications in offset order, without duplicates, across
// reconnects; see SubscribeOptions for where.
type Subscription struct {
	cl      *Client
	channel string
	opts    SubscribeOptions

	pubC   chan Publication
	presC  chan PresenceEvent
	gapC   chan *GapError
	notify chan struct{} // wakes the dispatcher, capacity 1
	stop   chan struct{} // closed to make the dispatcher drop its queue and exit

	ready    chan struct{} // closed at the outcome of the first subscribe
	readyErr error

	mu       sync.Mutex
	queue    []event
	draining bool // no more events: the dispatcher exits when the queue is empty
	ended    bool // removed from the client; no more subscribe
	stopped  bool // stop closed
	err      error
	cn       *conn   // connection the subscription is (being) made on
	pending  bool    // subscribe sent on cn, reply not applied yet
	early    []event // pushes that came on cn before the reply
	hasPos   bool
	pos      codec.StreamPosition // last delivered position
	retries  int                  // consecutive retryable resubscribe errors
	isFirst  bool                 // the first subscribe is not answered yet
	sentRec  bool                 // whether the pending subscribe had recover
}

type eventKind uint8

const (
	evPub eventKind = iota + 1
	evPresence
	evGap
)

type event struct {
	kind eventKind
	pub  Publication
	pres PresenceEvent
	gap  *GapError
}

// Subscribe subscribes to channel and returns once the server has confirmed
// it (waiting for a connection while disconnected). With opts.Recover it
// first delivers what the channel's history holds after that position. It
// fails with an *Error when the server refuses (ErrBadRequest for a bad
// channel name, ErrForbidden, ...), and with ErrAlreadySubscribed when the
// client already has a subscription to channel. When ctx ends first, the
// subscription is abandoned.
func (cl *Client) Subscribe(ctx context.Context, channel string, opts SubscribeOptions) (*Subscription, error) {
	if opts.Buffer <= 0 {
		opts.Buffer = DefaultBuffer
	}
	s := &Subscription{
		cl:      cl,
		channel: channel,
		opts:    opts,
		gapC:    make(chan *GapError, 1),
		notify:  make(chan struct{}, 1),
		stop:    make(chan struct{}),
		ready:   make(chan struct{}),
		isFirst: true,
	}
	if opts.OnPublication == nil {
		s.pubC = make(chan Publication, opts.Buffer)
	}
	if opts.Presence && opts.OnPresence == nil {
		s.presC = make(chan PresenceEvent, opts.Buffer)
	}
	if opts.Recover != nil {
		s.hasPos = true
		s.pos = *opts.Recover
	}

	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return nil, cl.closedError()
	}
	if _, ok := cl.subs[channel]; ok {
		cl.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrAlreadySubscribed, channel)
	}
	cl.subs[channel] = s
	cn := cl.conn
	if cn != nil {
		s.attach(cn)
	}
	cl.mu.Unlock()

	go s.dispatch()
	if cn != nil {
		s.subscribeOn(cn)
	}
	select {
	case <-s.ready:
		if s.readyErr != nil {
			return nil, s.readyErr
		}
		return s, nil
	case <-ctx.Done():
		s.abandon()
		return nil, ctx.Err()
	}
}

// Channel is the subscription's channel.
func (s *Subscription) Channel() string { return s.channel }

// C delivers the publications, in offset order. It is closed when the
// subscription ends (see Err). It is nil when OnPublication is set.
func (s *Subscription) C() <-chan Publication { return s.pubC }

// Presence delivers the channel's join and leave events when the subscription
// was made with Presence: true (and no OnPresence); otherwise it is nil. It
// is closed when the subscription ends. Delivery of publications waits while
// it is full: read it too.
func (s *Subscription) Presence() <-chan PresenceEvent { return s.presC }

// Gaps delivers a *GapError when publications could not be recovered (unless
// OnGap is set). It never holds up publications: gaps that the application
// has not read yet are merged into one. It is closed when the subscription
// ends.
func (s *Subscription) Gaps() <-chan *GapError { return s.gapC }

// Position is the position of the last publication delivered (queued for C
// or OnPublication), from which the subscription recovers on reconnect.
func (s *Subscription) Position() codec.StreamPosition {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pos
}

// Err says why the subscription ended once C is closed: nil after
// Unsubscribe, ErrClosed after the Client closed, or the *Error with which
// the server refused to resubscribe (rate_limited, internal and
// unavailable refusals are retried with backoff instead). It is nil while
// the subscription is active.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription: no more events are delivered and its
// channels close (events already in them can still be read). It waits for
// the server's confirmation while connected (bounded by ctx) and returns its
// error, if any; the subscription ends either way. It is idempotent.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	cl := s.cl
	cl.mu.Lock()
	if cl.subs[s.channel] == s {
		delete(cl.subs, s.channel)
	}
	cl.mu.Unlock()

	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil
	}
	cn := s.cn
	s.mu.Unlock()
	s.end(nil, true)
	if cn == nil || cn.isDone() {
		return nil // no connection: the server has forgotten it
	}
	_, err := cl.doOn(ctx, cn, &codec.Command{Op: codec.OpUnsubscribe, Channel: []byte(s.channel)})
	if errors.Is(err, ErrConnectionLost) || errors.Is(err, errNotSent) {
		return nil
	}
	return err
}

// abandon undoes a Subscribe whose context ended: the subscription is
// removed, and unsubscribed if the subscribe may have been sent.
func (s *Subscription) abandon() {
	cl := s.cl
	cl.mu.Lock()
	if cl.subs[s.channel] == s {
		delete(cl.subs, s.channel)
	}
	cl.mu.Unlock()
	s.mu.Lock()
	cn := s.cn
	s.mu.Unlock()
	s.end(context.Canceled, true)
	if cn != nil && !cn.isDone() {
		// Sent after the subscribe on the same connection, so the server
		// applies it after; nobody waits for the reply.
		cn.send(&codec.Command{Op: codec.OpUnsubscribe, Channel: []byte(s.channel)}, nil)
	}
}

// end ends the subscription with err (already removed from the client).
// discard drops undelivered events; otherwise they are delivered first.
func (s *Subscription) end(err error, discard bool) {
	s.mu.Lock()
	if !s.ended {
		s.ended = true
		s.err = err
		s.cn = nil
		s.early = nil
		s.draining = true
		s.signalLocked()
		s.resolveLocked(err)
	}
	stop := discard && !s.stopped
	s.stopped = s.stopped || discard
	s.mu.Unlock()
	if stop {
		close(s.stop)
	}
}

// resolveLocked settles the first subscribe's outcome, once.
func (s *Subscription) resolveLocked(err error) {
	if !s.isFirst {
		return
	}
	s.isFirst = false
	if err == nil {
		close(s.ready)
		return
	}
	s.readyErr = err
	close(s.ready)
}

// attach records that the subscription is to be made on cn; the caller
// holds cl.mu and calls subscribeOn(cn) after releasing it.
func (s *Subscription) attach(cn *conn) {
	s.mu.Lock()
	if !s.ended {
		s.cn = cn
		s.pending = true
		s.early = nil
	}
	s.mu.Unlock()
}

// subscribeOn sends the subscribe command on cn, with recover from the last
// delivered position when there is one. The reply is applied on cn's reader.
func (s *Subscription) subscribeOn(cn *conn) {
	s.mu.Lock()
	if s.ended || s.cn != cn {
		s.mu.Unlock()
		return
	}
	cmd := codec.Command{Op: codec.OpSubscribe, Channel: []byte(s.channel), Presence: s.opts.Presence}
	s.sentRec = s.hasPos
	if s.hasPos {
		cmd.HasRecover = true
		cmd.RecoverEpoch = []byte(s.pos.Epoch)
		cmd.RecoverOffset = s.pos.Offset
	}
	s.mu.Unlock()
	// errNotSent: cn is gone; the next connection resubscribes.
	cn.send(&cmd, &call{onReply: func(m *codec.ServerMessage) { s.onReply(cn, m) }})
}

// onReply applies a subscribe reply (on cn's reader goroutine): recovered
// publications, the gap if some are missing, then the pushes that came
// before the reply.
func (s *Subscription) onReply(cn *conn, m *codec.ServerMessage) {
	s.mu.Lock()
	if s.ended || s.cn != cn || !s.pending {
		s.mu.Unlock()
		return
	}
	if m.ErrorCode != "" {
		err := replyError(m)
		// Transient refusals are retried: unavailable is what a cluster
		// node answers while it cannot reach its broker (a node that just
		// took over a dead one's clients may be such a node).
		retry := !s.isFirst && (m.ErrorCode == codec.CodeRateLimited || m.ErrorCode == codec.CodeInternal ||
			m.ErrorCode == codec.CodeUnavailable)
		if retry {
			delay := s.cl.bo.delay(s.retries+1, nil)
			s.retries++
			s.mu.Unlock()
			s.cl.log.Warn("fanout: resubscribe refused, retrying", "channel", s.channel, "err", err, "in", delay)
			time.AfterFunc(delay, func() { s.subscribeOn(cn) })
			return
		}
		s.mu.Unlock()
		s.cl.log.Warn("fanout: subscribe refused", "channel", s.channel, "err", err)
		s.cl.mu.Lock()
		if s.cl.subs[s.channel] == s {
			delete(s.cl.subs, s.channel)
		}
		s.cl.mu.Unlock()
		s.end(err, false)
		return
	}
	s.retries = 0
	s.pending = false
	pubs := m.Publications
	switch {
	case !s.sentRec:
		s.pos = codec.StreamPosition{Epoch: m.Epoch, Offset: m.Offset}
		s.hasPos = true
	case !m.Recovered:
		// Continue after the first publication still held, or after the
		// newest when none is.
		next := m.Offset
		if len(pubs) > 0 && pubs[0].Offset > 0 {
			next = pubs[0].Offset - 1
		}
		g := &GapError{Channel: s.channel, From: s.pos, To: codec.StreamPosition{Epoch: m.Epoch, Offset: next}}
		if m.Epoch == s.pos.Epoch && next > s.pos.Offset {
			g.Known = true
			g.Missing = next - s.pos.Offset
		}
		s.enqueueLocked(event{kind: evGap, gap: g})
		if m.Epoch != s.pos.Epoch || next > s.pos.Offset {
			s.pos = g.To
		}
	}
	for i := range pubs {
		p := publication(cn.enc, &pubs[i])
		if p.Channel == "" {
			p.Channel = s.channel
		}
		s.deliverLocked(p)
	}
	if m.Epoch == s.pos.Epoch && m.Offset > s.pos.Offset {
		s.pos.Offset = m.Offset
	}
	early := s.early
	s.early = nil
	for _, ev := range early {
		s.pushLocked(ev)
	}
	s.resolveLocked(nil)
	s.mu.Unlock()
}

// onPush handles a pub, join or leave push that came on cn.
func (s *Subscription) onPush(cn *conn, ev event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || s.cn != cn {
		return
	}
	if s.pending {
		s.early = append(s.early, ev)
		return
	}
	s.pushLocked(ev)
}

func (s *Subscription) pushLocked(ev event) {
	switch ev.kind {
	case evPub:
		s.deliverLocked(ev.pub)
	case evPresence:
		if s.opts.Presence {
			s.enqueueLocked(ev)
		}
	}
}

// deliverLocked queues p unless it was delivered already, reporting a gap
// when offsets were skipped or the epoch changed.
func (s *Subscription) deliverLocked(p Publication) {
	if p.Epoch != s.pos.Epoch {
		if s.hasPos {
			to := codec.StreamPosition{Epoch: p.Epoch}
			if p.Offset > 0 {
				to.Offset = p.Offset - 1
			}
			s.enqueueLocked(event{kind: evGap, gap: &GapError{Channel: s.channel, From: s.pos, To: to}})
		}
		s.pos = p.Position()
		s.hasPos = true
		s.enqueueLocked(event{kind: evPub, pub: p})
		return
	}
	if p.Offset <= s.pos.Offset {
		return // duplicate
	}
	if p.Offset > s.pos.Offset+1 {
		s.enqueueLocked(event{kind: evGap, gap: &GapError{
			Channel: s.channel,
			From:    s.pos,
			To:      codec.StreamPosition{Epoch: p.Epoch, Offset: p.Offset - 1},
			Missing: p.Offset - s.pos.Offset - 1,
			Known:   true,
		}})
	}
	s.pos.Offset = p.Offset
	s.enqueueLocked(event{kind: evPub, pub: p})
}

func (s *Subscription) enqueueLocked(ev event) {
	if s.draining {
		return
	}
	s.queue = append(s.queue, ev)
	s.signalLocked()
}

func (s *Subscription) signalLocked() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// dispatch is the subscription's delivery goroutine.
func (s *Subscription) dispatch() {
	defer func() {
		if s.pubC != nil {
			close(s.pubC)
		}
		if s.presC != nil {
			close(s.presC)
		}
		close(s.gapC)
	}()
	var batch []event
	for {
		s.mu.Lock()
		for len(s.queue) == 0 {
			if s.draining {
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			select {
			case <-s.notify:
			case <-s.stop:
				return
			}
			s.mu.Lock()
		}
		batch, s.queue = s.queue, batch[:0]
		s.mu.Unlock()
		for i := range batch {
			if !s.deliver(&batch[i]) {
				return
			}
			batch[i] = event{}
		}
	}
}

// deliver hands one event to the application; false when stopped.
func (s *Subscription) deliver(ev *event) bool {
	select {
	case <-s.stop:
		return false
	default:
	}
	switch ev.kind {
	case evPub:
		if f := s.opts.OnPublication; f != nil {
			f(ev.pub)
			return true
		}
		select {
		case s.pubC <- ev.pub:
		case <-s.stop:
			return false
		}
	case evPresence:
		if f := s.opts.OnPresence; f != nil {
			f(ev.pres)
			return true
		}
		select {
		case s.presC <- ev.pres:
		case <-s.stop:
			return false
		}
	case evGap:
		s.cl.log.Warn("fanout: publications lost", "err", ev.gap)
		if f := s.opts.OnGap; f != nil {
			f(ev.gap)
			return true
		}
		// Never blocks: this goroutine is the only sender, so after taking
		// back an unread gap (to merge it) there is room.
		g := ev.gap
		select {
		case old := <-s.gapC:
			g = old.merge(g)
		default:
		}
		s.gapC <- g
	}
	return true
}
