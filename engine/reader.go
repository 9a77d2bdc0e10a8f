package engine

import (
	"context"
	"encoding/binary"
	"runtime/debug"
	"time"
	"unicode/utf8"

	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
)

// onRequest is netpoll's OnRequest and the connection's only reader. It
// never waits: it handles every complete frame (or request head) in the
// input, keeps the bytes of one that has not fully arrived in c.inbuf, and
// so always consumes all input (netpoll calls it again while input remains,
// and would spin). Because it never waits, an open WebSocket's onRequest
// runs on netpoll's poller goroutine itself (runCallback) instead of being
// handed to a pool goroutine per event; the sweeper enforces HandshakeTimeout
// and FrameTimeout on what is kept.
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	r := nc.Reader()
	c, _ := ctx.(*Conn)
	if c == nil {
		_ = r.Skip(r.Len())
		return r.Release()
	}
	n := r.Len()
	if n == 0 {
		return nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.noteRead()
	// A panic must not leave this function: netpoll's task would then Close
	// the connection from the poller, which waits for the poller forever.
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic reading a connection", "panic", p, "stack", string(debug.Stack()))
			c.dropInbuf()
			c.closeSocket()
			_ = r.Skip(r.Len())
			_ = r.Release()
		}
	}()
	in, err := r.Peek(n) // never waits: n bytes are there
	if err != nil {
		c.closeSocket()
		_ = r.Skip(n)
		return r.Release()
	}
	state := c.state.Load()
	if state != stateHandshake && state != stateOpen {
		// Closing: the close frame is on its way; what the peer sends now
		// is not read (its own close frame included).
		_ = r.Skip(n)
		return r.Release()
	}
	if state == stateOpen {
		// (In the handshake state lastActive stays the accept time, which
		// HandshakeTimeout counts from.)
		c.lastActive.Store(s.clock.Load())
		c.pingSent.Store(false)
	}
	b := in
	if c.inbuf != nil {
		// The start of a frame (or head) arrived earlier: b is all of it.
		c.inbuf.B = append(c.inbuf.B, in...)
		b = c.inbuf.B
	}
	used := 0
	if state == stateHandshake {
		var detach bool
		used, detach = s.handshake(c, b)
		if detach {
			// Lent to net/http, which gets every byte read so far.
			c.httpHead = append([]byte(nil), b...)
			c.dropInbuf()
			_ = r.Skip(n)
			_ = r.Release()
			s.detachHTTP(c)
			return nil
		}
	}
	if used >= 0 && c.state.Load() == stateOpen {
		used += s.readFrames(c, b[used:])
	}
	c.keepUnread(b, used)
	_ = r.Skip(n)
	return r.Release()
}

// noteRead tracks how often the connection reads, for runCallback.
func (c *Conn) noteRead() {
	if c.busy.Load() {
		// This callback may be running on the poller: only a Release off
		// the poller drops the input node it leaves behind.
		c.trimPending.Store(true)
	}
	now := monotime()
	if now-c.lastRead < int64(busyWindow) {
		c.streak++
	} else {
		c.streak = 0
	}
	c.lastRead = now
	c.busy.Store(c.streak >= busyStreak)
}

// processStart anchors monotime.
var processStart = time.Now()

// monotime is a monotonic clock in nanoseconds.
func monotime() int64 { return int64(time.Since(processStart)) }

// keepUnread keeps b[used:] in c.inbuf for the next onRequest; used < 0
// discards everything (the connection is closing).
func (c *Conn) keepUnread(b []byte, used int) {
	if used < 0 || used == len(b) || c.state.Load() > stateOpen {
		c.dropInbuf()
		return
	}
	if c.inbuf == nil {
		c.inbuf = bytebufferpool.Get()
		c.inbuf.B = append(c.inbuf.B[:0], b[used:]...)
		c.partialSince.Store(c.srv.clock.Load())
		return
	}
	if used > 0 {
		// A new frame starts the buffer: its own clock starts now.
		c.inbuf.B = c.inbuf.B[:copy(c.inbuf.B, b[used:])]
		c.partialSince.Store(c.srv.clock.Load())
	}
}

// dropInbuf returns the partial-input buffer to the pool.
func (c *Conn) dropInbuf() {
	if c.inbuf != nil {
		bytebufferpool.Put(c.inbuf)
		c.inbuf = nil
	}
	c.partialSince.Store(0)
}

// errStopReading ends the read loop without sending a close frame (a close
// was already queued).
var errStopReading = &CloseError{CloseNormal, "stop reading"}

// readFrames handles the complete frames at the start of b and returns the
// bytes they took, or -1 once the connection is closing.
func (s *Server) readFrames(c *Conn, b []byte) int {
	used := 0
	for len(b) > 0 {
		h, need, cerr := parseHeader(b, s.cfg.MaxMessageBytes)
		if cerr != nil {
			c.CloseWith(cerr)
			return -1
		}
		if need > 0 {
			return used
		}
		total := h.size + int(h.length)
		if len(b) < total {
			return used
		}
		payload := b[h.size:total]
		// Unmask in place: these bytes are ours until Skip.
		ws.Cipher(payload, h.mask, 0)
		s.stats.framesIn.Add(1)
		if cerr := s.handleFrame(c, h, payload); cerr != nil {
			if cerr != errStopReading {
				c.CloseWith(cerr)
			}
			return -1
		}
		if c.state.Load() != stateOpen {
			return -1
		}
		b = b[total:]
		used += total
	}
	return used
}

// handleFrame applies one frame. payload is valid only during the call.
func (s *Server) handleFrame(c *Conn, h frameHeader, payload []byte) *CloseError {
	switch h.op {
	case ws.OpPing:
		c.Send(wsframe.New(ws.OpPong, payload))
		return nil
	case ws.OpPong:
		return nil
	case ws.OpClose:
		return s.handleClose(c, payload)
	case ws.OpContinuation:
		if c.fragOp == 0 {
			return errUnexpectedCont
		}
		if c.frag.Len()+len(payload) > s.cfg.MaxMessageBytes {
			return errTooBig
		}
		_, _ = c.frag.Write(payload)
		if !h.fin {
			return nil
		}
		op, msg := c.fragOp, c.frag
		c.fragOp, c.frag = 0, nil
		defer bytebufferpool.Put(msg)
		return s.handleMessage(c, op, msg.B)
	default: // text or binary
		if c.fragOp != 0 {
			return errExpectedCont
		}
		if !h.fin {
			c.fragOp = h.op
			c.frag = bytebufferpool.Get()
			_, _ = c.frag.Write(payload)
			return nil
		}
		return s.handleMessage(c, h.op, payload)
	}
}

// handleClose answers a client's close frame: the code is echoed (1000 when
// the client sent none) and the socket closes once the answer is written.
func (s *Server) handleClose(c *Conn, payload []byte) *CloseError {
	switch {
	case len(payload) == 0:
		c.CloseWith(&CloseError{Code: CloseNormal})
	case len(payload) == 1:
		return errBadClosePayload
	default:
		code := binary.BigEndian.Uint16(payload)
		if !validCloseCode(code) {
			return errBadCloseCode
		}
		if !utf8.Valid(payload[2:]) {
			return errBadCloseReason
		}
		c.CloseWith(&CloseError{Code: code})
	}
	return errStopReading
}

// handleMessage handles one complete data message.
func (s *Server) handleMessage(c *Conn, op ws.OpCode, msg []byte) *CloseError {
	if op == ws.OpText && !utf8.Valid(msg) {
		return errBadUTF8
	}
	s.stats.messagesIn.Add(1)
	if s.cfg.Echo {
		c.Send(wsframe.New(op, msg))
		return nil
	}
	return s.handleCommand(c, op, msg)
}
