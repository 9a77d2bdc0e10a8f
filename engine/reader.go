package engine

import (
	"context"
	"encoding/binary"
	"unicode/utf8"

	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
)

// onRequest is netpoll's OnRequest: it runs on a pooled goroutine while the
// connection has unread input and is the connection's only reader. netpoll
// calls it again as long as input remains, so it always consumes every
// complete frame, blocks in Peek (bounded by FrameTimeout) for the rest of a
// started one, and discards input once closing.
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c, _ := ctx.(*Conn)
	if c == nil {
		return nc.Close()
	}
	r := nc.Reader()
	switch c.state.Load() {
	case stateHandshake:
		if !s.handshake(c, r) {
			return nil
		}
	case stateOpen:
	default:
		// Closing: the close frame is on its way; what the peer sends now
		// is not read (its own close frame included).
		_ = r.Skip(r.Len())
		return r.Release()
	}
	c.lastActive.Store(s.clock.Load())
	c.pingSent.Store(false)
	for r.Len() > 0 && c.state.Load() == stateOpen {
		if cerr := s.readFrame(c, r); cerr != nil {
			if cerr != errStopReading {
				c.CloseWith(cerr)
			}
			_ = r.Skip(r.Len())
			break
		}
	}
	return r.Release()
}

// errStopReading ends the read loop without sending a close frame (the
// socket is gone, or a close was already queued).
var errStopReading = &CloseError{CloseNormal, "stop reading"}

// readFrame reads one complete frame and handles it.
func (s *Server) readFrame(c *Conn, r netpoll.Reader) *CloseError {
	n := r.Len()
	if n > maxClientHeaderLen {
		n = maxClientHeaderLen
	}
	b, err := r.Peek(n)
	if err != nil {
		return errStopReading
	}
	h, need, cerr := parseHeader(b, s.cfg.MaxMessageBytes)
	for need > 0 {
		if b, err = r.Peek(need); err != nil {
			return s.readFailed(c)
		}
		h, need, cerr = parseHeader(b, s.cfg.MaxMessageBytes)
	}
	if cerr != nil {
		return cerr
	}
	total := h.size + int(h.length)
	if b, err = r.Peek(total); err != nil {
		return s.readFailed(c)
	}
	payload := b[h.size:total]
	// Unmask in place: these bytes are ours until Skip.
	ws.Cipher(payload, h.mask, 0)
	s.stats.framesIn.Add(1)
	cerr = s.handleFrame(c, h, payload)
	_ = r.Skip(total)
	return cerr
}

// readFailed maps a failed Peek: a live connection timed out mid-frame.
func (s *Server) readFailed(c *Conn) *CloseError {
	if c.nc.IsActive() {
		return errFrameTimeout
	}
	return errStopReading
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
