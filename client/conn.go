package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// errNotSent: the connection was already dead; the command was not written.
var errNotSent = errors.New("fanout: connection is gone")

// closeWait is how long Close waits for the server to answer its close frame.
const closeWait = time.Second

// aLongTimeAgo is a deadline in the past, to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// call is one command waiting for its reply.
type call struct {
	done chan struct{} // closed when msg or err is set; nil: nobody waits
	msg  *codec.ServerMessage
	err  error
	// onReply, when set, runs on the reader goroutine before the next
	// message is read (subscribe replies, which must be applied in order
	// with the pushes around them).
	onReply func(*codec.ServerMessage)
}

func (c *call) finish(m *codec.ServerMessage, err error) {
	c.msg, c.err = m, err
	if c.done != nil {
		close(c.done)
	}
}

// conn is one WebSocket connection: one reader goroutine, writes under wmu.
type conn struct {
	cl      *Client
	nc      net.Conn
	enc     codec.Encoding
	info    codec.ClientInfo
	rd      *wsutil.Reader
	rbuf    []byte
	started time.Time

	wmu       sync.Mutex
	wbuf      []byte // frame being written
	cbuf      []byte // command being encoded
	closeSent bool

	mu      sync.Mutex
	pending map[uint64]*call
	dead    bool
	abort   error // set by kill: why the client ended the connection
	err     error // why the connection ended (*CloseError), set before done
	done    chan struct{}
}

// connect opens one connection to url: dial, upgrade, connected push. The
// reader is not started.
func (cl *Client) connect(ctx context.Context, url string) (*conn, error) {
	o := &cl.opts
	start := time.Now()
	hdr := o.Header.Clone()
	if hdr == nil {
		hdr = http.Header{}
	}
	if o.Token != "" {
		hdr.Set("Authorization", "Bearer "+o.Token)
	}
	var refused *HandshakeError
	d := ws.Dialer{
		Timeout:   o.Dialer.HandshakeTimeout,
		Protocols: []string{o.Encoding.Subprotocol()},
		Header:    ws.HandshakeHeaderHTTP(hdr),
		TLSConfig: o.Dialer.TLSConfig,
		NetDial:   o.Dialer.NetDial,
		OnStatusError: func(status int, _ []byte, resp io.Reader) {
			refused = &HandshakeError{StatusCode: status, Body: readErrorBody(resp)}
		},
	}
	nc, br, hs, err := d.Dial(ctx, url)
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			if refused == nil {
				refused = &HandshakeError{StatusCode: int(se)}
			}
			return nil, refused
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("fanout: dial %s: %w", url, err)
	}
	// A server that names no subprotocol speaks JSON (PROTOCOL.md).
	if hs.Protocol == "" && o.Encoding != codec.JSON {
		nc.Close()
		return nil, fmt.Errorf("fanout: dial %s: server did not accept subprotocol %s", url, o.Encoding.Subprotocol())
	}
	src := io.Reader(br)
	if br == nil {
		src = bufio.NewReaderSize(nc, 4096)
	}
	cn := &conn{
		cl:      cl,
		nc:      nc,
		enc:     o.Encoding,
		pending: make(map[uint64]*call),
		done:    make(chan struct{}),
	}
	cn.rd = &wsutil.Reader{
		Source:    src,
		State:     ws.StateClientSide,
		CheckUTF8: true,
		OnIntermediate: func(h ws.Header, r io.Reader) error {
			return cn.control(h, r)
		},
	}

	// The first message must be the connected push.
	nc.SetReadDeadline(start.Add(o.Dialer.HandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { nc.SetReadDeadline(aLongTimeAgo) })
	msg, err := cn.readMessage()
	if !stop() {
		nc.Close()
		return nil, ctx.Err()
	}
	nc.SetReadDeadline(time.Time{})
	if err != nil {
		nc.Close()
		return nil, closeErrorOf(err)
	}
	var m codec.ServerMessage
	if err := codec.DecodeServerMessage(cn.enc, msg, &m); err != nil || m.Push != codec.PushConnected {
		nc.Close()
		if err == nil {
			err = errors.New("first message is not the connected push")
		}
		return nil, fmt.Errorf("fanout: dial %s: %w", url, err)
	}
	cn.info = m.Info
	cn.started = time.Now()
	return cn, nil
}

// readErrorBody reads the start of a refused handshake's body, when the
// response says how long it is.
func readErrorBody(resp io.Reader) string {
	r, err := http.ReadResponse(bufio.NewReader(resp), nil)
	if err != nil || r.ContentLength <= 0 {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(r.Body, min(r.ContentLength, 512)))
	return strings.TrimSpace(string(b))
}

// readMessage reads the next data message, answering control frames on the
// way. A close frame ends it with a *CloseError.
func (cn *conn) readMessage() ([]byte, error) {
	for {
		h, err := cn.rd.NextFrame()
		if err != nil {
			return nil, err
		}
		if h.OpCode.IsControl() {
			if err := cn.control(h, cn.rd); err != nil {
				return nil, err
			}
			continue
		}
		want := ws.OpText
		if cn.enc == codec.Msgpack {
			want = ws.OpBinary
		}
		if h.OpCode != want {
			cn.sendClose(1003, "wrong frame kind for "+cn.enc.Subprotocol())
			return nil, &CloseError{Code: 1003, Err: fmt.Errorf("server sent a frame of opcode %d on %s", h.OpCode, cn.enc.Subprotocol())}
		}
		buf := cn.rbuf[:0]
		for {
			if len(buf) == cap(buf) {
				buf = append(buf, 0)[:len(buf)]
			}
			n, err := cn.rd.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+n]
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
		}
		if cap(buf) <= 1<<20 {
			cn.rbuf = buf
		} else {
			cn.rbuf = nil
		}
		return buf, nil
	}
}

// control handles one control frame whose payload r yields.
func (cn *conn) control(h ws.Header, r io.Reader) error {
	var arr [ws.MaxControlFramePayloadSize]byte
	p := arr[:min(int(h.Length), len(arr))]
	if _, err := io.ReadFull(r, p); err != nil {
		return err
	}
	switch h.OpCode {
	case ws.OpPing:
		cn.wmu.Lock()
		if !cn.closeSent {
			cn.writeFrameLocked(ws.OpPong, p)
		}
		cn.wmu.Unlock()
	case ws.OpClose:
		if len(p) < 2 {
			cn.sendClose(0, "")
			return &CloseError{Code: CloseNoStatus}
		}
		code := int(binary.BigEndian.Uint16(p))
		reason := string(p[2:])
		switch code {
		case CloseNoStatus, CloseAbnormal, 1015: // never on the wire
			cn.sendClose(0, "")
		default:
			cn.sendClose(code, "")
		}
		return newCloseError(code, reason)
	}
	return nil
}

// sendClose sends a close frame once (code 0: no code). Later writes fail.
func (cn *conn) sendClose(code int, reason string) {
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if cn.closeSent {
		return
	}
	cn.closeSent = true
	var body []byte
	if code != 0 {
		body = ws.NewCloseFrameBody(ws.StatusCode(code), reason)
	}
	cn.writeFrameLocked(ws.OpClose, body)
}

// writeFrameLocked writes one masked frame; on failure it kills the
// connection. wmu must be held.
func (cn *conn) writeFrameLocked(op ws.OpCode, payload []byte) error {
	mask := ws.NewMask()
	b := cn.wbuf[:0]
	b = append(b, 0x80|byte(op))
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, mask[:]...)
	at := len(b)
	b = append(b, payload...)
	ws.Cipher(b[at:], mask, 0)
	cn.nc.SetWriteDeadline(time.Now().Add(cn.cl.opts.PingTimeout))
	_, err := cn.nc.Write(b)
	if cap(b) <= 1<<20 {
		cn.wbuf = b
	} else {
		cn.wbuf = nil
	}
	if err != nil {
		cn.kill(&CloseError{Code: CloseAbnormal, Err: err})
	}
	return err
}

// send registers c (when not nil) under a fresh id and writes cmd. It
// returns errNotSent when the connection is already dead; a failed write
// instead kills the connection, which then finishes c.
func (cn *conn) send(cmd *codec.Command, c *call) error {
	cmd.ID = cn.cl.nextID.Add(1)
	cmd.HasID = true
	cn.mu.Lock()
	if cn.dead {
		cn.mu.Unlock()
		return errNotSent
	}
	if c != nil {
		cn.pending[cmd.ID] = c
	}
	cn.mu.Unlock()

	op := ws.OpText
	if cn.enc == codec.Msgpack {
		op = ws.OpBinary
	}
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	if cn.closeSent {
		// Closing: the reader will end and finish c.
		return nil
	}
	cn.cbuf = codec.AppendCommand(cn.cbuf[:0], cn.enc, cmd)
	cn.writeFrameLocked(op, cn.cbuf)
	if cap(cn.cbuf) > 1<<20 {
		cn.cbuf = nil
	}
	return nil
}

// forget drops the pending call id: its reply, if it comes, is discarded.
func (cn *conn) forget(id uint64) {
	cn.mu.Lock()
	delete(cn.pending, id)
	cn.mu.Unlock()
}

// kill ends the connection from the client's side for reason (the reader
// returns and reports it).
func (cn *conn) kill(reason error) {
	cn.mu.Lock()
	if cn.abort == nil {
		cn.abort = reason
	}
	cn.mu.Unlock()
	cn.nc.Close()
}

// isDone reports whether the connection has ended.
func (cn *conn) isDone() bool {
	select {
	case <-cn.done:
		return true
	default:
		return false
	}
}

// readLoop is the connection's reader goroutine.
func (cn *conn) readLoop() {
	var err error
	for {
		var msg []byte
		msg, err = cn.readMessage()
		if err != nil {
			break
		}
		var m codec.ServerMessage
		if e := codec.DecodeServerMessage(cn.enc, msg, &m); e != nil {
			cn.cl.log.Warn("fanout: undecodable message from server", "err", e)
			cn.sendClose(1007, "undecodable message")
			err = &CloseError{Code: 1007, Err: fmt.Errorf("undecodable message from server: %w", e)}
			break
		}
		cn.handle(&m)
	}
	cn.nc.Close()
	cn.mu.Lock()
	if cn.abort != nil {
		err = cn.abort
	}
	cn.mu.Unlock()
	cn.fail(closeErrorOf(err))
}

// closeErrorOf maps a read error to the *CloseError it means.
func closeErrorOf(err error) error {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce
	}
	return &CloseError{Code: CloseAbnormal, Err: err}
}

// handle routes one message from the reader goroutine.
func (cn *conn) handle(m *codec.ServerMessage) {
	switch m.Push {
	case codec.PushNone:
		if !m.HasID {
			cn.cl.log.Warn("fanout: reply without id", "code", m.ErrorCode, "message", m.ErrorMessage)
			return
		}
		cn.mu.Lock()
		c := cn.pending[m.ID]
		delete(cn.pending, m.ID)
		cn.mu.Unlock()
		if c == nil {
			return // abandoned (its context ended) or unknown: discarded
		}
		if c.onReply != nil {
			c.onReply(m)
		}
		c.finish(m, nil)
	case codec.PushPub:
		ch := m.Pub.Channel
		if ch == "" {
			ch = m.Channel
		}
		if s := cn.cl.subscription(ch); s != nil {
			p := publication(cn.enc, &m.Pub)
			p.Channel = ch
			s.onPush(cn, event{kind: evPub, pub: p})
		}
	case codec.PushJoin, codec.PushLeave:
		if s := cn.cl.subscription(m.Channel); s != nil {
			kind := Join
			if m.Push == codec.PushLeave {
				kind = Leave
			}
			s.onPush(cn, event{kind: evPresence, pres: PresenceEvent{Channel: m.Channel, Kind: kind, Info: m.Info}})
		}
	case codec.PushConnected:
		// Only the first message of a connection; ignore a repeat.
	}
}

// fail marks the connection dead for err, fails its pending calls and tells
// the client. It runs once, on the reader goroutine.
func (cn *conn) fail(err error) {
	cn.mu.Lock()
	cn.dead = true
	cn.err = err
	pending := cn.pending
	cn.pending = nil
	cn.mu.Unlock()
	lost := cn.cl.lostError(err)
	for _, c := range pending {
		c.finish(nil, lost)
	}
	cn.cl.connLost(cn)
	close(cn.done)
}

// shutdown closes the connection gracefully: close frame, wait for the
// server's answer (bounded), then the TCP connection.
func (cn *conn) shutdown(code int, reason string) {
	cn.sendClose(code, reason)
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-cn.done:
	case <-t.C:
		cn.kill(&CloseError{Code: code, Reason: reason})
		<-cn.done
	}
}
