package engine

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"

	"github.com/fanout-dev/fanout/engine/wsframe"
)

// FuzzNegotiate drives the upgrade (gobwas/ws with the server's header
// callbacks, admission and authentication) with arbitrary request heads. It
// must never panic; an accepted upgrade answers 101 with the accept key; a
// refused one answers a well-formed 4xx/5xx response or nothing (the caller
// then answers 400 itself, TestMalformedRequestLineGets400).
func FuzzNegotiate(f *testing.F) {
	seeds := []string{
		upgradeRequest("GET", "/ws"),
		upgradeRequest("GET", "/ws?token=abc", "Sec-WebSocket-Protocol: fanout.v1.msgpack", "Origin: http://example.test"),
		upgradeRequest("GET", "/ws", "Origin: http://evil.example", "Origin: http://example.test"),
		upgradeRequest("POST", "/ws"),
		upgradeRequest("GET", "/ws", "Sec-WebSocket-Version: 12"),
		upgradeRequest("GET", "/ws", "Sec-WebSocket-Key: short"),
		upgradeRequest("GET", "http://example.test/ws"),
		"GET /ws HTTX/9.9\r\nHost: x\r\n\r\n",
		"GET /ws \r\n\r\n",
		"GET /ws HTTP/1\r\n\r\n",
		"\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer a.b.c\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	s, err := New(Config{Addr: "127.0.0.1:0"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, head []byte) {
		if len(head) > maxRequestHeaderBytes {
			return
		}
		c := &Conn{srv: s}
		out := wsframe.Get()
		out.FinishRaw()
		_, err := s.negotiate(c, head, out)
		resp := out.Bytes()
		defer out.Release()
		if err == nil {
			if !bytes.HasPrefix(resp, []byte("HTTP/1.1 101 ")) || !bytes.Contains(resp, []byte("Sec-WebSocket-Accept: ")) {
				t.Fatalf("accepted upgrade answered %q", resp)
			}
			return
		}
		if len(resp) == 0 {
			return
		}
		r, perr := http.ReadResponse(bufio.NewReader(bytes.NewReader(resp)), nil)
		if perr != nil {
			t.Fatalf("refusal %q does not parse: %v", resp, perr)
		}
		r.Body.Close()
		if r.StatusCode < 400 || r.StatusCode > 599 {
			t.Fatalf("refusal with status %d: %q", r.StatusCode, resp)
		}
	})
}
