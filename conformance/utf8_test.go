package conformance

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// utf8Seq is one of Autobahn's 6.5-6.23 payloads (after Markus Kuhn's
// "UTF-8 decoder capability and stress test"), with whether it is valid
// UTF-8 as RFC 3629 defines it, which RFC 6455 requires of text: no
// overlong forms, no surrogates (U+D800-U+DFFF), nothing above U+10FFFF.
// Noncharacters (U+FFFE, U+FDD0...) are valid.
type utf8Seq struct {
	id, name string
	b        string
	valid    bool
}

func utf8Seqs() []utf8Seq {
	var out []utf8Seq
	add := func(group, name, b string, valid bool) {
		n := 1
		for _, s := range out {
			if strings.HasPrefix(s.id, group+".") {
				n++
			}
		}
		out = append(out, utf8Seq{fmt.Sprintf("%s.%d", group, n), name, b, valid})
	}
	const kosme = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
	// 6.5: valid text.
	add("6.5", "kosme", kosme, true)
	add("6.5", "internationalization", "I\xc3\xb1t\xc3\xabrn\xc3\xa2ti\xc3\xb4n\xc3\xa0liz\xc3\xa6ti\xc3\xb8n", true)
	add("6.5", "u10000", "\xf0\x90\x80\x80", true)
	add("6.5", "emoji", "\xf0\x9f\x98\x80", true)
	add("6.5", "1-2-3-4-byte-mix", "a\xc2\xa2\xe2\x82\xac\xf0\x90\x8d\x88z", true)
	// 6.6: kosme cut after each byte: valid only at rune boundaries.
	for i := 1; i <= len(kosme); i++ {
		add("6.6", fmt.Sprintf("kosme-prefix-%d", i), kosme[:i], i == 2 || i == 5 || i == 7 || i == 9 || i == 11)
	}
	// 6.7: first possible sequence of each length; 6.8: of the 5- and
	// 6-byte forms UTF-8 no longer has.
	add("6.7", "u0000", "\x00", true)
	add("6.7", "u0080", "\xc2\x80", true)
	add("6.7", "u0800", "\xe0\xa0\x80", true)
	add("6.7", "u10000", "\xf0\x90\x80\x80", true)
	add("6.8", "5-byte-u200000", "\xf8\x88\x80\x80\x80", false)
	add("6.8", "6-byte-u4000000", "\xfc\x84\x80\x80\x80\x80", false)
	// 6.9: last possible sequence of each length; 6.10: past U+10FFFF.
	add("6.9", "u007f", "\x7f", true)
	add("6.9", "u07ff", "\xdf\xbf", true)
	add("6.9", "uffff", "\xef\xbf\xbf", true)
	add("6.9", "u10ffff", "\xf4\x8f\xbf\xbf", true)
	add("6.10", "4-byte-u1fffff", "\xf7\xbf\xbf\xbf", false)
	add("6.10", "5-byte-u3ffffff", "\xfb\xbf\xbf\xbf\xbf", false)
	add("6.10", "6-byte-u7fffffff", "\xfd\xbf\xbf\xbf\xbf\xbf", false)
	// 6.11: other boundaries.
	add("6.11", "ud7ff", "\xed\x9f\xbf", true)
	add("6.11", "ue000", "\xee\x80\x80", true)
	add("6.11", "ufffd", "\xef\xbf\xbd", true)
	add("6.11", "u10ffff", "\xf4\x8f\xbf\xbf", true)
	add("6.11", "u110000", "\xf4\x90\x80\x80", false)
	// 6.12: unexpected continuation bytes.
	add("6.12", "80", "\x80", false)
	add("6.12", "bf", "\xbf", false)
	for n := 2; n <= 7; n++ {
		add("6.12", fmt.Sprintf("%d-continuations", n), strings.Repeat("\x80\xbf", 4)[:n], false)
	}
	var all strings.Builder
	for b := 0x80; b <= 0xbf; b++ {
		all.WriteByte(byte(b))
	}
	add("6.12", "all-64-continuations", all.String(), false)
	// 6.13: lonely start bytes, each followed by a space.
	lonely := func(from, to int) string {
		var s strings.Builder
		for b := from; b <= to; b++ {
			s.WriteByte(byte(b))
			s.WriteByte(' ')
		}
		return s.String()
	}
	add("6.13", "2-byte-starts", lonely(0xc0, 0xdf), false)
	add("6.13", "3-byte-starts", lonely(0xe0, 0xef), false)
	add("6.13", "4-byte-starts", lonely(0xf0, 0xf7), false)
	add("6.13", "5-byte-starts", lonely(0xf8, 0xfb), false)
	add("6.13", "6-byte-starts", lonely(0xfc, 0xfd), false)
	// 6.14: sequences with their last continuation byte missing; 6.15:
	// all of them in a row.
	missing := []string{
		"\xc0", "\xe0\x80", "\xf0\x80\x80", "\xf8\x80\x80\x80", "\xfc\x80\x80\x80\x80",
		"\xdf", "\xef\xbf", "\xf7\xbf\xbf", "\xfb\xbf\xbf\xbf", "\xfd\xbf\xbf\xbf\xbf",
	}
	for _, m := range missing {
		add("6.14", fmt.Sprintf("truncated-% x", m), m, false)
	}
	add("6.15", "truncated-concatenated", strings.Join(missing, ""), false)
	// 6.16: bytes that never appear in UTF-8.
	add("6.16", "fe", "\xfe", false)
	add("6.16", "ff", "\xff", false)
	add("6.16", "fe-fe-ff-ff", "\xfe\xfe\xff\xff", false)
	// 6.17: overlong '/'; 6.18: the largest overlong of each length;
	// 6.19: overlong NUL.
	for i, s := range []string{"\xc0\xaf", "\xe0\x80\xaf", "\xf0\x80\x80\xaf", "\xf8\x80\x80\x80\xaf", "\xfc\x80\x80\x80\x80\xaf"} {
		add("6.17", fmt.Sprintf("overlong-slash-%d-bytes", i+2), s, false)
	}
	for i, s := range []string{"\xc1\xbf", "\xe0\x9f\xbf", "\xf0\x8f\xbf\xbf", "\xf8\x87\xbf\xbf\xbf", "\xfc\x83\xbf\xbf\xbf\xbf"} {
		add("6.18", fmt.Sprintf("max-overlong-%d-bytes", i+2), s, false)
	}
	for i, s := range []string{"\xc0\x80", "\xe0\x80\x80", "\xf0\x80\x80\x80", "\xf8\x80\x80\x80\x80", "\xfc\x80\x80\x80\x80\x80"} {
		add("6.19", fmt.Sprintf("overlong-nul-%d-bytes", i+2), s, false)
	}
	// 6.20: single UTF-16 surrogates; 6.21: paired ones (CESU-8).
	for _, s := range []string{"\xed\xa0\x80", "\xed\xad\xbf", "\xed\xae\x80", "\xed\xaf\xbf", "\xed\xb0\x80", "\xed\xbe\x80", "\xed\xbf\xbf"} {
		add("6.20", fmt.Sprintf("surrogate-% x", s), s, false)
	}
	for _, hi := range []string{"\xed\xa0\x80", "\xed\xad\xbf", "\xed\xae\x80", "\xed\xaf\xbf"} {
		for _, lo := range []string{"\xed\xb0\x80", "\xed\xbf\xbf"} {
			add("6.21", fmt.Sprintf("surrogate-pair-% x", hi+lo), hi+lo, false)
		}
	}
	// 6.22: noncharacters U+FFFE, U+FFFF and U+nFFFE, U+nFFFF of every
	// plane: valid.
	add("6.22", "ufffe", "\xef\xbf\xbe", true)
	add("6.22", "uffff", "\xef\xbf\xbf", true)
	for plane := rune(1); plane <= 16; plane++ {
		for _, low := range []rune{0xfffe, 0xffff} {
			r := plane<<16 | low
			add("6.22", fmt.Sprintf("u%x", r), string(r), true)
		}
	}
	// 6.23: more valid specials.
	add("6.23", "ufdd0", "\xef\xb7\x90", true)
	add("6.23", "ufdef", "\xef\xb7\xaf", true)
	add("6.23", "ufff9", "\xef\xbf\xb9", true)
	add("6.23", "bom", "\xef\xbb\xbf", true)
	add("6.23", "nul-inside", "a\x00b", true)
	// 6.24 (not in Autobahn): code points past U+10FFFF in the 4-byte
	// form, and an error deep inside long valid text.
	add("6.24", "u140000", "\xf5\x80\x80\x80", false)
	add("6.24", "u13ffff", "\xf4\xbf\xbf\xbf", false)
	add("6.24", "overlong-surrogate", "\xf0\x8d\xa0\x80", false)
	long := strings.Repeat(kosme, 100)
	add("6.24", "surrogate-after-1100-bytes", long+"\xed\xa0\x80"+long, false)
	add("6.24", "truncated-at-end-of-long", long+"\xf0\x9f\x98", false)
	return out
}

// deadAt is the number of bytes of b after which no continuation can make
// it valid UTF-8: where a server that checks as fragments arrive must fail
// the connection. len(b)+1 when every prefix can still be completed (b is
// valid, or invalid only because its end is missing).
func deadAt(b string) int {
	for k := 1; k <= len(b); k++ {
		if !completable(b[:k]) {
			return k
		}
	}
	return len(b) + 1
}

// completable reports whether some bytes appended to p make it valid
// UTF-8. A rune is at most 4 bytes, so 3 appended bytes suffice, and for
// each position one of 80, 90 and A0 lies in every range RFC 3629 allows
// there.
func completable(p string) bool {
	if utf8.ValidString(p) {
		return true
	}
	reps := []string{"\x80", "\x90", "\xa0"}
	var try func(s string, left int) bool
	try = func(s string, left int) bool {
		if utf8.ValidString(s) {
			return true
		}
		if left == 0 {
			return false
		}
		for _, r := range reps {
			if try(s+r, left-1) {
				return true
			}
		}
		return false
	}
	return try(p, 3)
}

// sendText sends a text message in the fragments given and checks the
// answer: the echo when valid; when not, a close 1007 as soon as the
// fragment that makes the message invalid has arrived. The fragments from
// that one on are never sent, and the ones sent are all non-final, so a
// server that waits for the end of the message times out.
func sendText(c *client, parts []string, valid bool) {
	c.t.Helper()
	msg := strings.Join(parts, "")
	if valid {
		var fs []frame
		for i, p := range parts {
			op := ws.OpContinuation
			if i == 0 {
				op = ws.OpText
			}
			fs = append(fs, frag(op, i == len(parts)-1, []byte(p)))
		}
		c.send(fs...)
		c.expectText(msg)
		return
	}
	dead := deadAt(msg)
	var fs []frame
	sent := 0
	for i, p := range parts {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		fs = append(fs, frag(op, false, []byte(p)))
		sent += len(p)
		if sent >= dead {
			break
		}
	}
	if sent < dead {
		// Invalid only because its end is missing: known at the end.
		fs = append(fs, frag(ws.OpContinuation, true, nil))
	}
	c.send(fs...)
	c.expectCloseWithin(codeInvalid, failFastWithin)
}

// bytewise splits s into one-byte pieces.
func bytewise(s string) []string {
	out := make([]string, len(s))
	for i := 0; i < len(s); i++ { // bytes, not runes
		out[i] = s[i : i+1]
	}
	return out
}

// TestUTF8 covers Autobahn 6.x: text messages must be valid UTF-8, checked
// whole and fragment by fragment, failing fast.
func TestUTF8(t *testing.T) {
	addr := startEcho(t, nil)
	const kosme = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
	const hello = "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!"
	const badEdited = kosme + "\xed\xa0\x80edited"
	cases := []tcase{
		{"6.1.1", "empty-text", func(c *client) {
			c.send(text(""))
			c.expectText("")
			c.closeNormally()
		}},
		{"6.1.2", "empty-text-3-fragments", func(c *client) {
			c.send(frag(ws.OpText, false, nil), frag(ws.OpContinuation, false, nil), frag(ws.OpContinuation, true, nil))
			c.expectText("")
			c.closeNormally()
		}},
		{"6.1.3", "empty-fragments-around-payload", func(c *client) {
			c.send(frag(ws.OpText, false, nil), frag(ws.OpContinuation, false, []byte("middle frame payload")), frag(ws.OpContinuation, true, nil))
			c.expectText("middle frame payload")
			c.closeNormally()
		}},
		{"6.2.1", "valid-one-frame", func(c *client) {
			c.send(text(hello))
			c.expectText(hello)
			c.closeNormally()
		}},
		{"6.2.2", "valid-2-fragments-every-split", func(c *client) {
			for i := 0; i <= len(hello); i++ {
				sendText(c, []string{hello[:i], hello[i:]}, true)
			}
			c.closeNormally()
		}},
		{"6.2.3", "valid-one-frame-chunks-1", func(c *client) {
			c.sendChunked(1, 20*time.Microsecond, text(hello))
			c.expectText(hello)
			c.closeNormally()
		}},
		{"6.2.4", "valid-fragment-per-byte", func(c *client) {
			sendText(c, bytewise(hello), true)
			sendText(c, bytewise(kosme), true)
			c.closeNormally()
		}},
		{"6.3.1", "invalid-one-frame-1007", func(c *client) {
			c.send(text(badEdited))
			c.expectClose(codeInvalid)
		}},
		{"6.3.2", "invalid-one-frame-chunks-1-1007", func(c *client) {
			c.sendChunked(1, 20*time.Microsecond, text(badEdited))
			c.expectClose(codeInvalid)
		}},
		// 6.4.x: fail fast. 6.4.1 and 6.4.2 send three fragments of
		// which the second makes the message invalid; the third (final)
		// one is never sent, and the close must come anyway.
		{"6.4.1", "fail-fast-invalid-fragment", func(c *client) {
			c.send(frag(ws.OpText, false, []byte(kosme)))
			time.Sleep(20 * time.Millisecond)
			c.send(frag(ws.OpContinuation, false, []byte("\xf4\x90\x80\x80")))
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		{"6.4.2", "fail-fast-rune-split-across-fragments", func(c *client) {
			c.send(frag(ws.OpText, false, []byte(kosme+"\xf4")))
			time.Sleep(20 * time.Millisecond)
			c.send(frag(ws.OpContinuation, false, []byte("\x90")))
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		// 6.4.3 and 6.4.4: one frame arriving in pieces. The server
		// checks a frame once all of it is there (Autobahn accepts that
		// as "non-strict"): the rest is sent, and the close must follow.
		{"6.4.3", "invalid-frame-in-pieces", func(c *client) {
			b := text(badEdited).bytes()
			i := len(b) - len(badEdited) // where the payload starts
			c.write(b[:i+len(kosme)])
			time.Sleep(20 * time.Millisecond)
			c.write(b[i+len(kosme) : i+len(kosme)+3])
			time.Sleep(20 * time.Millisecond)
			c.write(b[i+len(kosme)+3:])
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		{"6.4.4", "invalid-frame-in-pieces-split-rune", func(c *client) {
			payload := kosme + "\xf4\x90\x80\x80edited"
			b := text(payload).bytes()
			i := len(b) - len(payload) + len(kosme)
			c.write(b[:i+1])
			time.Sleep(20 * time.Millisecond)
			c.write(b[i+1 : i+2])
			time.Sleep(20 * time.Millisecond)
			c.write(b[i+2:])
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		// Not in Autobahn: fail fast on the first fragment, on an empty
		// first fragment followed by a bad one, and after many valid
		// fragments.
		{"6.4.5", "fail-fast-first-fragment", func(c *client) {
			c.send(frag(ws.OpText, false, []byte("ok\xc0\xaf")))
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		{"6.4.6", "fail-fast-after-empty-fragment", func(c *client) {
			c.send(frag(ws.OpText, false, nil), frag(ws.OpContinuation, false, []byte("\xff")))
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		{"6.4.7", "fail-fast-after-100-fragments", func(c *client) {
			parts := make([]string, 100)
			for i := range parts {
				parts[i] = kosme
			}
			sendText(c, append(parts, "\xed\xa0\x80", "never sent"), false)
		}},
		{"6.4.8", "fail-fast-ping-answered-before", func(c *client) {
			c.send(frag(ws.OpText, false, []byte(kosme[:3])), ping("p"), frag(ws.OpContinuation, false, []byte("A")))
			c.expectPong("p")
			c.expectCloseWithin(codeInvalid, failFastWithin)
		}},
		{"6.4.9", "invalid-binary-is-fine", func(c *client) {
			p := []byte(badEdited)
			c.send(frag(ws.OpBinary, false, p[:12]), frag(ws.OpContinuation, true, p[12:]))
			c.expectBinary(p)
			c.closeNormally()
		}},
	}
	for _, s := range utf8Seqs() {
		want := "1007"
		if s.valid {
			want = "echo"
		}
		cases = append(cases, tcase{s.id, s.name + "/frame-" + want, func(c *client) {
			c.send(text(s.b))
			if s.valid {
				c.expectText(s.b)
				c.closeNormally()
			} else {
				c.expectClose(codeInvalid)
			}
		}}, tcase{s.id, s.name + "/fragment-per-byte-" + want, func(c *client) {
			sendText(c, bytewise(s.b), s.valid)
			if s.valid {
				c.closeNormally()
			}
		}}, tcase{s.id, s.name + "/between-valid-fragments-" + want, func(c *client) {
			sendText(c, []string{"ok-" + kosme[:2], kosme[2:] + s.b, "-end"}, s.valid)
			if s.valid {
				c.closeNormally()
			}
		}})
	}
	runCases(t, addr, cases)
}

// TestUTF8Table checks the table's own expectations against the standard
// library's validator and the fail-fast oracle, so that a typo in a
// sequence cannot pass for a server bug.
func TestUTF8Table(t *testing.T) {
	for _, s := range utf8Seqs() {
		if utf8.ValidString(s.b) != s.valid {
			t.Errorf("%s %s: table says valid=%v", s.id, s.name, s.valid)
		}
		if d := deadAt(s.b); s.valid && d != len(s.b)+1 {
			t.Errorf("%s %s: valid but dead after %d bytes", s.id, s.name, d)
		}
	}
	for _, tt := range []struct {
		s    string
		dead int
	}{
		{"\xc0", 1}, {"\xdf", 2}, {"\xe0\x80", 2}, {"\xed\xa0", 2}, {"\xf4\x90", 2},
		{"\xf0\x9f\x98", 4}, {"a\x80", 2}, {"\xf5", 1}, {"\xe2\x82\xac\xff", 4},
	} {
		if got := deadAt(tt.s); got != tt.dead {
			t.Errorf("deadAt(% x) = %d, want %d", tt.s, got, tt.dead)
		}
	}
}
