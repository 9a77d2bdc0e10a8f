package engine

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// startServer starts a real server on a random loopback port and stops it
// when the test ends.
func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func wsURL(s *Server) string { return "ws://" + s.Addr().String() + "/ws" }

// checkFor polls f until it returns nil or timeout passes.
func checkFor(t testing.TB, timeout, interval time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", timeout, err)
		}
		time.Sleep(interval)
	}
}

// rawConn is a client socket driven byte by byte.
type rawConn struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, s *Server) *rawConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

const testKey = "dGhlIHNhbXBsZSBub25jZQ=="

// upgradeRequest builds a handshake request; extra lines are appended as is.
func upgradeRequest(method, path string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", method, path)
	hasKey, hasVersion := false, false
	for _, e := range extra {
		if strings.HasPrefix(e, "Sec-WebSocket-Key:") {
			hasKey = true
		}
		if strings.HasPrefix(e, "Sec-WebSocket-Version:") {
			hasVersion = true
		}
	}
	if !hasKey {
		b.WriteString("Sec-WebSocket-Key: " + testKey + "\r\n")
	}
	if !hasVersion {
		b.WriteString("Sec-WebSocket-Version: 13\r\n")
	}
	for _, e := range extra {
		if e != "" && !strings.HasSuffix(e, ": -") {
			b.WriteString(e + "\r\n")
		}
	}
	b.WriteString("\r\n")
	return b.String()
}

func (c *rawConn) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// response reads an HTTP response to a request on the connection.
func (c *rawConn) response() *http.Response {
	c.t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp
}

// upgrade performs a handshake and returns the 101 response.
func (c *rawConn) upgrade(extra ...string) *http.Response {
	c.t.Helper()
	c.write([]byte(upgradeRequest("GET", "/ws", extra...)))
	resp := c.response()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		c.t.Fatalf("upgrade: %s %s", resp.Status, body)
	}
	return resp
}

// readFrame reads one server frame (server frames are never masked).
func (c *rawConn) readFrame() (ws.Header, []byte) {
	c.t.Helper()
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		c.t.Fatalf("read header: %v", err)
	}
	if h.Masked {
		c.t.Fatal("server frame is masked")
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatalf("read payload: %v", err)
	}
	return h, p
}

// expectClose reads frames until a close frame and checks its code; then
// the server must close the TCP connection.
func (c *rawConn) expectClose(code uint16) string {
	c.t.Helper()
	for {
		h, p := c.readFrame()
		if h.OpCode != ws.OpClose {
			continue
		}
		if len(p) < 2 {
			c.t.Fatalf("close frame without code, want %d", code)
		}
		if got := binary.BigEndian.Uint16(p); got != code {
			c.t.Fatalf("close code %d (%q), want %d", got, p[2:], code)
		}
		if _, err := c.br.ReadByte(); err == nil {
			c.t.Fatal("server sent data after its close frame")
		}
		return string(p[2:])
	}
}

// expectEOF checks that the server closes the connection.
func (c *rawConn) expectEOF() {
	c.t.Helper()
	if _, err := io.ReadAll(c.br); err != nil && !isReset(err) {
		c.t.Fatalf("want EOF, got %v", err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

// frame builds a masked client frame.
func frame(fin bool, op ws.OpCode, payload []byte) []byte {
	return clientFrame(nopTB{}, fin, 0, op, true, lenBytesFor(len(payload)), payload)
}

func lenBytesFor(n int) int {
	switch {
	case n <= 125:
		return 0
	case n <= 0xffff:
		return 2
	}
	return 8
}

// nopTB lets frame builders run outside a test's Helper bookkeeping.
type nopTB struct{ testing.TB }

func (nopTB) Helper() {}
