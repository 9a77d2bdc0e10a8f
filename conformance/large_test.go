package conformance

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/fanout-dev/fanout/engine"
	"github.com/gobwas/ws"
)

// maxLarge is the largest message of 9.x, and the server's
// MaxMessageBytes for them.
const maxLarge = 16 << 20

// caseBudget bounds each 9.x case: a large message must make progress to a
// slow reader, not merely arrive eventually.
const caseBudget = 20 * time.Second

// slowReader settings of 9.x: a receive buffer of 16 KiB (the kernel
// doubles it), reads of at most 1500 bytes, a 1 ms pause every 128 KiB.
var slow = dialOpts{rcvBuf: 16 << 10, piece: 1500, pause: time.Millisecond, pauseEvery: 128 << 10}

func startLarge(t *testing.T) string {
	return startEcho(t, func(cfg *engine.Config) {
		cfg.MaxMessageBytes = maxLarge
		// A 16 MiB frame written in pieces under -race must complete
		// within FrameTimeout.
		cfg.FrameTimeout = 30 * time.Second
		cfg.WriteTimeout = 30 * time.Second
	})
}

// runTimed runs the cases like runCases, each on a slow reader and within
// caseBudget.
func runTimed(t *testing.T, addr string, o dialOpts, cases []tcase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.id+"/"+tc.name, func(t *testing.T) {
			c := dialWith(t, addr, o)
			c.timeout = caseBudget // every read the case waits for is bounded by it
			tc.run(c)
		})
	}
	expectReleased(t, addr)
}

// validText is n bytes of valid UTF-8, mostly ASCII (as most text is, and
// cheap to validate under -race) with runes of 2, 3 and 4 bytes every
// few dozen bytes, so that pieces and fragments split them. Payloads are
// made once per size.
func validText(n int) []byte {
	textMu.Lock()
	defer textMu.Unlock()
	if b, ok := texts[n]; ok {
		return b
	}
	const unit = "The quick brown fox jumps over the lazy dog, 0123456789: " +
		"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf0\x9f\x98\x80\n"
	b := []byte(strings.Repeat(unit, n/len(unit)+1)[:n])
	// Cut the rune the end split, and pad with ASCII.
	i := n
	for i > 0 {
		if r, size := utf8.DecodeLastRune(b[:i]); r != utf8.RuneError || size > 1 {
			break
		}
		i--
	}
	for j := i; j < n; j++ {
		b[j] = '.'
	}
	texts[n] = b
	return b
}

var (
	textMu sync.Mutex
	texts  = map[int][]byte{}
)

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprint(n)
}

// TestLargeMessages covers Autobahn 9.x: messages up to 16 MiB, as single
// frames and fragmented, written in pieces of several sizes and read back
// by a slow reader.
func TestLargeMessages(t *testing.T) {
	addr := startLarge(t)
	var cases []tcase
	payloadFor := func(op ws.OpCode, n int) []byte {
		if op == ws.OpText {
			return validText(n)
		}
		return randomBytes(n)
	}
	// 9.1.x text, 9.2.x binary: single frames of 64 KiB to 16 MiB, each
	// written in pieces of a different size.
	sizes := []int{64 << 10, 256 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20}
	pieces := []int{997, 4096, 16 << 10, 64 << 10, 256 << 10, 1 << 20}
	for g, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, n := range sizes {
			cases = append(cases, tcase{fmt.Sprintf("9.%d.%d", g+1, i+1), fmt.Sprintf("%s-%s-pieces-%d", opName(op), sizeName(n), pieces[i]), func(c *client) {
				p := payloadFor(op, n)
				// Pieces of 16 KiB and more with a pause between them, so
				// that the frame arrives over many reads.
				var pause time.Duration
				if pieces[i] >= 16<<10 {
					pause = time.Millisecond
				}
				c.writeChunked(frame{fin: true, op: op, payload: p}.bytes(), pieces[i], pause)
				c.expectMessage(op, p)
				c.closeNormally()
			}})
		}
	}
	// 9.3.x text, 9.4.x binary: 4 MiB in fragments of 64 B to 4 MiB.
	for g, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, f := range []int{64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20} {
			cases = append(cases, tcase{fmt.Sprintf("9.%d.%d", g+3, i+1), fmt.Sprintf("%s-4MiB-fragments-%s", opName(op), sizeName(f)), func(c *client) {
				p := payloadFor(op, 4<<20)
				c.writeChunked(encode(fragments(op, p, f)...), 256<<10, 0)
				c.expectMessage(op, p)
				c.closeNormally()
			}})
		}
	}
	// 9.5.x text, 9.6.x binary: 1 MiB in one frame written in chunks of
	// 64 B to 2 KiB (and 9.5.7: the header split from the payload).
	for g, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, ch := range []int{64, 128, 256, 512, 1024, 2048} {
			cases = append(cases, tcase{fmt.Sprintf("9.%d.%d", g+5, i+1), fmt.Sprintf("%s-1MiB-chunks-%d", opName(op), ch), func(c *client) {
				p := payloadFor(op, 1<<20)
				c.writeChunked(frame{fin: true, op: op, payload: p}.bytes(), ch, 0)
				c.expectMessage(op, p)
				c.closeNormally()
			}})
		}
	}
	runTimed(t, addr, slow, cases)

	// 9.7.x text, 9.8.x binary: 1000 messages one after another, each
	// echoed before the next is sent.
	cases = nil
	for g, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		for i, n := range []int{0, 16, 64, 256, 1 << 10, 4 << 10} {
			cases = append(cases, tcase{fmt.Sprintf("9.%d.%d", g+7, i+1), fmt.Sprintf("%s-1000x%s-roundtrip", opName(op), sizeName(n)), func(c *client) {
				p := payloadFor(op, n)
				if op == ws.OpText {
					p = pattern(n)
				}
				b := frame{fin: true, op: op, payload: p}.bytes()
				for range 1000 {
					c.write(b)
					c.expectMessage(op, p)
				}
				c.closeNormally()
			}})
		}
	}
	runTimed(t, addr, dialOpts{}, cases)

	// 9.9.x (not in Autobahn): past MaxMessageBytes, 1009 (RFC 6455
	// 7.4.1), as soon as the length is known.
	runTimed(t, addr, dialOpts{}, []tcase{
		{"9.9.1", "frame-over-limit-1009", func(c *client) {
			f := frame{fin: true, op: ws.OpBinary, payload: make([]byte, maxLarge+1)}
			b := f.bytes()
			c.write(b[:14+1000]) // the header says it all
			c.expectCloseWithin(codeTooBig, failFastWithin)
		}},
		{"9.9.2", "fragments-over-limit-1009", func(c *client) {
			p := make([]byte, 4<<20)
			var fs []frame
			for i := range 4 {
				op := ws.OpContinuation
				if i == 0 {
					op = ws.OpBinary
				}
				fs = append(fs, frag(op, false, p))
			}
			fs = append(fs, frag(ws.OpContinuation, false, []byte{1}))
			c.send(fs...)
			c.expectCloseWithin(codeTooBig, failFastWithin)
		}},
		{"9.9.3", "exactly-at-limit", func(c *client) {
			p := randomBytes(maxLarge)
			c.writeChunked(encode(fragments(ws.OpBinary, p, 3<<20)...), 1<<20, 0)
			c.expectBinary(p)
			c.closeNormally()
		}},
	})

	// 9.10.x (not in Autobahn): control frames around large messages.
	runTimed(t, addr, slow, []tcase{
		{"9.10.1", "ping-answered-mid-message", func(c *client) {
			// Half of a 16 MiB message, a ping, answered before the
			// other half is sent.
			p := randomBytes(maxLarge)
			c.write(frag(ws.OpBinary, false, p[:maxLarge/2]).bytes())
			c.send(ping("mid"))
			c.expectPong("mid")
			c.write(frag(ws.OpContinuation, true, p[maxLarge/2:]).bytes())
			c.expectBinary(p)
			c.closeNormally()
		}},
		{"9.10.2", "pings-behind-large-echo", func(c *client) {
			// Pongs queued behind an 8 MiB echo still being written to
			// the slow reader: whole frames, in order, their payloads
			// intact though the input they came from is long gone.
			p := validText(8 << 20)
			fs := []frame{text(string(p))}
			for i := range 50 {
				fs = append(fs, ping(fmt.Sprintf("behind-%03d-%s", i, pattern(100))))
			}
			c.send(fs...)
			c.expectText(string(p))
			for i := range 50 {
				c.expectPong(fmt.Sprintf("behind-%03d-%s", i, pattern(100)))
			}
			c.closeNormally()
		}},
		{"9.10.3", "close-behind-large-echo", func(c *client) {
			p := randomBytes(4 << 20)
			c.send(bin(p), closeFrame(3001, "done"))
			c.expectBinary(p)
			c.expectClose(3001)
		}},
	})
}

// TestAutoFragmentation covers Autobahn 10.x: however a client fragments a
// message, the server takes it.
func TestAutoFragmentation(t *testing.T) {
	addr := startEcho(t, nil)
	txt := validText(65536)
	bin := randomBytes(65536)
	var cases []tcase
	cases = append(cases, tcase{"10.1.1", "text-65536-fragments-1300", func(c *client) {
		c.send(fragments(ws.OpText, txt, 1300)...)
		c.expectMessage(ws.OpText, txt)
		c.closeNormally()
	}})
	n := 2
	for _, op := range []ws.OpCode{ws.OpText, ws.OpBinary} {
		p := txt
		if op == ws.OpBinary {
			p = bin
		}
		for _, f := range []int{1, 2, 3, 7, 125, 126, 127, 1300, 4096, 65535, 65536} {
			size := len(p)
			if f < 16 {
				size = 4096 // one-byte fragments of 64 KiB take long under -race
			}
			p := p
			if op == ws.OpText {
				p = validText(size)
			}
			cases = append(cases, tcase{fmt.Sprintf("10.1.%d", n), fmt.Sprintf("%s-%d-fragments-%d", opName(op), size, f), func(c *client) {
				c.send(fragments(op, p[:size], f)...)
				c.expectMessage(op, p[:size])
				c.closeNormally()
			}})
			n++
		}
		cases = append(cases, tcase{fmt.Sprintf("10.1.%d", n), opName(op) + "-irregular-fragments-with-empty-ones-and-pings", func(c *client) {
			// Fragments of pseudo-random sizes, empty ones among them,
			// a ping now and then, written in pieces of 1000 bytes.
			sizes := randomBytes(4096)
			var fs []frame
			var pongs []string
			rest, first, i := p, true, 0
			for len(rest) > 0 {
				k := min(int(sizes[i%len(sizes)])*int(sizes[(i+1)%len(sizes)])%3000, len(rest))
				if sizes[i%len(sizes)]%11 == 0 {
					k = 0
				}
				o := ws.OpContinuation
				if first {
					o = op
				}
				first = false
				fs = append(fs, frag(o, k == len(rest), rest[:k]))
				rest = rest[k:]
				if i%17 == 0 && len(rest) > 0 {
					pongs = append(pongs, fmt.Sprint("ping-", i))
					fs = append(fs, ping(pongs[len(pongs)-1]))
				}
				i++
			}
			c.sendChunked(1000, 0, fs...)
			for _, s := range pongs {
				c.expectPong(s)
			}
			c.expectMessage(op, p)
			c.closeNormally()
		}})
		n++
	}
	runCases(t, addr, cases)
}
