package conformance

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestFragmentation covers Autobahn 5.x: fragmented messages, control
// frames between fragments, and continuation frames out of place.
func TestFragmentation(t *testing.T) {
	addr := startEcho(t, nil)
	f1, f2 := []byte("fragment1"), []byte("fragment2")
	both := "fragment1fragment2"
	// sends is one of Autobahn's three ways of writing a case's frames.
	type sends struct {
		name string
		send func(c *client, fs ...frame)
	}
	ways := []sends{
		{"", func(c *client, fs ...frame) { c.send(fs...) }},
		{"chunks-1", func(c *client, fs ...frame) { c.sendChunked(1, 20*time.Microsecond, fs...) }},
		{"per-frame", func(c *client, fs ...frame) { c.sendPerFrame(time.Millisecond, fs...) }},
	}
	var cases []tcase
	cases = append(cases,
		tcase{"5.1", "ping-fragmented-1002", func(c *client) {
			c.send(frame{fin: false, op: ws.OpPing, payload: f1}, frag(ws.OpContinuation, true, f2))
			c.expectClose(codeProtocol)
		}},
		tcase{"5.2", "pong-fragmented-1002", func(c *client) {
			c.send(frame{fin: false, op: ws.OpPong, payload: f1}, frag(ws.OpContinuation, true, f2))
			c.expectClose(codeProtocol)
		}},
	)
	// 5.3-5.5: a text message in two fragments; 5.6-5.8: with a ping
	// between them; 5.9-5.11: a final continuation with nothing to
	// continue; 5.12-5.14: the same, not final.
	for i, w := range ways {
		suffix := ""
		if w.name != "" {
			suffix = "-" + w.name
		}
		cases = append(cases,
			tcase{fmt.Sprintf("5.%d", 3+i), "text-2-fragments" + suffix, func(c *client) {
				w.send(c, frag(ws.OpText, false, f1), frag(ws.OpContinuation, true, f2))
				c.expectText(both)
				c.closeNormally()
			}},
			tcase{fmt.Sprintf("5.%d", 6+i), "text-2-fragments-ping-between" + suffix, func(c *client) {
				w.send(c, frag(ws.OpText, false, f1), ping("ping payload"), frag(ws.OpContinuation, true, f2))
				c.expectPong("ping payload")
				c.expectText(both)
				c.closeNormally()
			}},
			tcase{fmt.Sprintf("5.%d", 9+i), "continuation-fin-no-message-1002" + suffix, func(c *client) {
				w.send(c, frag(ws.OpContinuation, true, f1), text("Hello, world!"))
				c.expectClose(codeProtocol)
			}},
			tcase{fmt.Sprintf("5.%d", 12+i), "continuation-no-message-1002" + suffix, func(c *client) {
				w.send(c, frag(ws.OpContinuation, false, f1), text("Hello, world!"))
				c.expectClose(codeProtocol)
			}},
		)
	}
	cases = append(cases,
		tcase{"5.15", "message-then-stray-continuation-1002", func(c *client) {
			c.send(frag(ws.OpText, false, f1), frag(ws.OpContinuation, true, f2),
				frag(ws.OpContinuation, false, []byte("fragment3")), text("fragment4"))
			c.expectText(both)
			c.expectClose(codeProtocol)
		}},
		tcase{"5.16", "continuation-text-continuation-1002", func(c *client) {
			fs := []frame{frag(ws.OpContinuation, false, f1), frag(ws.OpText, false, f2), frag(ws.OpContinuation, true, []byte("fragment3"))}
			c.send(append(fs, fs...)...)
			c.expectClose(codeProtocol)
		}},
		tcase{"5.17", "final-continuation-text-continuation-1002", func(c *client) {
			fs := []frame{frag(ws.OpContinuation, true, f1), frag(ws.OpText, false, f2), frag(ws.OpContinuation, true, []byte("fragment3"))}
			c.send(append(fs, fs...)...)
			c.expectClose(codeProtocol)
		}},
		tcase{"5.18", "text-inside-fragmented-text-1002", func(c *client) {
			c.send(frag(ws.OpText, false, f1), frag(ws.OpText, true, f2))
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
		// 5.19/5.20: five fragments with pings between and pauses, each
		// ping answered while the message is still open.
		tcase{"5.19", "text-5-fragments-pings-paused", func(c *client) {
			c.send(frag(ws.OpText, false, []byte("fragment1")), frag(ws.OpContinuation, false, []byte("fragment2")), ping("pongme 1!"))
			c.expectPong("pongme 1!")
			time.Sleep(50 * time.Millisecond)
			c.send(frag(ws.OpContinuation, false, []byte("fragment3")), frag(ws.OpContinuation, false, []byte("fragment4")), ping("pongme 2!"))
			c.expectPong("pongme 2!")
			time.Sleep(50 * time.Millisecond)
			c.send(frag(ws.OpContinuation, true, []byte("fragment5")))
			c.expectText("fragment1fragment2fragment3fragment4fragment5")
			c.closeNormally()
		}},
		tcase{"5.20", "text-5-fragments-pings-paused-per-frame", func(c *client) {
			c.sendPerFrame(time.Millisecond, frag(ws.OpText, false, []byte("fragment1")), frag(ws.OpContinuation, false, []byte("fragment2")), ping("pongme 1!"))
			c.expectPong("pongme 1!")
			time.Sleep(50 * time.Millisecond)
			c.sendChunked(1, 0, frag(ws.OpContinuation, false, []byte("fragment3")), frag(ws.OpContinuation, false, []byte("fragment4")), ping("pongme 2!"))
			c.expectPong("pongme 2!")
			time.Sleep(50 * time.Millisecond)
			c.sendPerFrame(0, frag(ws.OpContinuation, true, []byte("fragment5")))
			c.expectText("fragment1fragment2fragment3fragment4fragment5")
			c.closeNormally()
		}},
		// Not in Autobahn.
		tcase{"5.21", "binary-3-fragments", func(c *client) {
			p := randomBytes(300)
			c.send(frag(ws.OpBinary, false, p[:1]), frag(ws.OpContinuation, false, p[1:200]), frag(ws.OpContinuation, true, p[200:]))
			c.expectBinary(p)
			c.closeNormally()
		}},
		tcase{"5.22", "ping-and-pong-between-every-fragment", func(c *client) {
			var fs []frame
			var want bytes.Buffer
			for i := range 20 {
				p := []byte(fmt.Sprint("f", i))
				want.Write(p)
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpText
				}
				fs = append(fs, frag(op, i == 19, p), pong("x"), ping(fmt.Sprint("p", i)))
			}
			c.send(fs...)
			for i := range 20 {
				if i == 19 {
					c.expectText(want.String())
				}
				c.expectPong(fmt.Sprint("p", i))
			}
			c.closeNormally()
		}},
		tcase{"5.23", "binary-inside-fragmented-text-1002", func(c *client) {
			c.send(frag(ws.OpText, false, f1), bin(f2))
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
		tcase{"5.24", "fragmented-close-1002", func(c *client) {
			c.send(frame{fin: false, op: ws.OpClose, payload: []byte{0x03, 0xe8}}, frag(ws.OpContinuation, true, nil))
			c.expectClose(codeProtocol)
		}},
		tcase{"5.25", "fragmented-ping-inside-message-1002", func(c *client) {
			c.send(frag(ws.OpText, false, f1), frame{fin: false, op: ws.OpPing, payload: []byte("p")})
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
		tcase{"5.26", "empty-fragments", func(c *client) {
			c.send(frag(ws.OpBinary, false, nil), frag(ws.OpContinuation, false, nil), frag(ws.OpContinuation, false, []byte{7}), frag(ws.OpContinuation, true, nil))
			c.expectBinary([]byte{7})
			c.closeNormally()
		}},
		tcase{"5.27", "messages-back-to-back-after-fragmented", func(c *client) {
			c.send(frag(ws.OpText, false, f1), frag(ws.OpContinuation, true, f2), text("next"), frag(ws.OpBinary, false, f1), frag(ws.OpContinuation, true, f2))
			c.expectText(both)
			c.expectText("next")
			c.expectBinary([]byte(both))
			c.closeNormally()
		}},
	)
	runCases(t, addr, cases)
}
