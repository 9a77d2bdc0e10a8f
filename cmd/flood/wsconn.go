package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
)

// maxMessage bounds one received message (after reassembly); a larger one
// closes the connection as a protocol error.
const maxMessage = 64 << 20

// handler receives a connection's events. onMessage's payload is only valid
// during the call; c.rxTime is when it was read. onClose is called exactly
// once.
type handler interface {
	onMessage(c *wsConn, op ws.OpCode, payload []byte)
	onClose(c *wsConn, cause string)
}

// wsConn is the client side of one WebSocket connection.
//
// Plain ws:// connections are netpoll connections read event-driven: no
// goroutine waits on an idle socket; netpoll runs onRequest when bytes
// arrive, and onRequest consumes all of them without ever blocking (see
// configureNetpoll). wss:// and the non-reading subscribers of slow mode use
// a net.Conn instead, read by a goroutine (serve) when reading at all.
type wsConn struct {
	h  handler
	np netpoll.Connection // event-driven transport, or nil
	nc net.Conn           // blocking transport, or nil
	br *bufio.Reader      // reader of nc

	readTimeout time.Duration

	wmu     sync.Mutex // serializes writes
	cause   atomic.Pointer[string]
	fired   atomic.Bool // onClose called
	started atomic.Bool // netpoll: close callback registered
	shut    atomic.Bool // netpoll: shutdown called; input is ignored

	fdmu     sync.Mutex // netpoll: held by shutdown while it uses the descriptor
	fdClosed bool       // netpoll: the close callbacks ran (the descriptor is closing)

	// partialSince is when the bytes held in partial started to arrive
	// (unix ns; 0 when none): a frame must be complete within readTimeout
	// (see expireStalled).
	partialSince atomic.Int64

	// Reader-side state, touched only by the (single) reader.
	//
	// rxTime is when the input being handled was read (unix ns): the clock
	// is read once per read, not per frame, as all the frames of one read
	// arrived before it (and at full rate a clock read per frame was a
	// noticeable part of the client's cost).
	rxTime  int64
	fragOp  ws.OpCode
	frag    []byte
	partial []byte // netpoll: the start of a frame that has not fully arrived
	closing bool   // netpoll: a close frame was received; the rest is ignored
}

var errClosed = errors.New("connection closed")

// setCause records why the connection ends; the first cause wins.
func (c *wsConn) setCause(cause string) {
	c.cause.CompareAndSwap(nil, &cause)
}

func (c *wsConn) closeCause() string {
	if p := c.cause.Load(); p != nil {
		return *p
	}
	return "eof"
}

// fireClose calls the handler's onClose once.
func (c *wsConn) fireClose() {
	if c.fired.CompareAndSwap(false, true) {
		c.h.onClose(c, c.closeCause())
	}
}

// startEventDriven hands an upgraded netpoll connection to the poller.
func (c *wsConn) startEventDriven() error {
	_ = c.np.SetReadDeadline(time.Time{})
	_ = c.np.SetReadTimeout(c.readTimeout)
	_ = c.np.SetWriteTimeout(c.readTimeout)
	_ = c.np.AddCloseCallback(func(netpoll.Connection) error {
		// netpoll closes the descriptor after this callback (it was added
		// after netpoll's own, and they run newest first): shutdown must
		// not use it from now on, as the number may be reused at once.
		c.fdmu.Lock()
		c.fdClosed = true
		c.fdmu.Unlock()
		c.fireClose()
		return nil
	})
	c.started.Store(true)
	// SetOnRequest runs the handler at once if bytes already arrived.
	return c.np.SetOnRequest(c.onRequest)
}

// onRequest is netpoll's callback. It never blocks, so that it can run on
// netpoll's poller goroutine itself (configureNetpoll): it handles every
// complete frame in place (no copy), keeps the bytes of a frame that has not
// fully arrived in c.partial and so consumes all input. Waiting in the poller
// for the rest of a frame would stall every connection of that poller.
func (c *wsConn) onRequest(_ context.Context, conn netpoll.Connection) error {
	r := conn.Reader()
	c.rxTime = time.Now().UnixNano()
	err := c.readAvailable(r)
	if errors.Is(err, errClosed) {
		// A close frame: the goroutine that answers it closes the socket
		// (reply); anything after it is ignored.
		c.closing = true
		err = r.Skip(r.Len())
	}
	if err != nil {
		c.setCause(causeOfReadErr(err))
		c.shutdown()
		_ = r.Skip(r.Len()) // netpoll calls onRequest again while input remains
		_ = r.Release()
		return err
	}
	return r.Release()
}

// maxHeaderLen is the longest frame header: 2 bytes, a 64-bit length and
// a mask key.
const maxHeaderLen = 2 + 8 + 4

// readAvailable handles the frames in netpoll's input buffer.
func (c *wsConn) readAvailable(r netpoll.Reader) error {
	for {
		n := r.Len()
		if n == 0 {
			return nil
		}
		if c.closing || c.shut.Load() {
			return r.Skip(n)
		}
		if len(c.partial) > 0 {
			done, err := c.readPartial(r, n)
			if !done || err != nil {
				return err
			}
			continue
		}
		h, err := r.Peek(min(n, maxHeaderLen))
		if err != nil {
			return err
		}
		hl, length, ok := parseFrameHeader(h)
		if ok && length > maxMessage {
			return errTooLarge
		}
		if !ok || uint64(n-hl) < length {
			// The rest of this frame is still to come: keep what there is
			// (all of it is this frame's).
			c.partialSince.Store(time.Now().UnixNano())
			b, err := r.Next(n)
			if err != nil {
				return err
			}
			c.partial = append(c.partial, b...)
			return nil
		}
		frame, err := r.Next(hl + int(length))
		if err != nil {
			return err
		}
		if err := c.handleFrameBytes(frame, hl); err != nil {
			return err
		}
	}
}

// readPartial moves up to n available bytes to c.partial, the start of a
// frame, but no byte past that frame's end: the frames after it are read in
// place again. done reports that the frame was completed (and handled).
func (c *wsConn) readPartial(r netpoll.Reader, n int) (done bool, err error) {
	for n > 0 {
		p := c.partial
		var need int
		if len(p) < 2 {
			need = 2 - len(p)
		} else if hl, _ := frameHeaderLen(p[1]); len(p) < hl {
			need = hl - len(p)
		} else {
			hl, length, _ := parseFrameHeader(p)
			if length > maxMessage {
				return false, errTooLarge
			}
			need = hl + int(length) - len(p)
		}
		if need == 0 {
			break
		}
		b, err := r.Next(min(n, need))
		if err != nil {
			return false, err
		}
		n -= len(b)
		c.partial = append(c.partial, b...)
	}
	hl, length, ok := parseFrameHeader(c.partial)
	if !ok || uint64(len(c.partial)-hl) < length {
		return false, nil // n was not enough
	}
	frame := c.partial
	if cap(frame) > partialKeep {
		c.partial = nil // do not hold a large frame's buffer on an idle connection
	} else {
		c.partial = frame[:0]
	}
	c.partialSince.Store(0)
	return true, c.handleFrameBytes(frame, hl)
}

// partialKeep bounds the buffer a connection keeps for split frames.
const partialKeep = 4 << 10

// expireStalled closes the connection (cause read_timeout) when the rest of
// a started frame has not arrived within the read timeout. The agent calls
// it periodically: the non-blocking reader has no timer of its own.
func (c *wsConn) expireStalled(now int64) {
	if since := c.partialSince.Load(); since != 0 && now-since > int64(c.readTimeout) {
		c.abort("read_timeout")
	}
}

// parseFrameHeader reads a frame header at the start of b: its length and
// the payload length. ok is false when b does not hold the whole header.
func parseFrameHeader(b []byte) (hl int, length uint64, ok bool) {
	if len(b) < 2 {
		return 0, 0, false
	}
	hl, plen := frameHeaderLen(b[1])
	if len(b) < hl {
		return 0, 0, false
	}
	return hl, frameLength(b, plen), true
}

// handleFrameBytes unmasks (if masked) and handles one complete frame
// whose header is hl bytes long.
func (c *wsConn) handleFrameBytes(frame []byte, hl int) error {
	b0, payload := frame[0], frame[hl:]
	if frame[1]&0x80 != 0 {
		var mask [4]byte
		copy(mask[:], frame[hl-4:hl])
		ws.Cipher(payload, mask, 0)
	}
	return c.handleFrame(b0&0x80 != 0, b0&0x70, ws.OpCode(b0&0x0f), payload)
}

var (
	errTooLarge = errors.New("message too large")
	errProtocol = errors.New("protocol error")
)

// frameHeaderLen returns the header length implied by a frame's second
// byte (mask bit and 7-bit length) and that length field.
func frameHeaderLen(b1 byte) (hl int, plen byte) {
	hl = 2
	plen = b1 & 0x7f
	switch plen {
	case 126:
		hl += 2
	case 127:
		hl += 8
	}
	if b1&0x80 != 0 {
		hl += 4
	}
	return hl, plen
}

func frameLength(h []byte, plen byte) uint64 {
	switch plen {
	case 126:
		return uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		return binary.BigEndian.Uint64(h[2:10])
	}
	return uint64(plen)
}

// handleFrame processes one frame: control frames are answered here, data
// messages (reassembled if fragmented) go to the handler.
func (c *wsConn) handleFrame(fin bool, rsv byte, op ws.OpCode, payload []byte) error {
	if rsv != 0 {
		c.setCause("protocol_error")
		return errProtocol
	}
	switch op {
	case ws.OpPing:
		c.reply(ws.OpPong, payload)
	case ws.OpPong:
	case ws.OpClose:
		code := ws.StatusNoStatusRcvd
		if len(payload) >= 2 {
			code, _ = ws.ParseCloseFrameDataUnsafe(payload)
		}
		c.setCause("close_" + strconv.Itoa(int(code)))
		if len(payload) >= 2 {
			c.reply(ws.OpClose, payload[:2])
		} else {
			c.reply(ws.OpClose, nil)
		}
		return errClosed
	case ws.OpText, ws.OpBinary:
		if c.fragOp != 0 {
			c.setCause("protocol_error")
			return errProtocol
		}
		if fin {
			c.h.onMessage(c, op, payload)
			return nil
		}
		c.fragOp = op
		c.frag = append(c.frag[:0], payload...)
	case ws.OpContinuation:
		if c.fragOp == 0 {
			c.setCause("protocol_error")
			return errProtocol
		}
		if len(c.frag)+len(payload) > maxMessage {
			return errTooLarge
		}
		c.frag = append(c.frag, payload...)
		if fin {
			op := c.fragOp
			c.fragOp = 0
			c.h.onMessage(c, op, c.frag)
			c.frag = nil
		}
	default:
		c.setCause("protocol_error")
		return errProtocol
	}
	return nil
}

// reply answers a ping or a close frame. The blocking transport's reader
// writes the answer itself. netpoll's reader may be the poller goroutine,
// which must not wait for socket space (netpoll waits for it through that
// very poller) nor for wmu (held by a writer that may be waiting so): a
// goroutine writes the answer and, after a close frame, closes the socket.
func (c *wsConn) reply(op ws.OpCode, payload []byte) {
	if c.np == nil {
		_ = c.writeFrame(op, payload)
		return
	}
	p := append([]byte(nil), payload...)
	go func() {
		_ = c.writeFrame(op, p)
		if op == ws.OpClose {
			c.shutdown()
		}
	}()
}

// readFrameNC reads and handles one frame from the blocking transport.
func (c *wsConn) readFrameNC(buf *[]byte) error {
	h, err := c.br.Peek(2)
	if err != nil {
		return err
	}
	hl, plen := frameHeaderLen(h[1])
	if h, err = c.br.Peek(hl); err != nil {
		return err
	}
	length := frameLength(h, plen)
	if length > maxMessage {
		return errTooLarge
	}
	b0, masked := h[0], h[1]&0x80 != 0
	var mask [4]byte
	if masked {
		copy(mask[:], h[hl-4:hl])
	}
	if _, err := c.br.Discard(hl); err != nil {
		return err
	}
	if cap(*buf) < int(length) {
		*buf = make([]byte, length)
	}
	payload := (*buf)[:length]
	if _, err := io.ReadFull(c.br, payload); err != nil {
		return err
	}
	if masked {
		ws.Cipher(payload, mask, 0)
	}
	c.rxTime = time.Now().UnixNano()
	return c.handleFrame(b0&0x80 != 0, b0&0x70, ws.OpCode(b0&0x0f), payload)
}

// serve reads the blocking transport until the connection ends. idle, when
// positive, ends it (cause "idle") after that long without a frame.
func (c *wsConn) serve(idle time.Duration) {
	var buf []byte
	for {
		if idle > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(idle))
		}
		if err := c.readFrameNC(&buf); err != nil {
			if idle > 0 && isTimeout(err) {
				c.setCause("idle")
			} else if !errors.Is(err, errClosed) {
				c.setCause(causeOfReadErr(err))
			}
			break
		}
	}
	_ = c.nc.Close()
	c.fireClose()
}

// serveUntil reads frames synchronously until done() is true or the
// deadline passes (blocking transport only; used to read a subscribe reply
// before a slow subscriber stops reading).
func (c *wsConn) serveUntil(done func() bool, deadline time.Time) error {
	var buf []byte
	_ = c.nc.SetReadDeadline(deadline)
	defer c.nc.SetReadDeadline(time.Time{})
	for !done() {
		if err := c.readFrameNC(&buf); err != nil {
			return err
		}
	}
	return nil
}

// writeFrame writes one masked frame with a FIN bit.
func (c *wsConn) writeFrame(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeFrameLocked(op, payload)
}

func (c *wsConn) writeFrameLocked(op ws.OpCode, payload []byte) error {
	n := len(payload)
	hl := 2 + 4
	switch {
	case n > 0xffff:
		hl += 8
	case n > 125:
		hl += 2
	}
	bp := getBuf()
	defer putBuf(bp)
	if cap(*bp) < hl+n {
		*bp = make([]byte, hl+n)
	}
	buf := (*bp)[:hl+n]
	buf[0] = 0x80 | byte(op)
	switch {
	case n > 0xffff:
		buf[1] = 0x80 | 127
		binary.BigEndian.PutUint64(buf[2:10], uint64(n))
	case n > 125:
		buf[1] = 0x80 | 126
		binary.BigEndian.PutUint16(buf[2:4], uint16(n))
	default:
		buf[1] = 0x80 | byte(n)
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	copy(buf[hl-4:hl], mask[:])
	copy(buf[hl:], payload)
	ws.Cipher(buf[hl:], mask, 0)
	// netpoll's Write (not Malloc+Flush) holds its flushing lock, which its
	// close path waits for before it frees the output buffer.
	var err error
	if c.np != nil {
		_, err = c.np.Write(buf)
	} else {
		_, err = c.nc.Write(buf)
	}
	return err
}

// closeWith ends the connection from this side: a close frame with code
// (best effort: skipped when a write is in progress, which may be blocked
// on a full socket), then the socket.
func (c *wsConn) closeWith(code ws.StatusCode, cause string) {
	c.setCause(cause)
	if c.wmu.TryLock() {
		if c.nc != nil {
			_ = c.nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		} else {
			_ = c.np.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		}
		_ = c.writeFrameLocked(ws.OpClose, ws.NewCloseFrameBody(code, ""))
		c.wmu.Unlock()
	}
	c.abort(cause)
}

// abort closes the socket without a close frame. onClose runs from the
// reader (netpoll's close callback, or serve) when there is one, else here.
func (c *wsConn) abort(cause string) {
	c.setCause(cause)
	if c.np != nil {
		if c.started.Load() {
			c.shutdown()
			return
		}
		_ = c.np.Close()
		c.fireClose()
		return
	}
	_ = c.nc.Close()
	c.fireClose() // a paused connection has no reader; serve's is a no-op then
}

// shutdown ends a started netpoll connection by shutting its socket down:
// netpoll's poller sees the hang-up and closes the connection from a
// goroutine of its own, which runs the close callbacks. Close instead runs
// them in whichever goroutine runs the connection's callback at the time;
// when that is the poller itself (runCallback), netpoll's own close
// callback waits for the poller to finish the event it is in: forever.
func (c *wsConn) shutdown() {
	c.shut.Store(true)
	c.fdmu.Lock()
	defer c.fdmu.Unlock()
	if c.fdClosed {
		return // closed already; the descriptor may be another socket's now
	}
	if fc, ok := c.np.(interface{ Fd() int }); ok {
		// An error means that the socket is not connected any more, which
		// the poller reports as a hang-up too.
		_ = syscall.Shutdown(fc.Fd(), syscall.SHUT_RDWR)
	}
}

// isTimeout reports whether err is a timeout of any transport.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, netpoll.ErrReadTimeout) ||
		errors.Is(err, context.DeadlineExceeded)
}
