package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestClose covers Autobahn 7.x: the closing handshake, what may follow a
// close frame, and the close codes and reasons a client may send.
func TestClose(t *testing.T) {
	addr := startEcho(t, nil)
	var cases []tcase
	cases = append(cases,
		tcase{"7.1.1", "echo-then-close", func(c *client) {
			c.send(text("Hello World!"))
			c.expectText("Hello World!")
			c.closeNormally()
		}},
		tcase{"7.1.2", "close-twice", func(c *client) {
			c.send(closeFrame(codeNormal, ""), closeFrame(codeNormal, ""))
			c.expectClose(codeNormal)
		}},
		tcase{"7.1.3", "close-then-ping-ignored", func(c *client) {
			c.send(closeFrame(codeNormal, ""), ping("Hello World!"))
			c.expectClose(codeNormal)
		}},
		tcase{"7.1.4", "close-then-text-ignored", func(c *client) {
			c.send(closeFrame(codeNormal, ""), text("Hello World!"))
			c.expectClose(codeNormal)
		}},
		tcase{"7.1.5", "fragment-close-fragment", func(c *client) {
			c.send(frag(ws.OpText, false, []byte("fragment1")), closeFrame(codeNormal, ""), frag(ws.OpContinuation, true, []byte("fragment2")))
			c.expectClose(codeNormal)
		}},
		tcase{"7.1.6", "close-behind-10-large-messages-then-ping", func(c *client) {
			// Ten messages of 256 KiB, the close, then a ping, written
			// while the echoes are read: every echo, the close, no pong.
			c.timeout = 20 * time.Second
			p := pattern(256 << 10)
			var fs []frame
			for range 10 {
				fs = append(fs, text(string(p)))
			}
			fs = append(fs, closeFrame(codeNormal, "BAsd7&jh23"), ping("Hello World!"))
			b := encode(fs...)
			done := make(chan error, 1)
			go func() {
				_, err := c.nc.Write(b)
				done <- err
			}()
			for range 10 {
				c.expectMessage(ws.OpText, p)
			}
			c.expectClose(codeNormal)
			if err := <-done; err != nil && !isConnError(err) {
				c.t.Fatalf("write: %v", err)
			}
		}},
		// Not in Autobahn: how the TCP connection ends.
		tcase{"7.1.7", "server-closes-tcp-promptly", func(c *client) {
			c.send(closeFrame(codeNormal, ""))
			start := time.Now()
			c.expectClose(codeNormal)
			// The server closes first (RFC 6455 7.1.1): its FIN follows
			// its close frame, without waiting for the client's.
			if d := time.Since(start); d > time.Second {
				c.t.Fatalf("the TCP connection ended %v after the close", d)
			}
		}},
		tcase{"7.1.8", "close-then-client-tcp-close", func(c *client) {
			// The client closes its socket at once, without reading the
			// answer; the server must carry on serving others.
			c.send(closeFrame(codeNormal, "bye"))
			_ = c.nc.Close()
			d := dial(c.t, addr)
			d.send(text("still there"))
			d.expectText("still there")
			d.closeNormally()
		}},
		tcase{"7.1.9", "tcp-close-mid-frame", func(c *client) {
			b := text(string(pattern(1000))).bytes()
			c.write(b[:500])
			_ = c.nc.Close()
			d := dial(c.t, addr)
			d.send(text("still there"))
			d.expectText("still there")
			d.closeNormally()
		}},
		tcase{"7.1.10", "client-half-close-after-close", func(c *client) {
			// Close frame, then the client's FIN: the server still
			// answers, then closes.
			c.send(closeFrame(3000, "half"))
			if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
				_ = tc.CloseWrite()
			}
			c.expectClose(3000)
		}},
		tcase{"7.1.11", "tcp-fin-without-close", func(c *client) {
			// A client that ends the TCP connection without a close
			// frame: the server ends its side too (with or without a
			// close frame of its own: RFC 6455 7.1.7).
			c.send(text("x"))
			c.expectText("x")
			if tc, ok := c.nc.(interface{ CloseWrite() error }); ok {
				_ = tc.CloseWrite()
			}
			e, err := c.next()
			if err == nil && e.op == ws.OpClose {
				e, err = c.next()
			}
			if err != errEOF {
				c.t.Fatalf("want the server to close the TCP connection, got %v %v", e, err)
			}
		}},
		tcase{"7.1.12", "client-answers-server-close", func(c *client) {
			// The server fails the connection; the client answers its
			// close frame as RFC 6455 5.5.1 says, and then sees the
			// server's FIN.
			c.send(frame{fin: true, rsv: 4, op: ws.OpText, payload: []byte("x")})
			e := c.mustNext("close 1002")
			if e.op != ws.OpClose || len(e.payload) < 2 || e.payload[0] != 0x03 || e.payload[1] != 0xea {
				c.t.Fatalf("want close 1002, got %s", e)
			}
			c.send(closeFrame(codeProtocol, ""))
			c.expectEOF()
		}},
		tcase{"7.3.1", "close-empty-answered-1000", func(c *client) {
			c.send(closeEmpty())
			c.expectClose(codeNormal)
		}},
		tcase{"7.3.2", "close-1-byte-1002", func(c *client) {
			c.send(frame{fin: true, op: ws.OpClose, payload: []byte{0x03}})
			c.expectClose(codeProtocol)
		}},
		tcase{"7.3.3", "close-1000-no-reason", func(c *client) {
			c.send(closeFrame(codeNormal, ""))
			c.expectClose(codeNormal)
		}},
		tcase{"7.3.4", "close-1000-reason", func(c *client) {
			c.send(closeFrame(codeNormal, "Hello World!"))
			c.expectClose(codeNormal)
		}},
		tcase{"7.3.5", "close-1000-reason-123", func(c *client) {
			c.send(closeFrame(codeNormal, strings.Repeat("*", 123)))
			c.expectClose(codeNormal)
		}},
		tcase{"7.3.6", "close-1000-reason-124-1002", func(c *client) {
			c.send(closeFrame(codeNormal, strings.Repeat("*", 124)))
			c.expectClose(codeProtocol)
		}},
		tcase{"7.5.1", "close-reason-invalid-utf8-1007", func(c *client) {
			c.send(closeFrame(codeNormal, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64"))
			c.expectClose(codeInvalid)
		}},
		tcase{"7.5.2", "close-reason-valid-utf8", func(c *client) {
			c.send(closeFrame(codeNormal, "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf0\x9f\x98\x80"))
			c.expectClose(codeNormal)
		}},
		tcase{"7.5.3", "close-reason-truncated-rune-1007", func(c *client) {
			c.send(closeFrame(codeNormal, "ok\xe2\x82"))
			c.expectClose(codeInvalid)
		}},
	)
	// 7.7.x: every code a client may send is echoed.
	for i, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999} {
		cases = append(cases, tcase{fmt.Sprintf("7.7.%d", i+1), fmt.Sprintf("close-%d-echoed", code), func(c *client) {
			c.send(closeFrame(code, "reason"))
			c.expectClose(code)
		}})
	}
	// 7.9.x: codes no endpoint may send (RFC 6455 7.4.1, 7.4.2) fail the
	// connection; 7.13.x: codes out of every range.
	for i, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999} {
		cases = append(cases, tcase{fmt.Sprintf("7.9.%d", i+1), fmt.Sprintf("close-%d-1002", code), func(c *client) {
			c.send(closeFrame(code, ""))
			c.expectClose(codeProtocol)
		}})
	}
	for i, code := range []uint16{5000, 65535} {
		cases = append(cases, tcase{fmt.Sprintf("7.13.%d", i+1), fmt.Sprintf("close-%d-1002", code), func(c *client) {
			c.send(closeFrame(code, ""))
			c.expectClose(codeProtocol)
		}})
	}
	runCases(t, addr, cases)
}
