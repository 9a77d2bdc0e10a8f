package conformance

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fanout-dev/fanout/engine"
	"github.com/gobwas/ws"
)

// Close codes the suite expects (RFC 6455 7.4.1).
const (
	codeNormal   uint16 = 1000
	codeProtocol uint16 = 1002
	codeInvalid  uint16 = 1007
	codeTooBig   uint16 = 1009
)

// Timeouts. A frame the server owes us must arrive within readTimeout; the
// machine running the suite may be busy and built with -race, so it is
// generous, and a case that waits for it fails only when the server is
// wrong.
const (
	readTimeout = 5 * time.Second
	// failFastWithin bounds the wait for a close that must come at once:
	// well under the server's FrameTimeout, so a server that waits for the
	// rest of a message is caught, not rescued by its timer.
	failFastWithin = 3 * time.Second
)

// externalURL, from FANOUT_CONFORMANCE_URL (ws://host:port/path), runs
// the suite against a server already listening there instead of one
// started in the test: a fanout started with --echo
// --max-message-bytes 16777216 (the size the 9.x cases send, and the limit
// their 1009 cases expect), a proxy in front of one, or another server.
var externalURL = os.Getenv("FANOUT_CONFORMANCE_URL")

// wsPath is the path upgrades are requested at.
var wsPath = "/ws"

// startEcho starts a real server in Echo mode on a loopback port and stops
// it when the test ends, and returns its address. mod adjusts its
// configuration. With FANOUT_CONFORMANCE_URL it returns that server's
// address instead.
func startEcho(t testing.TB, mod func(*engine.Config)) string {
	t.Helper()
	if externalURL != "" {
		u, err := url.Parse(externalURL)
		if err != nil || u.Scheme != "ws" || u.Host == "" {
			t.Fatalf("FANOUT_CONFORMANCE_URL=%q: want ws://host:port/path", externalURL)
		}
		if u.Path != "" {
			wsPath = u.Path
		}
		return u.Host
	}
	cfg := engine.Config{
		Addr:   "127.0.0.1:0",
		Echo:   true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// Defaults otherwise: FrameTimeout (10 s) is far longer than
		// failFastWithin, so a server that waits for the rest of a
		// message is caught, not rescued by its timer.
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.Addr().String()
}

// expectReleased waits until the server holds no WebSocket (its
// fanout_connections gauge, on the public port's /metrics): every case
// ends with the connection closed from both sides, and the server must
// then let go of it (RFC 6455 7.1.1: the TCP connection is closed once the
// closing handshake is done).
func expectReleased(t *testing.T, addr string) {
	t.Helper()
	if externalURL != "" {
		return // not necessarily fanout, nor only this suite's connections
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := metric(addr, "fanout_connections")
		if err == nil && v == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the last case: fanout_connections = %v (%v), want 0", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("/metrics: no %s", name)
}

// ---- Frames the client sends.

// frame is a client frame as a fuzzer builds it: any flags, any opcode,
// any length encoding, masked or not.
type frame struct {
	fin      bool
	rsv      byte // the three RSV bits as a number: 4 = RSV1, 2 = RSV2, 1 = RSV3
	op       ws.OpCode
	payload  []byte
	lenBytes int  // 0: minimal; 1: 7-bit, 2: 16-bit, 8: 64-bit as given
	unmasked bool // send without a masking key
	rawLen   *uint64
}

func text(p string) frame { return frame{fin: true, op: ws.OpText, payload: []byte(p)} }
func bin(p []byte) frame  { return frame{fin: true, op: ws.OpBinary, payload: p} }
func ping(p string) frame { return frame{fin: true, op: ws.OpPing, payload: []byte(p)} }
func pong(p string) frame { return frame{fin: true, op: ws.OpPong, payload: []byte(p)} }

// frag is a data or continuation frame with fin as given.
func frag(op ws.OpCode, fin bool, p []byte) frame { return frame{fin: fin, op: op, payload: p} }

// closeFrame is a close frame with the code and reason (closeEmpty has
// none).
func closeFrame(code uint16, reason string) frame {
	p := binary.BigEndian.AppendUint16(nil, code)
	return frame{fin: true, op: ws.OpClose, payload: append(p, reason...)}
}

func closeEmpty() frame { return frame{fin: true, op: ws.OpClose} }

// bytes encodes f with a random masking key.
func (f frame) bytes() []byte {
	b0 := byte(f.op&0x0f) | (f.rsv&7)<<4
	if f.fin {
		b0 |= 0x80
	}
	var mbit byte = 0x80
	if f.unmasked {
		mbit = 0
	}
	n := len(f.payload)
	b := make([]byte, 0, 14+n)
	b = append(b, b0)
	lb := f.lenBytes
	if lb == 0 {
		switch {
		case n <= 125:
			lb = 1
		case n <= 0xffff:
			lb = 2
		default:
			lb = 8
		}
	}
	switch lb {
	case 1:
		b = append(b, mbit|byte(n))
	case 2:
		b = append(b, mbit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	case 8:
		b = append(b, mbit|127)
		l := uint64(n)
		if f.rawLen != nil {
			l = *f.rawLen
		}
		b = binary.BigEndian.AppendUint64(b, l)
	}
	if f.unmasked {
		return append(b, f.payload...)
	}
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], mrand.Uint32()|1)
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, f.payload...)
	ws.Cipher(b[start:], mask, 0)
	return b
}

func encode(fs ...frame) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, f.bytes()...)
	}
	return b
}

// ---- The client.

type dialOpts struct {
	rcvBuf int // SO_RCVBUF before connect; 0: the kernel's default
	// A slow reader: each read takes at most piece bytes, and it pauses
	// for pause after every pauseEvery bytes.
	piece      int
	pause      time.Duration
	pauseEvery int
	// extensions is the Sec-WebSocket-Extensions header offered; empty:
	// none (the response must then accept none).
	extensions string
}

type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
	// timeout is the deadline of each expectation.
	timeout time.Duration
	// An unfinished fragmented message from the server.
	fragOp ws.OpCode
	frag   []byte
	// writeErr is set once the server refused more input.
	writeErr error
	// accepted is the Sec-WebSocket-Extensions the server answered;
	// deflate: it accepted permessage-deflate, so RSV1 marks compressed
	// messages (compression_test.go checks what it accepted).
	accepted string
	deflate  bool
	// fragCompressed: the unfinished fragmented message is compressed.
	fragCompressed bool
	// compressedIn counts compressed messages received; window is the
	// inflate context kept when the server did not promise
	// server_no_context_takeover.
	compressedIn int
	window       []byte
}

func dial(t testing.TB, addr string) *client { return dialWith(t, addr, dialOpts{}) }

func dialWith(t testing.TB, addr string, o dialOpts) *client {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if o.rcvBuf > 0 {
		d.Control = func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvBuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	var r io.Reader = nc
	if o.piece > 0 {
		r = &slowReader{r: nc, piece: o.piece, pause: o.pause, every: o.pauseEvery}
	}
	c := &client{t: t, nc: nc, br: bufio.NewReaderSize(r, 4096), timeout: readTimeout}
	c.handshake(o.extensions)
	return c
}

// slowReader reads at most piece bytes at a time and pauses every so often,
// so that the server's writes back up into its own queue.
type slowReader struct {
	r     io.Reader
	piece int
	pause time.Duration
	every int
	n     int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if len(p) > s.piece {
		p = p[:s.piece]
	}
	n, err := s.r.Read(p)
	s.n += n
	if s.every > 0 && s.n >= s.every {
		s.n = 0
		time.Sleep(s.pause)
	}
	return n, err
}

const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func (c *client) handshake(extensions string) {
	c.t.Helper()
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + wsPath + " HTTP/1.1\r\nHost: " + c.nc.RemoteAddr().String() + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n"
	if extensions != "" {
		req += "Sec-WebSocket-Extensions: " + extensions + "\r\n"
	}
	req += "\r\n"
	_ = c.nc.SetDeadline(time.Now().Add(c.timeout))
	defer c.nc.SetDeadline(time.Time{})
	if _, err := c.nc.Write([]byte(req)); err != nil {
		c.t.Fatalf("handshake: %v", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatalf("handshake: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		c.t.Fatalf("handshake: %s %s", resp.Status, body)
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), base64.StdEncoding.EncodeToString(sum[:]); got != want {
		c.t.Fatalf("handshake: Sec-WebSocket-Accept %q, want %q", got, want)
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
		c.t.Fatalf("handshake: Upgrade %q", resp.Header.Get("Upgrade"))
	}
	e := strings.Join(resp.Header.Values("Sec-WebSocket-Extensions"), ", ")
	if e != "" && extensions == "" {
		// No extension was offered: none may be accepted (RFC 6455 9.1),
		// and RSV1 stays reserved on this connection.
		c.t.Fatalf("handshake: extension %q accepted without an offer", e)
	}
	c.accepted = e
	c.deflate = e != ""
	if c.deflate {
		checkDeflateResponse(c.t, extensions, e)
	}
}

// send writes the frames in one write.
func (c *client) send(fs ...frame) { c.write(encode(fs...)) }

// write writes b. A server that has failed the connection may stop
// reading, or reset it, before the client is done writing what a case
// sends after the offending frame: the rest is then dropped, and the case's
// expectations (the close frame it must have sent first) decide.
func (c *client) write(b []byte) {
	c.t.Helper()
	if c.writeErr != nil {
		return
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.nc.Write(b); err != nil {
		if !isConnError(err) {
			c.t.Fatalf("write: %v", err)
		}
		c.writeErr = err
	}
}

// sendPerFrame writes each frame in a write of its own, pausing between.
func (c *client) sendPerFrame(pause time.Duration, fs ...frame) {
	c.t.Helper()
	for i, f := range fs {
		if i > 0 && pause > 0 {
			time.Sleep(pause)
		}
		c.write(f.bytes())
	}
}

// sendChunked writes the frames' bytes in writes of chunk bytes, pausing
// between them.
func (c *client) sendChunked(chunk int, pause time.Duration, fs ...frame) {
	c.t.Helper()
	c.writeChunked(encode(fs...), chunk, pause)
}

func (c *client) writeChunked(b []byte, chunk int, pause time.Duration) {
	c.t.Helper()
	for len(b) > 0 {
		n := min(chunk, len(b))
		c.write(b[:n])
		b = b[n:]
		if pause > 0 && len(b) > 0 {
			time.Sleep(pause)
		}
	}
}

// isConnError reports an error writing to a connection the server has
// closed or reset.
func isConnError(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// ---- What the server sends.

// event is a complete message from the server (text or binary, its
// fragments reassembled) or a control frame.
type event struct {
	op      ws.OpCode
	payload []byte
}

func (e event) String() string {
	switch e.op {
	case ws.OpClose:
		if len(e.payload) >= 2 {
			return fmt.Sprintf("close %d %q", binary.BigEndian.Uint16(e.payload), e.payload[2:])
		}
		return fmt.Sprintf("close (payload %x)", e.payload)
	case ws.OpText, ws.OpBinary, ws.OpPing, ws.OpPong:
		return fmt.Sprintf("%s of %d bytes %s", opName(e.op), len(e.payload), preview(e.payload))
	}
	return fmt.Sprintf("opcode %d", e.op)
}

func opName(op ws.OpCode) string {
	switch op {
	case ws.OpText:
		return "text"
	case ws.OpBinary:
		return "binary"
	case ws.OpPing:
		return "ping"
	case ws.OpPong:
		return "pong"
	case ws.OpClose:
		return "close"
	case ws.OpContinuation:
		return "continuation"
	}
	return fmt.Sprintf("opcode-%d", op)
}

func preview(p []byte) string {
	if len(p) > 32 {
		return fmt.Sprintf("%q...", p[:32])
	}
	return fmt.Sprintf("%q", p)
}

// errEOF is what next returns once the server has closed the connection.
var errEOF = errors.New("server closed the TCP connection")

// next reads the server's next event within c.timeout. Any violation of
// RFC 6455 by the server fails the test.
func (c *client) next() (event, error) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(c.timeout))
	for {
		var hb [2]byte
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return event{}, errEOF
			}
			return event{}, err
		}
		fin := hb[0]&0x80 != 0
		rsv := hb[0] & 0x70
		op := ws.OpCode(hb[0] & 0x0f)
		if hb[1]&0x80 != 0 {
			c.t.Fatalf("server sent a masked frame (RFC 6455 5.1)")
		}
		compressed := false
		switch {
		case rsv == 0:
		case rsv == 0x40 && c.deflate:
			if op != ws.OpText && op != ws.OpBinary {
				c.t.Fatalf("server set RSV1 on a %s frame (RFC 7692 6: only the first frame of a data message)", opName(op))
			}
			compressed = true
		case c.deflate:
			c.t.Fatalf("server sent RSV bits %#x; permessage-deflate allows only RSV1 (RFC 6455 5.2)", rsv>>4)
		default:
			c.t.Fatalf("server sent RSV bits %#x with no extension negotiated (RFC 6455 5.2)", rsv>>4)
		}
		n := uint64(hb[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return event{}, fmt.Errorf("reading a frame header: %w", err)
			}
			n = uint64(binary.BigEndian.Uint16(l[:]))
			if n < 126 {
				c.t.Fatalf("server used a 16-bit length for %d bytes (RFC 6455 5.2: minimal)", n)
			}
		case 127:
			var l [8]byte
			if _, err := io.ReadFull(c.br, l[:]); err != nil {
				return event{}, fmt.Errorf("reading a frame header: %w", err)
			}
			n = binary.BigEndian.Uint64(l[:])
			if n>>63 != 0 || n <= 0xffff {
				c.t.Fatalf("server sent 64-bit length %#x (RFC 6455 5.2)", n)
			}
		}
		if n > 64<<20 {
			c.t.Fatalf("server frame of %d bytes: more than the suite ever sends", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return event{}, fmt.Errorf("reading a payload of %d bytes: %w", n, err)
		}
		switch op {
		case ws.OpPing, ws.OpPong, ws.OpClose:
			if !fin || n > 125 {
				c.t.Fatalf("server sent a %s frame with fin=%v and %d bytes (RFC 6455 5.5)", opName(op), fin, n)
			}
			if op == ws.OpClose {
				c.checkClosePayload(p)
			}
			return event{op, p}, nil
		case ws.OpText, ws.OpBinary:
			if c.fragOp != 0 {
				c.t.Fatalf("server started a %s message inside a fragmented one (RFC 6455 5.4)", opName(op))
			}
			if compressed {
				c.countCompressed()
			}
			if fin {
				return c.message(op, c.maybeInflate(compressed, p)), nil
			}
			c.fragOp, c.frag, c.fragCompressed = op, p, compressed
		case ws.OpContinuation:
			if c.fragOp == 0 {
				c.t.Fatalf("server sent a continuation frame with no message to continue (RFC 6455 5.4)")
			}
			c.frag = append(c.frag, p...)
			if fin {
				op, msg := c.fragOp, c.maybeInflate(c.fragCompressed, c.frag)
				c.fragOp, c.frag, c.fragCompressed = 0, nil, false
				return c.message(op, msg), nil
			}
		default:
			c.t.Fatalf("server sent reserved opcode %d (RFC 6455 5.2)", op)
		}
	}
}

func (c *client) message(op ws.OpCode, p []byte) event {
	c.t.Helper()
	// (Larger text is only ever compared with a valid message the suite
	// sent, which checks it at less cost under -race.)
	if op == ws.OpText && len(p) <= 1<<20 && !utf8.Valid(p) {
		c.t.Fatalf("server sent a text message that is not UTF-8 (RFC 6455 5.6)")
	}
	return event{op, p}
}

// checkClosePayload checks a close frame the server sent: empty or a code
// an endpoint may send, and a UTF-8 reason (RFC 6455 5.5.1, 7.4).
func (c *client) checkClosePayload(p []byte) {
	c.t.Helper()
	if len(p) == 0 {
		return
	}
	if len(p) == 1 {
		c.t.Fatalf("server sent a close frame of one byte (RFC 6455 5.5.1)")
	}
	code := binary.BigEndian.Uint16(p)
	if !(code >= 1000 && code <= 1003 || code >= 1007 && code <= 1014 || code >= 3000 && code <= 4999) {
		c.t.Fatalf("server sent close code %d, which may not be sent (RFC 6455 7.4)", code)
	}
	if !utf8.Valid(p[2:]) {
		c.t.Fatalf("server sent a close reason that is not UTF-8 (RFC 6455 5.5.1)")
	}
}

// mustNext is next, failing the test on a read error or EOF; want says
// what was expected, for the message.
func (c *client) mustNext(want string) event {
	c.t.Helper()
	e, err := c.next()
	if err != nil {
		c.t.Fatalf("want %s, got: %v", want, err)
	}
	return e
}

// expectMessage expects the echo of a message.
func (c *client) expectMessage(op ws.OpCode, p []byte) {
	c.t.Helper()
	want := event{op, p}.String()
	e := c.mustNext(want)
	if e.op != op || !bytes.Equal(e.payload, p) {
		c.t.Fatalf("want %s, got %s", want, e)
	}
}

func (c *client) expectText(s string)      { c.t.Helper(); c.expectMessage(ws.OpText, []byte(s)) }
func (c *client) expectBinary(p []byte)    { c.t.Helper(); c.expectMessage(ws.OpBinary, p) }
func (c *client) expectPong(p string)      { c.t.Helper(); c.expectMessage(ws.OpPong, []byte(p)) }
func (c *client) expectPongBytes(p []byte) { c.t.Helper(); c.expectMessage(ws.OpPong, p) }

// expectClose expects a close frame with the code, then the server closing
// the TCP connection: nothing may follow the close frame.
func (c *client) expectClose(code uint16) {
	c.t.Helper()
	want := fmt.Sprintf("close %d", code)
	e := c.mustNext(want)
	if e.op != ws.OpClose || len(e.payload) < 2 || binary.BigEndian.Uint16(e.payload) != code {
		c.t.Fatalf("want %s, got %s", want, e)
	}
	c.expectEOF()
}

// expectCloseWithin is expectClose, the close frame due within d of now
// (fail-fast cases).
func (c *client) expectCloseWithin(code uint16, d time.Duration) {
	c.t.Helper()
	start := time.Now()
	old := c.timeout
	c.timeout = d
	defer func() { c.timeout = old }()
	want := fmt.Sprintf("close %d within %v", code, d)
	e, err := c.next()
	if err != nil {
		c.t.Fatalf("want %s, got after %v: %v", want, time.Since(start).Round(time.Millisecond), err)
	}
	if e.op != ws.OpClose || len(e.payload) < 2 || binary.BigEndian.Uint16(e.payload) != code {
		c.t.Fatalf("want %s, got %s", want, e)
	}
	c.timeout = old
	c.expectEOF()
}

// expectEOF expects the server to close the TCP connection (a FIN, not a
// reset, which could destroy its close frame in flight) with nothing more
// sent.
func (c *client) expectEOF() {
	c.t.Helper()
	e, err := c.next()
	switch {
	case err == errEOF:
	case err != nil:
		c.t.Fatalf("want the server to close the TCP connection after its close frame, got: %v", err)
	default:
		c.t.Fatalf("want the server to close the TCP connection after its close frame, got %s", e)
	}
}

// closeNormally ends a case that left the connection open: a close 1000,
// echoed, then the server's TCP close.
func (c *client) closeNormally() {
	c.t.Helper()
	c.send(closeFrame(codeNormal, ""))
	c.expectClose(codeNormal)
}

// ---- Payloads.

// pattern is n bytes of printable ASCII (valid UTF-8, so usable as text
// too), different for different n.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('!' + (i*7+n)%94)
	}
	return b
}

// randomBytes is n pseudo-random bytes (binary payloads), the same for
// the same n, made once per size. Callers must not modify them.
func randomBytes(n int) []byte {
	randMu.Lock()
	defer randMu.Unlock()
	if b, ok := randoms[n]; ok {
		return b
	}
	b := make([]byte, n)
	r := mrand.NewChaCha8([32]byte{byte(n), byte(n >> 8), byte(n >> 16)})
	_, _ = r.Read(b)
	randoms[n] = b
	return b
}

var (
	randMu  sync.Mutex
	randoms = map[int][]byte{}
)

// fragments splits p into data frames of size bytes (the last may be
// shorter; an empty p is one empty frame): the first with op, the rest
// continuations, the last final.
func fragments(op ws.OpCode, p []byte, size int) []frame {
	var fs []frame
	for first := true; first || len(p) > 0; first = false {
		n := min(size, len(p))
		o := ws.OpContinuation
		if first {
			o = op
		}
		fs = append(fs, frag(o, n == len(p), p[:n]))
		p = p[n:]
	}
	return fs
}
