package engine

import (
	"bytes"
	"io"
	"sync"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// maxRequestHeaderBytes bounds an upgrade (or HTTP) request head.
const maxRequestHeaderBytes = 16 << 10

var headerEnd = []byte("\r\n\r\n")

// handshake handles the input of a connection that has not upgraded yet,
// b being every byte it sent so far. Until the request head is complete it
// keeps waiting (used 0; the sweeper enforces HandshakeTimeout). A complete
// head for /ws is upgraded with gobwas/ws and used is its length; any other
// head means the connection is ordinary HTTP and detach is set. used < 0:
// the handshake failed and the connection is closing.
func (s *Server) handshake(c *Conn, b []byte) (used int, detach bool) {
	i := bytes.Index(b, headerEnd)
	if i < 0 {
		if len(b) >= maxRequestHeaderBytes {
			resp := wsframe.Get()
			resp.B = append(resp.B, "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"...)
			resp.FinishRaw()
			c.reject(resp)
			return -1, false
		}
		return 0, false
	}
	head := b[:i+len(headerEnd)]
	if !isWebSocketPath(head) {
		return 0, true
	}
	if !s.upgrade(c, head) {
		return -1, false
	}
	return len(head), false
}

// isWebSocketPath reports whether the request line targets /ws, whatever the
// method: gobwas/ws answers a wrong method with 405 and a missing or bad
// header with 400/426, which is what a client of /ws should hear.
func isWebSocketPath(head []byte) bool {
	sp := bytes.IndexByte(head, ' ')
	if sp < 0 {
		return false
	}
	uri := head[sp+1:]
	if !bytes.HasPrefix(uri, []byte("/ws")) || len(uri) < 4 {
		return false
	}
	switch uri[3] {
	case ' ', '?':
		return true
	}
	return false
}

// handshakeIO feeds gobwas/ws the request head straight from netpoll's
// buffer (or c.inbuf when it arrived in pieces) and collects its response in a pooled frame buffer, written by the
// connection's direct writev: netpoll's output buffer would keep a node per
// connection after the handshake.
type handshakeIO struct {
	head []byte
	out  *wsframe.Frame
}

func (h *handshakeIO) Read(p []byte) (int, error) {
	if len(h.head) == 0 {
		return 0, io.EOF
	}
	n := copy(p, h.head)
	h.head = h.head[n:]
	return n, nil
}

func (h *handshakeIO) Write(p []byte) (int, error) {
	h.out.B = append(h.out.B, p...)
	return len(p), nil
}

// upgradeState collects what the header callbacks saw.
type upgradeState struct {
	s               *Server
	host            []byte
	origin          []byte
	protocolOffered bool
	protocol        string
}

var errBadSubprotocol = ws.RejectConnectionError(
	ws.RejectionStatus(400),
	ws.RejectionReason("unsupported subprotocol: supported are "+codec.SubprotocolJSON+", "+codec.SubprotocolMsgpack),
)

var errOriginForbidden = ws.RejectConnectionError(
	ws.RejectionStatus(403),
	ws.RejectionReason("origin not allowed"),
)

var headerOrigin = []byte("Origin")

func (u *upgradeState) onHost(host []byte) error {
	u.host = host
	return nil
}

func (u *upgradeState) onHeader(key, value []byte) error {
	if bytes.EqualFold(key, headerOrigin) {
		u.origin = value
	}
	return nil
}

// selectProtocol picks the first supported subprotocol from one
// Sec-WebSocket-Protocol header value. Constant results: no allocation.
func (u *upgradeState) selectProtocol(v []byte) (string, bool) {
	u.protocolOffered = true
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		item = bytes.TrimSpace(item)
		switch string(item) {
		case codec.SubprotocolJSON:
			u.protocol = codec.SubprotocolJSON
			return u.protocol, true
		case codec.SubprotocolMsgpack:
			u.protocol = codec.SubprotocolMsgpack
			return u.protocol, true
		}
	}
	return "", true
}

func (u *upgradeState) beforeUpgrade() (ws.HandshakeHeader, error) {
	if len(u.origin) > 0 && !u.s.originAllowed(u.origin, u.host) {
		return nil, errOriginForbidden
	}
	if u.protocolOffered && u.protocol == "" && !u.s.cfg.Echo {
		return nil, errBadSubprotocol
	}
	return nil, nil
}

// upgrade performs the WebSocket handshake on the request head with
// gobwas/ws. On success the response and the connected push leave in one
// write and the connection joins the server as an open WebSocket.
func (s *Server) upgrade(c *Conn, head []byte) bool {
	resp := wsframe.Get()
	hs, err := s.negotiate(head, resp)
	resp.FinishRaw()
	if err != nil {
		c.reject(resp)
		return false
	}
	switch hs.Protocol {
	case codec.SubprotocolMsgpack:
		c.enc = codec.Msgpack
	default:
		c.enc = codec.JSON
	}
	c.info.Client = s.nextClientID()
	if !c.state.CompareAndSwap(stateHandshake, stateOpen) {
		resp.Release()
		return false
	}
	s.stats.upgrades.Add(1)
	s.stats.open.Add(1)
	if s.cfg.Echo {
		c.Send(resp)
		return true
	}
	connected := wsframe.Get()
	connected.B = codec.AppendConnected(connected.B, c.enc, c.info)
	connected.Finish(c.dataOpCode())
	// The 101 response and the connected push leave in one writev.
	c.SendBatch([]*wsframe.Frame{resp, connected})
	return true
}

// upgrader is one pooled handshake: gobwas/ws's Upgrader with its callbacks
// bound once to the state they fill, so a handshake allocates none of them.
type upgrader struct {
	st   upgradeState
	u    ws.Upgrader
	hsio handshakeIO
}

var upgraderPool = sync.Pool{New: func() any {
	up := new(upgrader)
	up.u = ws.Upgrader{
		ProtocolCustom:  up.st.selectProtocol,
		OnHost:          up.st.onHost,
		OnHeader:        up.st.onHeader,
		OnBeforeUpgrade: up.st.beforeUpgrade,
	}
	return up
}}

// negotiate runs gobwas/ws's upgrader over a complete request head and
// appends the response (101 or the rejection) to out.B.
func (s *Server) negotiate(head []byte, out *wsframe.Frame) (ws.Handshake, error) {
	up := upgraderPool.Get().(*upgrader)
	up.st = upgradeState{s: s}
	up.hsio = handshakeIO{head: head, out: out}
	hs, err := up.u.Upgrade(&up.hsio)
	up.st = upgradeState{}
	up.hsio = handshakeIO{}
	upgraderPool.Put(up)
	return hs, err
}

// dataOpCode is the frame kind of the connection's encoding.
func (c *Conn) dataOpCode() ws.OpCode {
	if c.enc == codec.Msgpack {
		return ws.OpBinary
	}
	return ws.OpText
}

// originAllowed implements the cross-site WebSocket hijacking check: a
// browser's Origin must be the server's own host or on the allow-list.
func (s *Server) originAllowed(origin, host []byte) bool {
	if s.allowAnyOrigin {
		return true
	}
	for _, o := range s.allowedOrigins {
		if bytes.EqualFold(origin, o) {
			return true
		}
	}
	// Origin is scheme "://" host [":" port], no path (RFC 6454).
	i := bytes.Index(origin, []byte("://"))
	if i < 0 {
		return false
	}
	return len(host) > 0 && bytes.EqualFold(origin[i+3:], host)
}
