package engine

import (
	"bytes"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/deflate"
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
//
// Each call searches only the bytes that are new since the previous one
// (c.scanned; see headEnd): a client sending its head a byte at a time
// costs time linear in the head, not quadratic.
func (s *Server) handshake(c *Conn, b []byte) (used int, detach bool) {
	end, _ := headEnd(b, int(c.scanned))
	if end == 0 {
		c.scanned = int32(min(len(b), maxRequestHeaderBytes))
		if len(b) >= maxRequestHeaderBytes {
			s.stats.upgradeFailed(failHeadTooLarge)
			c.reject(httpError(431, "Request Header Fields Too Large", "", "request head over 16 KiB"))
			return -1, false
		}
		return 0, false
	}
	c.scanned = 0
	if end > maxRequestHeaderBytes {
		// A head that long arrived in one read: the bound is the same.
		s.stats.upgradeFailed(failHeadTooLarge)
		c.reject(httpError(431, "Request Header Fields Too Large", "", "request head over 16 KiB"))
		return -1, false
	}
	head := b[:end]
	if !isWebSocketPath(head) {
		return 0, true
	}
	if !s.upgrade(c, head) {
		return -1, false
	}
	return len(head), false
}

// headEnd returns the length of the request head at the start of b, or 0
// while its end has not arrived. The first scanned bytes of b were searched
// before and hold no end, so the search starts from there, less three
// bytes: the "\r\n\r\n" may straddle the boundary. from is where it
// started.
func headEnd(b []byte, scanned int) (end, from int) {
	from = max(min(scanned, len(b))-(len(headerEnd)-1), 0)
	if i := bytes.Index(b[from:], headerEnd); i >= 0 {
		return from + i + len(headerEnd), from
	}
	return 0, from
}

// httpError builds a complete HTTP error response with a short plain-text
// body, for a request the server answers itself and then closes. header is
// "" or extra header lines, each ending in CRLF.
func httpError(status int, text, header, reason string) *wsframe.Frame {
	f := wsframe.Get()
	f.B = append(f.B, "HTTP/1.1 "...)
	f.B = strconv.AppendInt(f.B, int64(status), 10)
	f.B = append(f.B, ' ')
	f.B = append(f.B, text...)
	f.B = append(f.B, "\r\n"...)
	f.B = append(f.B, header...)
	f.B = append(f.B, "Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "...)
	f.B = strconv.AppendInt(f.B, int64(len(reason)+1), 10)
	f.B = append(f.B, "\r\n\r\n"...)
	f.B = append(f.B, reason...)
	f.B = append(f.B, '\n')
	return f.FinishRaw()
}

// isWebSocketPath reports whether the request line targets /ws, whatever the
// method: gobwas/ws answers a wrong method with 405 and a missing or bad
// header with 400/426, which is what a client of /ws should hear. The target
// may be in origin form ("/ws") or absolute form ("http://host/ws", which
// RFC 7230 5.3.2 says a server must accept).
func isWebSocketPath(head []byte) bool {
	line := head
	if nl := bytes.IndexByte(head, '\n'); nl >= 0 {
		line = head[:nl+1]
	}
	sp := bytes.IndexByte(line, ' ')
	if sp < 0 {
		return false
	}
	uri := line[sp+1:]
	if _, path, ok := splitAbsoluteURI(uri); ok {
		uri = path
	}
	if !bytes.HasPrefix(uri, []byte("/ws")) || len(uri) < 4 {
		return false
	}
	switch uri[3] {
	case ' ', '?':
		return true
	}
	return false
}

// splitAbsoluteURI splits a request target in absolute form, with the http,
// https, ws or wss scheme, into its authority and what follows it (the path,
// query and anything after them in the request line). ok is false for any
// other target.
func splitAbsoluteURI(uri []byte) (authority, rest []byte, ok bool) {
	i := bytes.Index(uri, []byte("://"))
	if i < 2 || i > 5 {
		return nil, nil, false
	}
	switch scheme := uri[:i]; {
	case bytes.EqualFold(scheme, []byte("http")), bytes.EqualFold(scheme, []byte("https")),
		bytes.EqualFold(scheme, []byte("ws")), bytes.EqualFold(scheme, []byte("wss")):
	default:
		return nil, nil, false
	}
	rest = uri[i+3:]
	end := bytes.IndexAny(rest, "/? \r\n")
	if end < 0 {
		end = len(rest)
	}
	return rest[:end], rest[end:], true
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

// upgradeState collects what the header callbacks saw. Byte slices point
// into gobwas/ws's read buffer and are valid until the upgrade returns.
type upgradeState struct {
	s    *Server
	c    *Conn  // the connection being upgraded
	head []byte // the whole request head (admission reads Sec-WebSocket-Key)
	host []byte
	// uri is the request target (path and query), for the token query
	// parameter.
	uri []byte
	// origins counts Origin headers: a request with more than one is
	// refused (which one would a browser have meant?).
	origins       int
	authorization []byte // the Authorization header
	// The X-Forwarded-* headers, honoured only from a trusted proxy.
	forwardedFor   []byte
	forwardedHost  []byte
	forwardedProto []byte
	// targetHost is the authority of a request target in absolute form,
	// which then names the host instead of the Host header (RFC 7230 5.5).
	targetHost      []byte
	origin          []byte
	protocolOffered bool
	protocol        string
	// ext negotiates permessage-deflate.
	ext deflate.Negotiator
	// counted: the refusal was counted where it was decided (admission,
	// beforeUpgrade); any other is gobwas/ws's (failBadRequest).
	counted bool
}

var errBadSubprotocol = ws.RejectConnectionError(
	ws.RejectionStatus(400),
	ws.RejectionReason("unsupported subprotocol: supported are "+codec.SubprotocolJSON+", "+codec.SubprotocolMsgpack),
)

var headerOrigin = []byte("Origin")

func (u *upgradeState) onRequest(uri []byte) error {
	u.uri = uri
	if authority, _, ok := splitAbsoluteURI(uri); ok {
		u.targetHost = authority
	}
	return nil
}

func (u *upgradeState) onHost(host []byte) error {
	u.host = host
	return nil
}

func (u *upgradeState) onHeader(key, value []byte) error {
	switch {
	case bytes.EqualFold(key, headerOrigin):
		u.origin = value
		u.origins++
	case bytes.EqualFold(key, headerAuthorization):
		u.authorization = value
	case bytes.EqualFold(key, headerForwardedFor):
		u.forwardedFor = value
	case bytes.EqualFold(key, headerForwardedHost):
		u.forwardedHost = value
	case bytes.EqualFold(key, headerForwardedProto):
		u.forwardedProto = value
	}
	return nil
}

var (
	headerAuthorization  = []byte("Authorization")
	headerForwardedFor   = []byte("X-Forwarded-For")
	headerForwardedHost  = []byte("X-Forwarded-Host")
	headerForwardedProto = []byte("X-Forwarded-Proto")
)

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

// beforeUpgrade decides, once every header has been read, whether the
// upgrade goes ahead: admission (admission.go: origin, limits, load), the
// subprotocol, then authentication (authn.go). A refusal is a
// ws.RejectConnectionError carrying its HTTP status and reason.
func (u *upgradeState) beforeUpgrade() (ws.HandshakeHeader, error) {
	if err := u.s.admit(u); err != nil {
		u.counted = true // by cause, in admission
		return nil, err
	}
	if u.protocolOffered && u.protocol == "" && !u.s.cfg.Echo {
		u.counted = true
		u.s.stats.upgradeFailed(failBadSubprotocol)
		return nil, errBadSubprotocol
	}
	hh, err := u.s.authenticate(u)
	if err != nil {
		u.counted = true
		u.s.stats.upgradeFailed(failUnauthorized)
	}
	return hh, err
}

// upgrade performs the WebSocket handshake on the request head with
// gobwas/ws. On success the response and the connected push leave in one
// write and the connection joins the server as an open WebSocket.
func (s *Server) upgrade(c *Conn, head []byte) bool {
	if s.draining.Load() {
		// The drain delay: a load balancer is taking the node out.
		s.stats.upgradeFailed(failDraining)
		retry := strconv.FormatInt(int64(max(s.cfg.RetryAfterMin.Round(time.Second)/time.Second, 1)), 10)
		c.reject(httpError(503, "Service Unavailable", "Retry-After: "+retry+"\r\n", "server draining, retry later"))
		return false
	}
	resp := wsframe.Get()
	hs, err := s.negotiate(c, head, resp)
	resp.FinishRaw()
	if err != nil {
		if resp.Len() == 0 {
			// gobwas/ws writes nothing for a request line it cannot parse
			// ("GET /ws HTTX/9.9", "GET /ws "): answer it here, never with
			// an empty response.
			resp.Release()
			resp = httpError(400, "Bad Request", "", "malformed HTTP request line")
		}
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
	if c.deflate {
		s.stats.deflateUpgrades.Add(1)
	}
	s.stats.open.Add(1)
	if s.cfg.Echo || c.pending() {
		// A pending connection (authn.go) gets its connected push after
		// its connect command.
		c.Send(resp)
		s.closeIfDraining(c)
		return true
	}
	connected := wsframe.Get()
	connected.B = codec.AppendConnected(connected.B, c.enc, c.info)
	connected.Finish(c.dataOpCode())
	// The 101 response and the connected push leave in one writev.
	c.SendBatch([]*wsframe.Frame{resp, connected})
	s.closeIfDraining(c)
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
		// The whole head fits in the read buffer (handshake bounds it), so
		// the header values the callbacks keep stay valid until the end.
		ReadBufferSize:  maxRequestHeaderBytes,
		OnRequest:       up.st.onRequest,
		ProtocolCustom:  up.st.selectProtocol,
		OnHost:          up.st.onHost,
		OnHeader:        up.st.onHeader,
		OnBeforeUpgrade: up.st.beforeUpgrade,
		Negotiate:       up.st.ext.Negotiate,
	}
	return up
}}

// negotiate runs gobwas/ws's upgrader over a complete request head and
// appends the response (101 or the rejection) to out.B.
func (s *Server) negotiate(c *Conn, head []byte, out *wsframe.Frame) (ws.Handshake, error) {
	up := upgraderPool.Get().(*upgrader)
	up.st = upgradeState{s: s, c: c, head: head}
	up.st.ext.Off = s.cfg.Compression == CompressionOff
	up.hsio = handshakeIO{head: head, out: out}
	hs, err := up.u.Upgrade(&up.hsio)
	c.deflate = err == nil && up.st.ext.Accepted()
	if err != nil && !up.st.counted {
		s.stats.upgradeFailed(failBadRequest)
	}
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
