package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Client is a connection to a fanout server that reconnects by itself. Its
// methods are safe for concurrent use.
type Client struct {
	urls   []string     // the url given to Dial, then Options.URLs
	cur    atomic.Int64 // index in urls of the server connected to, or to try next
	opts   Options
	log    *slog.Logger
	bo     backoff
	nextID atomic.Uint64

	ctx    context.Context // cancelled by Close: aborts connection attempts
	cancel context.CancelFunc

	mu      sync.Mutex
	conn    *conn         // the live connection, nil while there is none
	connCh  chan struct{} // closed when conn becomes non-nil
	subs    map[string]*Subscription
	info    codec.ClientInfo
	state   State
	closed  bool
	reason  error         // why the client closed, nil after Close
	closeCh chan struct{} // closed when closed becomes true

	loopDone chan struct{} // closed when the reconnect loop has returned

	notifyMu  sync.Mutex
	notifyQ   []StateChange
	notifying bool
}

// Dial connects to the server at url ("ws://host:port/ws" or "wss://...") and
// returns once the connection is up and the server's connected push has
// arrived. A failed first attempt is returned as is (a *HandshakeError when
// the server refused the upgrade); later losses are handled by reconnecting.
// ctx bounds only this first attempt. With Options.URLs, Dial tries url and
// then each of them once, in order, until one connects (a handshake refused
// for good, such as HTTP 401, ends it at once); when none does, the error
// joins every attempt's.
func Dial(ctx context.Context, url string, opts Options) (*Client, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	cl := &Client{
		urls:     append([]string{url}, o.URLs...),
		opts:     o,
		log:      o.Logger,
		bo:       backoff{min: o.Reconnect.MinBackoff, max: o.Reconnect.MaxBackoff},
		connCh:   make(chan struct{}),
		subs:     make(map[string]*Subscription),
		closeCh:  make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	cl.ctx, cl.cancel = context.WithCancel(context.Background())
	var (
		cn   *conn
		errs []error
	)
	for i, u := range cl.urls {
		cl.cur.Store(int64(i))
		if cn, err = cl.connect(ctx, u); err == nil {
			break
		}
		errs = append(errs, err)
		var he *HandshakeError
		if ctx.Err() != nil || errors.As(err, &he) && he.permanent() {
			break
		}
	}
	if err != nil {
		cl.cancel()
		if len(errs) > 1 {
			err = errors.Join(errs...)
		}
		return nil, err
	}
	cl.activate(cn)
	go cl.loop(cn)
	return cl, nil
}

// URL is the URL of the server the client is connected to (while
// disconnected, the one it tries next): the url given to Dial or one of
// Options.URLs.
func (cl *Client) URL() string { return cl.urls[cl.cur.Load()] }

// ID is the client id the server gave the current connection (the last one
// while disconnected). It changes on reconnect.
func (cl *Client) ID() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.info.Client
}

// User is the user the server authenticated the current connection as (empty
// when anonymous).
func (cl *Client) User() string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.info.User
}

// State is the client's current state.
func (cl *Client) State() State {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.state
}

// Encoding is the wire encoding of the client's connections.
func (cl *Client) Encoding() codec.Encoding { return cl.opts.Encoding }

// Close closes the client: it sends close 1000 on the current connection,
// stops reconnecting, ends every Subscription (their channels close, Err
// reports ErrClosed) and makes pending and later calls fail with ErrClosed.
// It is idempotent and always returns nil.
func (cl *Client) Close() error {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		<-cl.loopDone
		return nil
	}
	cl.closed = true
	from := cl.state
	cl.state = StateClosed // with closed: see shutdown
	close(cl.closeCh)
	cl.cancel()
	cn := cl.conn
	subs := cl.takeSubsLocked()
	cl.mu.Unlock()

	for _, s := range subs {
		s.end(ErrClosed, true)
	}
	if cn != nil {
		cn.shutdown(CloseNormal, "")
	}
	<-cl.loopDone
	if from != StateClosed {
		cl.queueStateChange(StateChange{From: from, To: StateClosed})
	}
	return nil
}

// takeSubsLocked removes every subscription; cl.mu must be held.
func (cl *Client) takeSubsLocked() []*Subscription {
	subs := make([]*Subscription, 0, len(cl.subs))
	for _, s := range cl.subs {
		subs = append(subs, s)
	}
	clear(cl.subs)
	return subs
}

// closedError is what calls on a closed client return.
func (cl *Client) closedError() error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.reason == nil {
		return ErrClosed
	}
	return fmt.Errorf("%w: %w", ErrClosed, cl.reason)
}

// lostError is what a call pending on a connection that ended with err gets.
func (cl *Client) lostError(err error) error {
	cl.mu.Lock()
	closed := cl.closed
	cl.mu.Unlock()
	if closed {
		return cl.closedError()
	}
	return fmt.Errorf("%w: %w", ErrConnectionLost, err)
}

// activate makes cn the live connection: starts its reader and pinger and
// resubscribes every subscription on it. It reports false (and closes cn)
// when the client was closed meanwhile.
func (cl *Client) activate(cn *conn) bool {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		cn.nc.Close()
		return false
	}
	cl.conn = cn
	cl.info = cn.info
	close(cl.connCh)
	subs := make([]*Subscription, 0, len(cl.subs))
	for _, s := range cl.subs {
		s.attach(cn)
		subs = append(subs, s)
	}
	cl.mu.Unlock()

	go cn.readLoop()
	if cl.opts.PingInterval > 0 {
		go cl.pingLoop(cn)
	}
	for _, s := range subs {
		s.subscribeOn(cn)
	}
	cl.log.Info("fanout: connected", "url", cl.URL(), "client", cn.info.Client, "user", cn.info.User, "resubscribed", len(subs))
	cl.setState(StateConnected, nil, 0)
	return true
}

// connLost is called by a connection's reader when it has ended.
func (cl *Client) connLost(cn *conn) {
	cl.mu.Lock()
	if cl.conn == cn {
		cl.conn = nil
		cl.connCh = make(chan struct{})
	}
	cl.mu.Unlock()
}

// loop waits for the connection to end and reconnects, until Close.
func (cl *Client) loop(cn *conn) {
	defer close(cl.loopDone)
	attempt := 0
	for {
		select {
		case <-cn.done:
		case <-cl.closeCh:
			return
		}
		cause := cn.err
		if time.Since(cn.started) >= stableAfter {
			attempt = 0
		}
		cl.log.Info("fanout: disconnected", "url", cl.URL(), "err", cause)
		if cl.opts.Reconnect.Disabled {
			cl.shutdown(cause)
			return
		}
		for {
			delay := cl.bo.delay(attempt, cause)
			attempt++
			if cl.isClosed() {
				return
			}
			cl.setState(StateDisconnected, cause, delay)
			cl.log.Debug("fanout: reconnecting", "url", cl.URL(), "in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-cl.closeCh:
				t.Stop()
				return
			}
			cl.setState(StateConnecting, nil, 0)
			next, err := cl.connect(cl.ctx, cl.URL())
			if err == nil {
				if !cl.activate(next) {
					return
				}
				cn = next
				break
			}
			if cl.isClosed() {
				return
			}
			cl.log.Info("fanout: connection attempt failed", "url", cl.URL(), "err", err)
			var he *HandshakeError
			if errors.As(err, &he) && he.permanent() {
				cl.shutdown(err)
				return
			}
			// The next attempt goes to the next server (Options.URLs).
			cl.cur.Store((cl.cur.Load() + 1) % int64(len(cl.urls)))
			cause = err
		}
	}
}

func (cl *Client) isClosed() bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.closed
}

// shutdown closes the client from the loop because of reason.
func (cl *Client) shutdown(reason error) {
	cl.mu.Lock()
	if cl.closed {
		cl.mu.Unlock()
		return
	}
	cl.closed = true
	cl.reason = reason
	// The state changes with closed, under the same lock: whoever sees a
	// call fail with ErrClosed or a subscription end sees StateClosed.
	from := cl.state
	cl.state = StateClosed
	close(cl.closeCh)
	cl.cancel()
	subs := cl.takeSubsLocked()
	cl.mu.Unlock()
	if from != StateClosed {
		cl.queueStateChange(StateChange{From: from, To: StateClosed, Err: reason})
	}
	err := cl.closedError()
	for _, s := range subs {
		s.end(err, false)
	}
	cl.log.Info("fanout: client closed", "url", cl.URL(), "err", reason)
}

// setState records a state change and queues it for OnStateChange.
func (cl *Client) setState(to State, err error, delay time.Duration) {
	cl.mu.Lock()
	from := cl.state
	if from == StateClosed || (from == to && err == nil) {
		cl.mu.Unlock()
		return
	}
	cl.state = to
	cl.mu.Unlock()
	cl.queueStateChange(StateChange{From: from, To: to, Err: err, Delay: delay})
}

// queueStateChange queues ev for OnStateChange.
func (cl *Client) queueStateChange(ev StateChange) {
	if cl.opts.OnStateChange == nil {
		return
	}
	cl.notifyMu.Lock()
	cl.notifyQ = append(cl.notifyQ, ev)
	if !cl.notifying {
		cl.notifying = true
		go cl.notify()
	}
	cl.notifyMu.Unlock()
}

// notify delivers queued state changes in order, then exits.
func (cl *Client) notify() {
	for {
		cl.notifyMu.Lock()
		if len(cl.notifyQ) == 0 {
			cl.notifying = false
			cl.notifyMu.Unlock()
			return
		}
		ev := cl.notifyQ[0]
		cl.notifyQ = cl.notifyQ[1:]
		cl.notifyMu.Unlock()
		cl.opts.OnStateChange(ev)
	}
}

// pingLoop sends the ping command every PingInterval; a reply that does not
// come within PingTimeout kills the connection.
func (cl *Client) pingLoop(cn *conn) {
	t := time.NewTimer(cl.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-cn.done:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), cl.opts.PingTimeout)
		_, err := cl.doOn(ctx, cn, &codec.Command{Op: codec.OpPing})
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			cl.log.Warn("fanout: ping timeout", "url", cl.URL(), "timeout", cl.opts.PingTimeout)
			cn.kill(&CloseError{Code: CloseAbnormal, Err: fmt.Errorf("no ping reply within %v", cl.opts.PingTimeout)})
			return
		}
		t.Reset(cl.opts.PingInterval)
	}
}

// waitConn returns the live connection, waiting for one while disconnected.
func (cl *Client) waitConn(ctx context.Context) (*conn, error) {
	for {
		cl.mu.Lock()
		if cl.closed {
			cl.mu.Unlock()
			return nil, cl.closedError()
		}
		cn, ch := cl.conn, cl.connCh
		cl.mu.Unlock()
		if cn != nil {
			return cn, nil
		}
		select {
		case <-ch:
		case <-cl.closeCh:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// doOn sends cmd on cn and waits for its reply. An error reply is returned as
// an *Error; a lost connection as ErrConnectionLost (wrapped).
func (cl *Client) doOn(ctx context.Context, cn *conn, cmd *codec.Command) (*codec.ServerMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := &call{done: make(chan struct{})}
	if err := cn.send(cmd, c); err != nil {
		return nil, err
	}
	select {
	case <-c.done:
		if c.err != nil {
			return nil, c.err
		}
		if err := replyError(c.msg); err != nil {
			return nil, err
		}
		return c.msg, nil
	case <-ctx.Done():
		cn.forget(cmd.ID)
		return nil, ctx.Err()
	}
}

// do sends cmd on the live connection (waiting for one) and returns its
// reply. When the connection is lost before the reply, an idempotent command
// is sent again on the next connection; others fail with ErrConnectionLost.
func (cl *Client) do(ctx context.Context, cmd *codec.Command, idempotent bool) (*codec.ServerMessage, error) {
	for {
		cn, err := cl.waitConn(ctx)
		if err != nil {
			return nil, err
		}
		m, err := cl.doOn(ctx, cn, cmd)
		switch {
		case errors.Is(err, errNotSent):
			// Not written: safe to send again once the client has seen the
			// connection end.
			select {
			case <-cn.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		case idempotent && errors.Is(err, ErrConnectionLost):
			continue
		}
		return m, err
	}
}

// Publish publishes data to channel and returns the publication's offset once
// the server has acknowledged it. data is marshalled with encoding/json
// (Encoding JSON) or msgpack v5 (Encoding Msgpack, honouring `json` struct
// tags). A publish is never sent twice: if the connection is lost before the
// acknowledgement the error matches ErrConnectionLost.
func (cl *Client) Publish(ctx context.Context, channel string, data any) (offset uint64, err error) {
	raw, err := marshal(cl.opts.Encoding, data)
	if err != nil {
		return 0, fmt.Errorf("fanout: publish to %q: marshal %s: %w", channel, cl.opts.Encoding, err)
	}
	return cl.publish(ctx, channel, raw)
}

// PublishRaw is Publish with data already encoded: raw must be exactly one
// value in the client's Encoding (a JSON value, or a msgpack value). Invalid
// data is refused with an error matching ErrBadRequest, without sending it.
func (cl *Client) PublishRaw(ctx context.Context, channel string, raw []byte) (offset uint64, err error) {
	if !validValue(cl.opts.Encoding, raw) {
		return 0, &Error{Code: codec.CodeBadRequest, Message: "data is not one " + cl.opts.Encoding.String() + " value"}
	}
	return cl.publish(ctx, channel, raw)
}

func (cl *Client) publish(ctx context.Context, channel string, raw []byte) (uint64, error) {
	m, err := cl.do(ctx, &codec.Command{Op: codec.OpPublish, Channel: []byte(channel), Data: raw}, false)
	if err != nil {
		return 0, err
	}
	return m.Offset, nil
}

// Presence returns the clients subscribed to channel.
func (cl *Client) Presence(ctx context.Context, channel string) ([]codec.ClientInfo, error) {
	m, err := cl.do(ctx, &codec.Command{Op: codec.OpPresence, Channel: []byte(channel)}, true)
	if err != nil {
		return nil, err
	}
	return m.Clients, nil
}

// History returns the channel's newest publications, oldest first: at most
// limit of them (limit <= 0: as many as the server's history holds), and
// pos, the position of the channel's newest publication, which
// SubscribeOptions.Recover accepts to continue from exactly there.
func (cl *Client) History(ctx context.Context, channel string, limit int) (pos codec.StreamPosition, pubs []Publication, err error) {
	m, err := cl.do(ctx, &codec.Command{Op: codec.OpHistory, Channel: []byte(channel), Limit: max(limit, 0)}, true)
	if err != nil {
		return pos, nil, err
	}
	pubs = make([]Publication, len(m.Publications))
	for i := range m.Publications {
		pubs[i] = publication(cl.opts.Encoding, &m.Publications[i])
		if pubs[i].Channel == "" {
			pubs[i].Channel = channel
		}
	}
	return codec.StreamPosition{Epoch: m.Epoch, Offset: m.Offset}, pubs, nil
}

// Ping sends the ping command and waits for its reply: a round trip through
// the server.
func (cl *Client) Ping(ctx context.Context) error {
	_, err := cl.do(ctx, &codec.Command{Op: codec.OpPing}, true)
	return err
}

// subscription returns the active subscription to channel, or nil.
func (cl *Client) subscription(channel string) *Subscription {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.subs[channel]
}
