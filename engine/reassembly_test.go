package engine

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// readUntilClose reads frames, answering nothing, until the server's close
// frame, and returns its code and reason.
func (c *rawConn) readUntilClose() (uint16, string) {
	c.t.Helper()
	for {
		h, p := c.readFrame()
		if h.OpCode != ws.OpClose {
			continue
		}
		if len(p) < 2 {
			c.t.Fatalf("close frame without code")
		}
		return uint16(p[0])<<8 | uint16(p[1]), string(p[2:])
	}
}

// TestFragmentedMessageTimesOut: FrameTimeout bounds a fragmented message
// from its first fragment to its final one. A client that opens a message
// and then keeps the connection busy (pings, or more fragments, each well
// within the timeout) is closed 1002; before, it held the reassembly buffer
// for as long as it liked (2,000 such clients held 3.17 GB).
func TestFragmentedMessageTimesOut(t *testing.T) {
	const frameTimeout = 300 * time.Millisecond
	s := startServer(t, Config{Echo: true, FrameTimeout: frameTimeout})
	tests := []struct {
		name string
		next func(i int) []byte // what the client sends every 50 ms
	}{
		{"pings", func(int) []byte { return frame(true, ws.OpPing, []byte("x")) }},
		{"more fragments", func(int) []byte { return frame(false, ws.OpContinuation, []byte("more ")) }},
		{"fragments with pings between", func(i int) []byte {
			if i%2 == 0 {
				return frame(true, ws.OpPing, nil)
			}
			return frame(false, ws.OpContinuation, bytes.Repeat([]byte("y"), 100))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			c.upgrade()
			c.write(frame(false, ws.OpText, []byte("the start, ")))
			done := make(chan struct{})
			defer close(done)
			go func() {
				for i := 0; ; i++ {
					select {
					case <-done:
						return
					case <-time.After(50 * time.Millisecond):
					}
					if _, err := c.nc.Write(tt.next(i)); err != nil {
						return
					}
				}
			}()
			_ = c.nc.SetReadDeadline(time.Now().Add(15 * time.Second))
			if code, reason := c.readUntilClose(); code != CloseProtocolError || !strings.Contains(reason, "in time") {
				t.Fatalf("close %d %q, want 1002 (timeout)", code, reason)
			}
		})
	}

	// A message completed in time ends its deadline: the connection stays.
	t.Run("completed in time", func(t *testing.T) {
		c := dialRaw(t, s)
		c.upgrade()
		c.write(frame(false, ws.OpText, []byte("a")))
		c.write(frame(true, ws.OpContinuation, []byte("b")))
		if h, p := c.readFrame(); h.OpCode != ws.OpText || string(p) != "ab" {
			t.Fatalf("echo %v %q", h.OpCode, p)
		}
		// Absence of a close cannot be polled for; a slow machine only
		// makes a wrong close less likely to be seen, never a false one.
		time.Sleep(3 * frameTimeout)
		c.write(frame(true, ws.OpPing, []byte("alive")))
		if h, p := c.readFrame(); h.OpCode != ws.OpPong || string(p) != "alive" {
			t.Fatalf("got %v %q, want pong", h.OpCode, p)
		}
	})
}

// TestFragmentUTF8CheckedAsItArrives: a fragmented text message is closed
// 1007 at its first invalid fragment, without waiting for the final one
// (which these clients never send); a rune split across fragments, at any
// byte, is valid. The FrameTimeout is long: only the UTF-8 check can close
// these connections within the test.
func TestFragmentUTF8CheckedAsItArrives(t *testing.T) {
	s := startServer(t, Config{Echo: true, FrameTimeout: time.Minute})
	euro, emoji := "\u20ac", "\U0001F600" // 3 and 4 bytes
	tests := []struct {
		name      string
		op        ws.OpCode
		fragments []string
		final     bool // the last fragment is final
		invalid   bool
	}{
		{"invalid in the first fragment", ws.OpText, []string{"ok \xff"}, false, true},
		{"invalid in a later fragment", ws.OpText, []string{"ok ", "fine", "bad \xc0\xaf"}, false, true},
		{"impossible rune start at the end", ws.OpText, []string{"ok \xe0\x80"}, false, true}, // overlong
		{"surrogate start at the end", ws.OpText, []string{"ok \xed\xa0"}, false, true},       // U+D800..
		{"beyond U+10FFFF at the end", ws.OpText, []string{"ok \xf4\x90"}, false, true},       // > U+10FFFF
		{"split rune, bad continuation", ws.OpText, []string{"ok \xe2\x82", "\x28 more"}, false, true},
		{"rune cut by the final fragment", ws.OpText, []string{"ok \xe2\x82", "\xac \xe2"}, true, true},
		{"3-byte rune split 1|2", ws.OpText, []string{"a" + euro[:1], euro[1:] + "b"}, true, false},
		{"3-byte rune split 2|1", ws.OpText, []string{"a" + euro[:2], euro[2:] + "b"}, true, false},
		{"3-byte rune over 3 fragments", ws.OpText, []string{euro[:1], euro[1:2], euro[2:]}, true, false},
		{"4-byte rune split 1|3", ws.OpText, []string{emoji[:1], emoji[1:]}, true, false},
		{"4-byte rune split 3|1", ws.OpText, []string{emoji[:3], emoji[3:]}, true, false},
		{"4-byte rune one byte a fragment", ws.OpText, []string{emoji[:1], emoji[1:2], emoji[2:3], emoji[3:], ""}, true, false},
		{"empty fragments", ws.OpText, []string{"", "", "x", ""}, true, false},
		{"binary is not checked", ws.OpBinary, []string{"\xff", "\xfe"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			c.upgrade()
			_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			for i, f := range tt.fragments {
				op := tt.op
				if i > 0 {
					op = ws.OpContinuation
				}
				fin := tt.final && i == len(tt.fragments)-1
				c.write(frame(fin, op, []byte(f)))
			}
			if tt.invalid {
				c.expectClose(CloseInvalidPayload)
				return
			}
			want := strings.Join(tt.fragments, "")
			if h, p := c.readFrame(); h.OpCode != tt.op || string(p) != want {
				t.Fatalf("echo %v %q, want %q", h.OpCode, p, want)
			}
		})
	}
}

func TestValidUTF8Prefix(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		ok   bool
		note string
	}{
		{"", 0, true, "empty"},
		{"abc", 3, true, "ascii"},
		{"a\xe2", 1, true, "3-byte start"},
		{"a\xe2\x82", 1, true, "3-byte, 2 of 3"},
		{"a\xe2\x82\xac", 4, true, "complete"},
		{"\xf0\x9f\x98", 0, true, "4-byte, 3 of 4"},
		{"a\xff", 0, false, "invalid byte"},
		{"\xe0\x80", 0, false, "overlong prefix"},
		{"\x80", 0, false, "lone continuation"},
		{"\xff\xe2", 0, false, "invalid before a valid start"},
		{"a\xe2\x28", 0, false, "bad continuation"},
	}
	for _, tt := range tests {
		n, ok := validUTF8Prefix([]byte(tt.in))
		if ok != tt.ok || (ok && n != tt.n) {
			t.Errorf("%s %q: %d %v, want %d %v", tt.note, tt.in, n, ok, tt.n, tt.ok)
		}
	}
}

// TestReassemblyBudget: the bytes held for messages still arriving (the
// fragments of an open message, the start of a frame larger than one read)
// count against one server-wide MaxReassemblyBytes. A connection that would
// pass it is closed 1009 while the others go on; bytes come back to the
// budget when a message completes or its connection goes, however it goes.
func TestReassemblyBudget(t *testing.T) {
	const budget = 96 << 10
	s := startServer(t, Config{Echo: true, MaxReassemblyBytes: budget, FrameTimeout: time.Minute})
	held := func() int64 { return s.reassembly.Load() }
	waitHeld := func(t *testing.T, min, max int64) {
		t.Helper()
		checkFor(t, 10*time.Second, time.Millisecond, func() error {
			if h := held(); h < min || h > max {
				return fmt.Errorf("%d bytes held, want %d..%d", h, min, max)
			}
			return nil
		})
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 4<<10) // 64 KiB
	tests := []struct {
		name string
		// hold sends the start of a message of big; finish sends the rest.
		hold, finish []byte
		op           ws.OpCode
	}{
		{"fragment", frame(false, ws.OpBinary, big), frame(true, ws.OpContinuation, nil), ws.OpBinary},
		{"frame larger than a read", frame(true, ws.OpBinary, big)[:50<<10], frame(true, ws.OpBinary, big)[50<<10:], ws.OpBinary},
		{"text fragments", append(frame(false, ws.OpText, big[:32<<10]), frame(false, ws.OpContinuation, big[32<<10:])...), frame(true, ws.OpContinuation, nil), ws.OpText},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			waitHeld(t, 0, 0)
			holder := dialRaw(t, s)
			holder.upgrade()
			holder.write(tt.hold)
			waitHeld(t, 48<<10, budget)

			// Another connection's fragment does not fit: that one is closed.
			other := dialRaw(t, s)
			other.upgrade()
			other.write(frame(false, ws.OpBinary, big[:48<<10]))
			if code, reason := other.readUntilClose(); code != CloseTooBig || !strings.Contains(reason, "budget") {
				t.Fatalf("close %d %q, want 1009 (budget)", code, reason)
			}

			// The holder is unaffected and completes its message.
			holder.write(tt.finish)
			if h, p := holder.readFrame(); h.OpCode != tt.op || !bytes.Equal(p, big) {
				t.Fatalf("echo: %v, %d bytes", h.OpCode, len(p))
			}
			waitHeld(t, 0, 0)

			// With the budget free again the same message goes through.
			again := dialRaw(t, s)
			again.upgrade()
			again.write(tt.hold)
			again.write(tt.finish)
			if h, p := again.readFrame(); h.OpCode != tt.op || !bytes.Equal(p, big) {
				t.Fatalf("echo: %v, %d bytes", h.OpCode, len(p))
			}

			// A connection that goes with its message half-sent gives its
			// share back.
			gone := dialRaw(t, s)
			gone.upgrade()
			gone.write(tt.hold)
			waitHeld(t, 48<<10, budget)
			_ = gone.nc.Close()
			waitHeld(t, 0, 0)
		})
	}
}

// TestReassemblyBudgetReleasedOnServerClose: a connection the server closes
// (here: a protocol error in the middle of a fragmented message) returns
// what it held to the budget.
func TestReassemblyBudgetReleasedOnServerClose(t *testing.T) {
	s := startServer(t, Config{Echo: true})
	c := dialRaw(t, s)
	c.upgrade()
	c.write(frame(false, ws.OpBinary, make([]byte, 1000)))
	checkFor(t, 10*time.Second, time.Millisecond, func() error {
		if h := s.reassembly.Load(); h != 1000 {
			return fmt.Errorf("%d bytes held, want 1000", h)
		}
		return nil
	})
	c.write(frame(true, ws.OpText, []byte("new message inside a fragmented one")))
	c.expectClose(CloseProtocolError)
	_ = c.nc.Close()
	checkFor(t, 10*time.Second, time.Millisecond, func() error {
		if h := s.reassembly.Load(); h != 0 {
			return errors.New("bytes still held after the close")
		}
		return nil
	})
}
