package main

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gobwas/ws"
)

// role is what a connection does in a run.
type role uint8

const (
	roleConn role = iota // connect mode: holds a connection
	roleSub              // subscriber
	roleSlow             // slow mode: a subscriber that stops reading
	rolePub              // publisher
	roleEcho             // echo: sends and times its own messages
)

// client is one logical connection of a worker. It outlives its socket in
// churn mode, where ws is replaced on every reconnect.
type client struct {
	a       *agent
	gid     int    // global index (source address, shard, slow selection)
	role    role   //
	tag     uint32 // raw publishers: the tag in their payloads (index+1)
	channel []byte // fanout channel it subscribes or publishes to

	ws      atomic.Pointer[wsConn]
	subID   atomic.Uint64 // id of the subscribe awaiting its reply, 0 when none
	ready   atomic.Bool   // subscribed (raw: saw a probe)
	measure atomic.Bool   // counted for delivery (ready when the load started)
	dead    atomic.Bool   // failed for good; churn skips it
	busy    atomic.Bool   // churn: reconnecting
	resumed atomic.Bool   // slow: reading again in the drain
	nextID  atomic.Uint64 // next command id
	// retryUnavail: the connect phase sends a subscribe answered
	// "unavailable" again (connectClient), so onReply leaves it uncounted.
	retryUnavail atomic.Bool

	mu         sync.Mutex // stream position (fanout subscribers)
	epoch      string
	last       uint64
	synced     bool // the current socket's subscribe reply arrived
	everSynced bool
	stash      []uint64      // offsets of pushes that came before the reply
	subDone    chan struct{} // closed when the pending subscribe is answered
	subErr     string        // error code of the last subscribe reply ("" when ok)

	window chan struct{} // publishers with --rate 0: in-flight window
}

// subscribe sends a subscribe command (with recover when the client has a
// position) on w and returns a channel closed when it is answered.
func (c *client) subscribe(w *wsConn) (<-chan struct{}, error) {
	a := c.a
	c.mu.Lock()
	c.synced = false
	c.subErr = ""
	done := make(chan struct{})
	c.subDone = done
	recover, epoch, offset := c.everSynced, c.epoch, c.last
	c.mu.Unlock()
	id := c.nextID.Add(1)
	c.subID.Store(id)
	msg := a.proto.appendSubscribe(nil, c.channel, id, recover, epoch, offset)
	return done, w.writeFrame(a.proto.opcode(), msg)
}

// onMessage implements handler.
func (c *client) onMessage(w *wsConn, _ ws.OpCode, p []byte) {
	if c.ws.Load() != w {
		return // a replaced socket (churn)
	}
	if c.a.proto.raw {
		c.onRaw(w, p)
		return
	}
	// Nearly every message is a pub push: read it in place, without the
	// copies DecodeServerMessage makes (data aliases p, which onPub does
	// not keep).
	if offset, data, ok := codec.ScanPub(c.a.proto.enc, p); ok {
		c.onPub(w, offset, data)
		return
	}
	var m codec.ServerMessage
	if err := codec.DecodeServerMessage(c.a.proto.enc, p, &m); err != nil {
		c.a.decodeErrs.add("undecodable_message", 1)
		return
	}
	switch {
	case m.Push == codec.PushPub:
		c.onPub(w, m.Pub.Offset, pubData(c.a.proto.enc, &m.Pub))
	case m.Push == codec.PushNone && m.HasID:
		c.onReply(w, &m)
	}
}

func pubData(enc codec.Encoding, p *codec.Publication) []byte {
	if enc == codec.Msgpack {
		return p.Msgpack
	}
	return p.JSON
}

// onRaw handles a raw-protocol message.
func (c *client) onRaw(w *wsConn, p []byte) {
	a := c.a
	t, tag, ok := parseRaw(p)
	if !ok {
		return
	}
	switch c.role {
	case roleSub:
		if t == 0 {
			c.markReady()
			return
		}
		if c.measure.Load() && a.measuring() {
			a.deliver(c.gid, t, w.rxTime)
		}
	case rolePub:
		if t != 0 && tag == c.tag {
			a.ctr.acked.Add(1)
			c.release()
		}
	case roleEcho:
		if t != 0 {
			c.echoed(w, t)
		}
	}
}

// onPub handles a fanout pub push.
func (c *client) onPub(w *wsConn, offset uint64, data []byte) {
	a := c.a
	t, _ := dataTime(a.proto.enc, data)
	switch c.role {
	case roleSub, roleSlow:
		c.mu.Lock()
		if !c.synced {
			if len(c.stash) < 100_000 {
				c.stash = append(c.stash, offset)
			}
		} else {
			c.checkOffset(offset)
		}
		c.mu.Unlock()
		if t > 0 && c.role == roleSub && c.measure.Load() && a.measuring() {
			a.deliver(c.gid, t, w.rxTime)
		}
	case roleEcho:
		if t > 0 {
			c.echoed(w, t)
		}
	}
}

// checkOffset checks that offset follows the last one seen (c.mu held).
func (c *client) checkOffset(offset uint64) {
	switch {
	case offset == c.last+1:
		c.last = offset
	case offset <= c.last:
		c.a.ctr.dups.Add(1)
	default:
		c.a.ctr.gaps.Add(int64(offset - c.last - 1))
		c.last = offset
	}
}

// onReply handles a reply to one of the client's commands.
func (c *client) onReply(w *wsConn, m *codec.ServerMessage) {
	a := c.a
	if id := c.subID.Load(); id != 0 && m.ID == id {
		c.subID.Store(0)
		if m.ErrorCode != "" {
			if m.ErrorCode != codec.CodeUnavailable || !c.retryUnavail.Load() {
				a.subErrs.add("subscribe_"+m.ErrorCode, 1)
			}
			c.mu.Lock()
			done := c.subDone
			c.subDone = nil
			c.subErr = m.ErrorCode
			c.mu.Unlock()
			if done != nil {
				close(done)
			}
			return
		}
		c.onSubscribed(m)
		return
	}
	switch c.role {
	case rolePub, roleEcho: // publish replies
		if m.ErrorCode != "" {
			a.ctr.pubErr.Add(1)
			a.pubErrs.add(m.ErrorCode, 1)
			if c.role == roleEcho { // no pub push will come back
				a.ctr.pending.Add(-1)
				if a.running() {
					c.sendEcho(w)
				}
			}
		} else if c.role == rolePub {
			a.ctr.acked.Add(1)
		}
		if c.role == rolePub {
			c.release()
		}
	}
}

// onSubscribed applies a successful subscribe reply: the stream position,
// and on a resubscribe the recovered publications and the gap check.
func (c *client) onSubscribed(m *codec.ServerMessage) {
	a := c.a
	c.mu.Lock()
	recovering := c.everSynced
	if recovering {
		if m.Epoch != c.epoch {
			// The channel's history is another one: what was missed is
			// unknowable, and that is a failure.
			a.ctr.recoverFail.Add(1)
			c.epoch, c.last = m.Epoch, m.Offset
		} else {
			for i := range m.Publications {
				c.checkOffset(m.Publications[i].Offset)
				a.ctr.recovered.Add(1)
			}
			if !m.Recovered {
				a.ctr.recoverFail.Add(1)
			}
			if m.Offset > c.last {
				a.ctr.gaps.Add(int64(m.Offset - c.last))
				c.last = m.Offset
			}
		}
	} else {
		c.epoch, c.last = m.Epoch, m.Offset
		c.everSynced = true
	}
	c.synced = true
	for _, o := range c.stash {
		if o > c.last {
			c.checkOffset(o)
		} else if recovering {
			a.ctr.dups.Add(1)
		}
	}
	c.stash = nil
	done := c.subDone
	c.subDone = nil
	c.mu.Unlock()
	if recovering {
		a.ctr.reconnects.Add(1)
	}
	c.markReady()
	if done != nil {
		close(done)
	}
}

func (c *client) markReady() {
	if c.ready.CompareAndSwap(false, true) {
		c.a.ctr.ready.Add(1)
	}
}

// onClose implements handler.
func (c *client) onClose(w *wsConn, cause string) {
	a := c.a
	a.ctr.open.Add(-1)
	if c.role == roleSlow {
		a.slowOutcome(c, cause)
		return
	}
	if cause == causeClient {
		return
	}
	a.ctr.disconnects.Add(1)
	a.disconnects.add(cause, 1)
	if c.ws.Load() == w {
		c.release() // unblock a publisher waiting on its window
	}
}

// causeClient is the close cause of connections this tool closes itself.
const causeClient = "client_close"

// release frees one slot of a publisher's in-flight window.
func (c *client) release() {
	if c.window == nil {
		return
	}
	select {
	case <-c.window:
	default:
	}
}

// echoed handles the return of one of an echo client's messages.
func (c *client) echoed(w *wsConn, t int64) {
	a := c.a
	if !a.measuring() {
		return
	}
	a.ctr.pending.Add(-1)
	a.deliver(c.gid, t, w.rxTime)
	if a.running() {
		c.sendEcho(w)
	}
}

// sendEcho sends one echo message (fanout: a publish to the client's own
// channel, which it is subscribed to).
func (c *client) sendEcho(w *wsConn) {
	a := c.a
	bp := getBuf()
	defer putBuf(bp)
	now := time.Now().UnixNano()
	var msg []byte
	if a.proto.raw {
		msg = a.proto.appendRaw((*bp)[:0], now, 0)
	} else {
		sp := getBuf()
		msg, *sp = a.proto.appendPublish((*bp)[:0], *sp, c.channel, c.nextID.Add(1), now)
		putBuf(sp)
	}
	*bp = msg
	// Count it in flight before checking the phase: a "stopped" snapshot
	// taken after the phase changed then cannot miss a message sent.
	a.ctr.pending.Add(1)
	if !a.running() {
		a.ctr.pending.Add(-1)
		return
	}
	if err := w.writeFrame(a.proto.opcode(), msg); err != nil {
		a.ctr.pending.Add(-1)
		return
	}
	a.ctr.sent.Add(1)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) <= 1<<20 {
		bufPool.Put(b)
	}
}
