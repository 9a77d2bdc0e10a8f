package conformance

import (
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// tcase is one case: an Autobahn-style id, a name, and what the client does
// and expects on a fresh connection.
type tcase struct {
	id, name string
	run      func(c *client)
}

// runCases runs each case on a connection of its own.
func runCases(t *testing.T, addr string, cases []tcase) {
	t.Helper()
	seen := map[string]bool{}
	for _, tc := range cases {
		name := tc.id + "/" + tc.name
		if seen[name] {
			t.Fatalf("duplicate case %s", name)
		}
		seen[name] = true
		t.Run(name, func(t *testing.T) { tc.run(dial(t, addr)) })
	}
	expectReleased(t, addr)
}

// writeModes are the ways 1.x writes one frame: whole, in chunks of
// several sizes, and with the header byte by byte.
type writeMode struct {
	name string
	// max is the largest frame the mode is used for (0: any).
	max  int
	send func(c *client, b []byte)
}

var writeModes = []writeMode{
	{"whole", 0, func(c *client, b []byte) { c.write(b) }},
	{"chunks-1", 200, func(c *client, b []byte) { c.writeChunked(b, 1, 0) }},
	{"chunks-7", 2000, func(c *client, b []byte) { c.writeChunked(b, 7, 0) }},
	{"chunks-997", 0, func(c *client, b []byte) { c.writeChunked(b, 997, 0) }},
	{"chunks-4096-paused", 0, func(c *client, b []byte) { c.writeChunked(b, 4096, 100*time.Microsecond) }},
	{"header-bytewise", 0, func(c *client, b []byte) {
		// Header a byte at a time, with a pause so each arrives alone.
		h := min(len(b), 14)
		c.writeChunked(b[:h], 1, 200*time.Microsecond)
		time.Sleep(200 * time.Microsecond)
		c.write(b[h:])
	}},
}

// TestFraming covers Autobahn 1.x (framing), 2.x (pings and pongs), 3.x
// (reserved bits) and 4.x (opcodes).
func TestFraming(t *testing.T) {
	addr := startEcho(t, nil)
	var cases []tcase

	// 1.1.x text, 1.2.x binary: every length boundary of the 7, 16 and
	// 64-bit encodings, each frame written in every write mode.
	lengths := []int{0, 125, 126, 127, 128, 65535, 65536}
	for g, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, n := range lengths {
			cases = append(cases, tcase{fmt.Sprintf("1.%d.%d", g+1, i+1), fmt.Sprintf("%s-%d", opName(op), n), func(c *client) {
				p := pattern(n)
				if op == ws.OpBinary {
					p = randomBytes(n)
				}
				for _, m := range writeModes {
					if m.max > 0 && n > m.max {
						continue
					}
					m.send(c, frame{fin: true, op: op, payload: p}.bytes())
					c.expectMessage(op, p)
				}
				c.closeNormally()
			}})
		}
		cases = append(cases, tcase{fmt.Sprintf("1.%d.8", g+1), opName(op) + "-65536-chunks-997", func(c *client) {
			p := pattern(65536)
			c.sendChunked(997, 0, frame{fin: true, op: op, payload: p})
			c.expectMessage(op, p)
			c.closeNormally()
		}})
	}
	// 1.4.x (not in Autobahn): frames around the server's read size
	// (16 KiB), where a frame stops fitting in one read.
	for i, n := range []int{16384 - 14, 16384 - 6, 16383, 16384, 16385, 32768, 131072} {
		cases = append(cases, tcase{fmt.Sprintf("1.4.%d", i+1), fmt.Sprintf("binary-%d", n), func(c *client) {
			p := randomBytes(n)
			for _, m := range writeModes {
				if m.max > 0 && n > m.max {
					continue
				}
				m.send(c, bin(p).bytes())
				c.expectBinary(p)
			}
			// Two in one write, the second split by the read size.
			c.send(bin(p), text("after"))
			c.expectBinary(p)
			c.expectText("after")
			c.closeNormally()
		}})
	}
	// 1.3.x (not in Autobahn): what RFC 6455 5.1/5.2 require of every
	// frame's header.
	top := uint64(1)<<63 | 5
	cases = append(cases,
		tcase{"1.3.1", "unmasked-text-1002", func(c *client) {
			c.send(text("hello"))
			c.expectText("hello")
			c.send(frame{fin: true, op: ws.OpText, payload: []byte("bare"), unmasked: true}, ping("after"))
			c.expectClose(codeProtocol)
		}},
		tcase{"1.3.2", "length-msb-set-1002", func(c *client) {
			c.send(frame{fin: true, op: ws.OpBinary, payload: []byte("abcde"), lenBytes: 8, rawLen: &top})
			c.expectClose(codeProtocol)
		}},
		tcase{"1.3.3", "unmasked-ping-1002", func(c *client) {
			c.send(frame{fin: true, op: ws.OpPing, payload: []byte("x"), unmasked: true})
			c.expectClose(codeProtocol)
		}},
		tcase{"1.3.4", "many-frames-one-write", func(c *client) {
			var fs []frame
			for i := range 100 {
				fs = append(fs, text(fmt.Sprint("m", i)))
			}
			c.send(fs...)
			for i := range 100 {
				c.expectText(fmt.Sprint("m", i))
			}
			c.closeNormally()
		}},
		tcase{"1.3.5", "1000-messages-one-write-read-concurrently", func(c *client) {
			var fs []frame
			for i := range 1000 {
				fs = append(fs, bin(append(randomBytes(1000), byte(i), byte(i>>8))))
			}
			b := encode(fs...)
			done := make(chan error, 1)
			go func() {
				_, err := c.nc.Write(b)
				done <- err
			}()
			for i := range 1000 {
				c.expectBinary(append(randomBytes(1000), byte(i), byte(i>>8)))
			}
			if err := <-done; err != nil {
				c.t.Fatalf("write: %v", err)
			}
			c.closeNormally()
		}},
	)

	// 2.x pings and pongs.
	bin125 := randomBytes(125)
	cases = append(cases,
		tcase{"2.1", "ping-empty", func(c *client) {
			c.send(ping(""))
			c.expectPong("")
			c.closeNormally()
		}},
		tcase{"2.2", "ping-text-payload", func(c *client) {
			c.send(ping("Hello, world!"))
			c.expectPong("Hello, world!")
			c.closeNormally()
		}},
		tcase{"2.3", "ping-binary-payload", func(c *client) {
			p := []byte{0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x00, 0xff}
			c.send(frame{fin: true, op: ws.OpPing, payload: p})
			c.expectPongBytes(p)
			c.closeNormally()
		}},
		tcase{"2.4", "ping-125", func(c *client) {
			c.send(frame{fin: true, op: ws.OpPing, payload: bin125})
			c.expectPongBytes(bin125)
			c.closeNormally()
		}},
		tcase{"2.5", "ping-126-1002", func(c *client) {
			c.send(frame{fin: true, op: ws.OpPing, payload: randomBytes(126)})
			c.expectClose(codeProtocol)
		}},
		tcase{"2.6", "ping-125-chunks-1", func(c *client) {
			c.sendChunked(1, 100*time.Microsecond, frame{fin: true, op: ws.OpPing, payload: bin125})
			c.expectPongBytes(bin125)
			c.closeNormally()
		}},
		tcase{"2.7", "unsolicited-pong-empty", func(c *client) {
			c.send(pong(""))
			// The next frame the server sends answers the ping: nothing
			// answered the pong.
			c.send(ping("after"))
			c.expectPong("after")
			c.closeNormally()
		}},
		tcase{"2.8", "unsolicited-pong-payload", func(c *client) {
			c.send(pong("unsolicited pong payload"))
			c.send(ping("after"))
			c.expectPong("after")
			c.closeNormally()
		}},
		tcase{"2.9", "unsolicited-pong-then-ping", func(c *client) {
			c.send(pong("unsolicited pong payload"), ping("ping payload"))
			c.expectPong("ping payload")
			c.closeNormally()
		}},
		tcase{"2.10", "10-pings", func(c *client) {
			var fs []frame
			for i := range 10 {
				fs = append(fs, ping(fmt.Sprint("payload-", i)))
			}
			c.send(fs...)
			for i := range 10 {
				c.expectPong(fmt.Sprint("payload-", i))
			}
			c.closeNormally()
		}},
		tcase{"2.11", "10-pings-chunks-1", func(c *client) {
			for i := range 10 {
				c.sendChunked(1, 50*time.Microsecond, ping(fmt.Sprint("payload-", i)))
			}
			for i := range 10 {
				c.expectPong(fmt.Sprint("payload-", i))
			}
			c.closeNormally()
		}},
		tcase{"2.12", "pong-126-1002", func(c *client) {
			c.send(frame{fin: true, op: ws.OpPong, payload: randomBytes(126)})
			c.expectClose(codeProtocol)
		}},
		tcase{"2.13", "ping-between-messages", func(c *client) {
			c.send(text("a"), ping("p"), bin([]byte{1, 2}))
			c.expectText("a")
			c.expectPong("p")
			c.expectBinary([]byte{1, 2})
			c.closeNormally()
		}},
	)

	// 3.x reserved bits. No extension is negotiated, so all three are
	// reserved, RSV1 included: any set fails the connection, and nothing
	// sent after it is answered.
	cases = append(cases,
		tcase{"3.1", "text-rsv-1", func(c *client) {
			c.send(frame{fin: true, rsv: 1, op: ws.OpText, payload: []byte("Hello, world!")})
			c.expectClose(codeProtocol)
		}},
		tcase{"3.2", "text-then-rsv-2-then-ping", func(c *client) {
			c.send(text("Hello, world!"), frame{fin: true, rsv: 2, op: ws.OpText, payload: []byte("Hello, world!")}, ping(""))
			c.expectText("Hello, world!")
			c.expectClose(codeProtocol)
		}},
		tcase{"3.3", "text-then-rsv-3-then-ping-per-frame", func(c *client) {
			c.sendPerFrame(time.Millisecond, text("Hello, world!"), frame{fin: true, rsv: 3, op: ws.OpText, payload: []byte("Hello, world!")}, ping(""))
			c.expectText("Hello, world!")
			c.expectClose(codeProtocol)
		}},
		tcase{"3.4", "text-then-rsv-4-then-ping-chunks-1", func(c *client) {
			c.sendChunked(1, 50*time.Microsecond, text("Hello, world!"), frame{fin: true, rsv: 4, op: ws.OpText, payload: []byte("Hello, world!")}, ping(""))
			c.expectText("Hello, world!")
			c.expectClose(codeProtocol)
		}},
		tcase{"3.5", "binary-rsv-5", func(c *client) {
			c.send(frame{fin: true, rsv: 5, op: ws.OpBinary, payload: []byte{0, 1, 2, 0xff}})
			c.expectClose(codeProtocol)
		}},
		tcase{"3.6", "ping-rsv-6", func(c *client) {
			c.send(frame{fin: true, rsv: 6, op: ws.OpPing, payload: []byte("p")})
			c.expectClose(codeProtocol)
		}},
		tcase{"3.7", "close-rsv-7", func(c *client) {
			c.send(frame{fin: true, rsv: 7, op: ws.OpClose, payload: []byte{0x03, 0xe8}})
			c.expectClose(codeProtocol)
		}},
		// Not in Autobahn: RSV1 on a continuation frame is wrong even
		// with permessage-deflate (RFC 7692 6.1), and a fragment's RSV
		// bits fail the connection before the message is done.
		tcase{"3.8", "continuation-rsv-1", func(c *client) {
			c.send(frag(ws.OpText, false, []byte("frag1")), frame{fin: true, rsv: 4, op: ws.OpContinuation, payload: []byte("frag2")})
			c.expectClose(codeProtocol)
		}},
		tcase{"3.9", "fragment-start-rsv-4", func(c *client) {
			c.send(frame{fin: false, rsv: 4, op: ws.OpText, payload: []byte("frag1")})
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
		tcase{"3.10", "pong-rsv-2", func(c *client) {
			c.send(frame{fin: true, rsv: 2, op: ws.OpPong})
			c.expectClose(codeProtocol)
		}},
		tcase{"3.11", "ping-then-rsv-1", func(c *client) {
			c.send(ping("first"), frame{fin: true, rsv: 4, op: ws.OpBinary, payload: []byte{1}}, ping("never"))
			c.expectPong("first")
			c.expectClose(codeProtocol)
		}},
	)

	// 4.1.x reserved data opcodes 3-7, 4.2.x reserved control opcodes
	// 11-15, as Autobahn sends them.
	for g, base := range []ws.OpCode{3, 11} {
		group := fmt.Sprintf("4.%d", g+1)
		o := func(i int) ws.OpCode { return base + ws.OpCode(i) }
		cases = append(cases,
			tcase{group + ".1", fmt.Sprintf("opcode-%d", o(0)), func(c *client) {
				c.send(frame{fin: true, op: o(0)})
				c.expectClose(codeProtocol)
			}},
			tcase{group + ".2", fmt.Sprintf("opcode-%d-payload", o(1)), func(c *client) {
				c.send(frame{fin: true, op: o(1), payload: []byte("reserved opcode payload")})
				c.expectClose(codeProtocol)
			}},
			tcase{group + ".3", fmt.Sprintf("text-opcode-%d-ping", o(2)), func(c *client) {
				c.send(text("Hello, world!"), frame{fin: true, op: o(2)}, ping(""))
				c.expectText("Hello, world!")
				c.expectClose(codeProtocol)
			}},
			tcase{group + ".4", fmt.Sprintf("text-opcode-%d-payload-ping-per-frame", o(3)), func(c *client) {
				c.sendPerFrame(time.Millisecond, text("Hello, world!"), frame{fin: true, op: o(3), payload: []byte("reserved opcode payload")}, ping(""))
				c.expectText("Hello, world!")
				c.expectClose(codeProtocol)
			}},
			tcase{group + ".5", fmt.Sprintf("text-opcode-%d-payload-ping-chunks-1", o(4)), func(c *client) {
				c.sendChunked(1, 50*time.Microsecond, text("Hello, world!"), frame{fin: true, op: o(4), payload: []byte("reserved opcode payload")}, ping(""))
				c.expectText("Hello, world!")
				c.expectClose(codeProtocol)
			}},
		)
	}
	// 4.3.x (not in Autobahn): a reserved opcode without fin, and one
	// between the fragments of a message.
	cases = append(cases,
		tcase{"4.3.1", "opcode-3-not-final", func(c *client) {
			c.send(frame{fin: false, op: 3, payload: []byte("x")})
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
		tcase{"4.3.2", "opcode-11-between-fragments", func(c *client) {
			c.send(frag(ws.OpText, false, []byte("a")), frame{fin: true, op: 11})
			c.expectCloseWithin(codeProtocol, failFastWithin)
		}},
	)
	runCases(t, addr, cases)
}
