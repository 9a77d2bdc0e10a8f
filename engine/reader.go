package engine

import (
	"context"
	"encoding/binary"
	"runtime/debug"
	"time"
	"unicode/utf8"

	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/engine/deflate"
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
		c.lastActive.Store(s.now())
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
			head := append([]byte(nil), b...)
			c.httpHead = &head
			c.dropInbuf()
			_ = r.Skip(n)
			_ = r.Release()
			s.detachHTTP(c)
			return nil
		}
	}
	if state == stateHandshake && c.state.Load() == stateOpen {
		// Upgraded: the idle clock starts (the wheel held the connection
		// for the handshake deadline).
		c.lastActive.Store(s.now())
		s.wheel.scheduleBy(c, s.now()+s.cfg.IdleTimeout.Nanoseconds()/2)
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
	if !c.trimPending.Swap(true) {
		// netpoll drops an emptied input node only on a Release made off
		// the poller while the poller is not busy with the connection:
		// never from a callback on the poller, and not always from one in
		// the pool (the task may run before the poller has finished with
		// the event; netpoll_pin_test.go). So once a connection has been
		// quiet for trimAfter, the sweeper releases again (trimInput), and
		// an idle connection keeps no input buffer.
		c.srv.wheel.scheduleBy(c, c.srv.now()+trimAfter.Nanoseconds())
	}
	now := monotime()
	if now-c.lastRead < int64(busyWindow) {
		if c.streak < busyStreak {
			c.streak++
		}
	} else {
		c.streak = 0
	}
	// The time of this read: the rate buckets of the commands it carries
	// use it too (allowCommand, allowPublish), one clock read for all.
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
		if c.state.Load() > stateOpen {
			// Closing: a message being reassembled will never complete;
			// its bytes go back to the budget now, not when the peer
			// has closed its side.
			c.dropFrag()
		}
		return
	}
	if c.inbuf == nil {
		c.inbuf = bytebufferpool.Get()
		c.inbuf.B = append(c.inbuf.B[:0], b[used:]...)
		c.partialStarted()
	} else if used > 0 {
		// A new frame starts the buffer: its own clock starts now.
		c.inbuf.B = c.inbuf.B[:copy(c.inbuf.B, b[used:])]
		c.partialStarted()
	}
	if !c.chargeInbuf() {
		c.CloseWith(errReassemblyBudget)
		c.dropInbuf()
		c.dropFrag()
	}
}

// partialStarted notes that the frame (or request head) now at the start of
// inbuf began to arrive. While a fragmented message is open partialSince
// keeps the message's start instead, which is earlier: FrameTimeout bounds
// the whole message, from its first fragment to its final one.
//
// partialSince, which the sweeper reads, is thus the server clock when the
// oldest input still waiting for its end began to arrive: the first
// fragment of the open fragmented message if there is one, else the frame
// (or request head) at the start of inbuf; 0 when there is neither.
func (c *Conn) partialStarted() {
	if c.fragOp == 0 {
		c.markPartial()
	}
}

// dropInbuf returns the partial-input buffer to the pool.
func (c *Conn) dropInbuf() {
	if c.inbuf != nil {
		c.inCharged = c.srv.uncharge(int(c.inCharged))
		bytebufferpool.Put(c.inbuf)
		c.inbuf = nil
	}
	if c.fragOp == 0 {
		c.partialSince.Store(0)
	}
}

// dropFrag frees the message being reassembled, if any, and returns its
// bytes to the server's reassembly budget.
func (c *Conn) dropFrag() {
	if c.frag != nil {
		c.srv.uncharge(c.frag.Len())
		bytebufferpool.Put(c.frag)
		c.frag = nil
	}
	c.fragOp, c.fragDeflate = 0, false
	c.scanned = 0
	if c.inbuf == nil {
		c.partialSince.Store(0)
	}
}

// chargeInbuf brings inbuf's share of the reassembly budget up to date. A
// partial frame of up to one read (readBufferSize) is not charged: it costs
// no more than the input buffer netpoll keeps anyway, and charging it would
// put a shared atomic on the path of every read that ends mid-frame. It
// reports false when a larger one does not fit in the budget.
func (c *Conn) chargeInbuf() bool {
	n := 0
	if c.inbuf != nil && len(c.inbuf.B) > readBufferSize && c.state.Load() == stateOpen {
		n = len(c.inbuf.B)
	}
	delta := n - int(c.inCharged)
	switch {
	case delta > 0:
		if !c.srv.charge(delta) {
			return false
		}
	case delta < 0:
		c.srv.uncharge(-delta)
	default:
		return true
	}
	c.inCharged = int32(n)
	return true
}

// charge takes n bytes from the server-wide reassembly budget
// (MaxReassemblyBytes) and reports whether they fit; when they do not,
// nothing is taken.
func (s *Server) charge(n int) bool {
	if s.cfg.MaxReassemblyBytes < 0 || n == 0 {
		return true
	}
	if s.reassembly.Add(int64(n)) > int64(s.cfg.MaxReassemblyBytes) {
		s.reassembly.Add(-int64(n))
		return false
	}
	return true
}

// uncharge returns n bytes to the reassembly budget. It returns 0, for
// callers that reset their own count of what they hold.
func (s *Server) uncharge(n int) int32 {
	if s.cfg.MaxReassemblyBytes >= 0 && n != 0 {
		s.reassembly.Add(-int64(n))
	}
	return 0
}

// errStopReading ends the read loop without sending a close frame (a close
// was already queued).
var errStopReading = &CloseError{CloseNormal, "stop reading"}

// readFrames handles the complete frames at the start of b and returns the
// bytes they took, or -1 once the connection is closing.
func (s *Server) readFrames(c *Conn, b []byte) int {
	used := 0
	for len(b) > 0 {
		h, need, cerr := parseHeader(b, s.cfg.MaxMessageBytes, c.deflate)
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
		if used == 0 && c.inCharged > 0 {
			// The frame that inbuf was charged for is complete: its bytes
			// must not count twice if they go on into c.frag (keepUnread
			// charges what is left).
			c.inCharged = s.uncharge(int(c.inCharged))
		}
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
		if used == total && c.fragOp == 0 && c.partialSince.Load() != 0 {
			// The frame that may have begun in an earlier read is done,
			// and no message is open: nothing is pending any more
			// (keepUnread starts the clock again for what is left).
			c.partialSince.Store(0)
		}
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
		limit := s.cfg.MaxMessageBytes
		if c.fragDeflate {
			limit = compressedLimit(limit)
		}
		if c.frag.Len()+len(payload) > limit {
			return errTooBig
		}
		return s.addFragment(c, h.fin, payload)
	default: // text or binary
		if c.fragOp != 0 {
			return errExpectedCont
		}
		if !h.rsv1 && len(payload) > s.cfg.MaxMessageBytes {
			// Within compressedLimit, which parseHeader allows on a
			// connection that negotiated deflate, but not compressed.
			return errTooBig
		}
		if h.fin {
			if h.rsv1 {
				return s.inflateMessage(c, h.op, payload)
			}
			return s.handleMessage(c, h.op, payload)
		}
		c.fragOp = h.op
		c.fragDeflate = h.rsv1
		c.frag = bytebufferpool.Get()
		c.scanned = 0
		if c.partialSince.Load() == 0 {
			// Otherwise the frame began to arrive earlier, with the
			// message: partialSince already holds its first byte's time.
			c.markPartial()
		}
		return s.addFragment(c, false, payload)
	}
}

// addFragment appends a fragment of the message being reassembled, within
// the server's reassembly budget, and handles the message once fin. The
// UTF-8 of a text message is checked as its fragments arrive, so that an
// invalid one closes the connection (1007) at once: c.scanned is how much
// of it has been checked, always at a rune boundary; a rune split across
// fragments is checked when its last byte arrives.
func (s *Server) addFragment(c *Conn, fin bool, payload []byte) *CloseError {
	if !s.charge(len(payload)) {
		return errReassemblyBudget
	}
	c.frag.B = append(c.frag.B, payload...)
	if c.fragOp == ws.OpText && !c.fragDeflate {
		rest := c.frag.B[c.scanned:]
		if fin {
			if !utf8.Valid(rest) {
				return errBadUTF8
			}
		} else {
			n, ok := validUTF8Prefix(rest)
			if !ok {
				return errBadUTF8
			}
			c.scanned += int32(n)
		}
	}
	if !fin {
		return nil
	}
	op, msg, compressed := c.fragOp, c.frag, c.fragDeflate
	c.fragOp, c.frag, c.scanned, c.fragDeflate = 0, nil, 0, false
	// keepUnread sets it again if a frame is left incomplete.
	c.partialSince.Store(0)
	defer func() {
		s.uncharge(msg.Len())
		bytebufferpool.Put(msg)
	}()
	if compressed {
		return s.inflateMessage(c, op, msg.B)
	}
	return s.dispatchMessage(c, op, msg.B)
}

// inflateMessage inflates a compressed data message (its frames' payloads
// joined, RFC 7692 7.2.2) and handles it. The inflated size is bounded by
// MaxMessageBytes (past it: close 1009, whatever the ratio), and the bytes
// are taken from the reassembly budget as they are inflated, before they
// are in memory: a kilobyte on the wire must not become a megabyte outside
// MaxReassemblyBytes, on every connection at once.
func (s *Server) inflateMessage(c *Conn, op ws.OpCode, compressed []byte) *CloseError {
	buf := bytebufferpool.Get()
	defer bytebufferpool.Put(buf)
	charged := 0
	defer func() { s.uncharge(charged) }()
	out, err := deflate.Inflate(buf.B[:0], compressed, s.cfg.MaxMessageBytes, func(n int) bool {
		if !s.charge(n) {
			return false
		}
		charged += n
		return true
	})
	buf.B = out
	switch err {
	case nil:
	case deflate.ErrTooLarge:
		return errInflatedTooBig
	case deflate.ErrNoRoom:
		return errReassemblyBudget
	default:
		return errBadDeflate
	}
	s.stats.inflated.Add(1)
	return s.handleMessage(c, op, out)
}

// validUTF8Prefix checks b, the newest bytes of a text message whose end has
// not arrived: it reports whether b is valid UTF-8 but for an incomplete
// rune at its end that the next fragment may complete, and n, the length of
// b before that rune. An incomplete rune that no byte could make valid
// (an overlong or surrogate start, say) is invalid at once.
func validUTF8Prefix(b []byte) (n int, ok bool) {
	n = len(b)
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(b[i]) {
			// FullRune is false only for a valid rune's first bytes.
			if !utf8.FullRune(b[i:]) {
				n = i
			}
			break
		}
	}
	return n, utf8.Valid(b[:n])
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

// handleMessage handles one complete data message that arrived in one
// frame.
func (s *Server) handleMessage(c *Conn, op ws.OpCode, msg []byte) *CloseError {
	if op == ws.OpText && !utf8.Valid(msg) {
		return errBadUTF8
	}
	return s.dispatchMessage(c, op, msg)
}

// dispatchMessage handles one complete data message whose UTF-8, for text,
// was checked: echoed in echo mode, otherwise a command.
func (s *Server) dispatchMessage(c *Conn, op ws.OpCode, msg []byte) *CloseError {
	s.stats.messagesIn.Add(1)
	if s.cfg.Echo {
		c.sendData(wsframe.New(op, msg))
		return nil
	}
	return s.handleCommand(c, op, msg)
}
