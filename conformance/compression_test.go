package conformance

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/engine"
	"github.com/gobwas/ws"
)

// The permessage-deflate families (RFC 7692):
//
//	12.x compressed echo of messages of 16 B to 128 KiB, text and binary,
//	     compressible and not, on the default offer
//	13.x the same under every offer a client can make: server_max_window_bits
//	     absent or 8..15, client_max_window_bits absent, bare or 8..15, each
//	     context-takeover flag on or off, and lists of offers with fallbacks
//	12.6.x (not in Autobahn) offers the server must decline without
//	     failing the handshake, and compressed input it must refuse:
//	     corrupt data (1007), a deflate bomb (1009 once the inflated size
//	     passes the limit), RSV1 on a continuation or control frame (1002)
//
// What fanout answers (asserted unless FANOUT_CONFORMANCE_URL points the
// suite elsewhere; any server is held to RFC 7692 itself): an acceptable
// offer gets "permessage-deflate; server_no_context_takeover;
// client_no_context_takeover"; one asking for server_max_window_bits
// below 15 is declined (compress/flate's window is fixed at 32 KiB), so a
// client's next offer, or no compression, applies.

// deflateParams are the parameters of one extension in a header.
type deflateParams map[string]string

// parseExtensions splits a Sec-WebSocket-Extensions value into its
// extensions (name, parameters).
func parseExtensions(h string) (names []string, params []deflateParams) {
	for _, ext := range strings.Split(h, ",") {
		parts := strings.Split(ext, ";")
		name := strings.TrimSpace(parts[0])
		if name == "" {
			continue
		}
		ps := deflateParams{}
		for _, p := range parts[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			ps[strings.TrimSpace(k)] = strings.Trim(strings.TrimSpace(v), `"`)
		}
		names = append(names, name)
		params = append(params, ps)
	}
	return names, params
}

// checkDeflateResponse holds the server's answer to an offer to RFC 7692
// 7.1: one permessage-deflate, known parameters only, a
// server_max_window_bits no larger than the accepted offer asked for, a
// client_max_window_bits only when offered.
func checkDeflateResponse(t testing.TB, offer, resp string) {
	t.Helper()
	names, params := parseExtensions(resp)
	if len(names) != 1 || names[0] != "permessage-deflate" {
		t.Fatalf("handshake: extensions %q accepted for offer %q: want one permessage-deflate", resp, offer)
	}
	_, offers := parseExtensions(offer)
	p := params[0]
	for k, v := range p {
		switch k {
		case "server_no_context_takeover", "client_no_context_takeover":
			if v != "" {
				t.Fatalf("handshake: %s=%q has a value (RFC 7692 7.1.1)", k, v)
			}
		case "server_max_window_bits", "client_max_window_bits":
			n, err := strconv.Atoi(v)
			if err != nil || n < 8 || n > 15 {
				t.Fatalf("handshake: %s=%q (RFC 7692 7.1.2: 8..15)", k, v)
			}
			if k == "client_max_window_bits" {
				offered := false
				for _, o := range offers {
					_, offered = o["client_max_window_bits"]
					if offered {
						break
					}
				}
				if !offered {
					t.Fatalf("handshake: client_max_window_bits in the answer to %q, which did not offer it (RFC 7692 7.1.2.2)", offer)
				}
			}
		default:
			t.Fatalf("handshake: unknown parameter %q in %q", k, resp)
		}
	}
}

// deflateMsg compresses p as one permessage-deflate message (no context).
func deflateMsg(p []byte) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = w.Write(p)
	_ = w.Flush()
	out := b.Bytes()
	return bytes.TrimSuffix(out, []byte{0, 0, 0xff, 0xff})
}

// compressed is a compressed data message in one frame.
func compressed(op ws.OpCode, p []byte) frame {
	return frame{fin: true, rsv: 4, op: op, payload: deflateMsg(p)}
}

func (c *client) countCompressed() { c.compressedIn++ }

// maybeInflate inflates a compressed message from the server, with the
// context of its previous ones unless it promised
// server_no_context_takeover.
func (c *client) maybeInflate(compressed bool, p []byte) []byte {
	c.t.Helper()
	if !compressed {
		return p
	}
	_, params := parseExtensions(c.accepted)
	_, noContext := params[0]["server_no_context_takeover"]
	var dict []byte
	if !noContext {
		dict = c.window
	}
	in := append(append([]byte(nil), p...), 0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff)
	out, err := io.ReadAll(io.LimitReader(flate.NewReaderDict(bytes.NewReader(in), dict), 64<<20))
	if err != nil {
		c.t.Fatalf("server sent a compressed message that does not inflate: %v (RFC 7692 7.2.2)", err)
	}
	if !noContext {
		c.window = append(c.window, out...)
		if len(c.window) > 32<<10 {
			c.window = append([]byte(nil), c.window[len(c.window)-32<<10:]...)
		}
	}
	return out
}

// payloads of the 12.x family: what compresses well, what does not.
func payloadKinds() []struct {
	name string
	op   ws.OpCode
	make func(n int) []byte
} {
	return []struct {
		name string
		op   ws.OpCode
		make func(n int) []byte
	}{
		{"text-json", ws.OpText, func(n int) []byte {
			var b []byte
			for i := 0; len(b) < n; i++ {
				b = fmt.Appendf(b, `{"channel":"room.%d","data":{"user":"u%d","text":"hello there, number %d"}},`, i%7, i%13, i)
			}
			return b[:n]
		}},
		{"binary-pattern", ws.OpBinary, pattern},
		{"binary-random", ws.OpBinary, randomBytes},
		{"text-utf8", ws.OpText, func(n int) []byte {
			b := bytes.Repeat([]byte("κόσμε ☃ 𝄞 "), n/18+1)
			for len(b) > n {
				_, size := lastRune(b)
				b = b[:len(b)-size]
			}
			for len(b) < n {
				b = append(b, 'x')
			}
			return b
		}},
	}
}

func lastRune(b []byte) (rune, int) {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i]&0xc0 != 0x80 {
			return 0, len(b) - i
		}
	}
	return 0, 1
}

var compressionSizes = []int{16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072}

// echoCompressed sends each message compressed (or plain when the server
// bounded the client's window below its size) and expects it back.
func (c *client) echoCompressed(op ws.OpCode, msgs ...[]byte) {
	c.t.Helper()
	maxClient := 15
	if _, params := parseExtensions(c.accepted); len(params) == 1 {
		if v, ok := params[0]["client_max_window_bits"]; ok {
			maxClient, _ = strconv.Atoi(v)
		}
	}
	for _, m := range msgs {
		if c.deflate && len(m) <= 1<<maxClient {
			c.send(compressed(op, m))
		} else {
			c.send(frame{fin: true, op: op, payload: m})
		}
		c.expectMessage(op, m)
	}
}

func TestCompression12(t *testing.T) {
	addr := startEcho(t, func(cfg *engine.Config) { cfg.MaxMessageBytes = 16 << 20 })
	var cases []tcase
	for k, kind := range payloadKinds() {
		for s, size := range compressionSizes {
			cases = append(cases, tcase{fmt.Sprintf("12.%d.%d", k+1, s+1), fmt.Sprintf("%s-%d", kind.name, size), func(c *client) {
				msgs := make([][]byte, 8)
				for i := range msgs {
					msgs[i] = kind.make(size)
				}
				c.echoCompressed(kind.op, msgs...)
				if externalURL == "" && size >= 256 && kind.name != "binary-random" && c.compressedIn == 0 {
					c.t.Fatalf("%d compressible messages of %d bytes echoed, none compressed", len(msgs), size)
				}
				c.closeNormally()
			}})
		}
	}
	runDeflateCases(t, addr, "permessage-deflate", cases)
}

// runDeflateCases runs each case on a connection that offered offer.
func runDeflateCases(t *testing.T, addr, offer string, cases []tcase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.id+"/"+tc.name, func(t *testing.T) {
			c := dialWith(t, addr, dialOpts{extensions: offer})
			if !c.deflate {
				t.Fatalf("offer %q declined", offer)
			}
			tc.run(c)
		})
	}
	expectReleased(t, addr)
}

// offerCase is one 13.x offer and what fanout answers it.
type offerCase struct {
	offer  string
	accept bool
}

// allOffers is every single offer a client can make with valid parameters
// (RFC 7692 7.1), and lists of offers with a fallback.
func allOffers() []offerCase {
	var out []offerCase
	serverBits := []int{0, 8, 9, 10, 11, 12, 13, 14, 15}
	clientBits := []string{"", "client_max_window_bits", "client_max_window_bits=8", "client_max_window_bits=9",
		"client_max_window_bits=10", "client_max_window_bits=11", "client_max_window_bits=12",
		"client_max_window_bits=13", "client_max_window_bits=14", "client_max_window_bits=15"}
	for _, sb := range serverBits {
		for _, cb := range clientBits {
			for _, snct := range []bool{false, true} {
				for _, cnct := range []bool{false, true} {
					o := "permessage-deflate"
					if snct {
						o += "; server_no_context_takeover"
					}
					if cnct {
						o += "; client_no_context_takeover"
					}
					if sb != 0 {
						o += "; server_max_window_bits=" + strconv.Itoa(sb)
					}
					if cb != "" {
						o += "; " + cb
					}
					out = append(out, offerCase{o, sb == 0 || sb == 15})
				}
			}
		}
	}
	// Fallbacks, as Autobahn's 13.7 and browsers' extension lists make
	// them: the first acceptable offer wins.
	out = append(out,
		offerCase{"permessage-deflate; server_max_window_bits=8; server_no_context_takeover, permessage-deflate; server_no_context_takeover, permessage-deflate", true},
		offerCase{"permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits", true},
		offerCase{"x-webkit-deflate-frame, permessage-deflate", true},
		offerCase{"permessage-deflate; server_max_window_bits=10; client_max_window_bits=10", false},
	)
	return out
}

func TestCompression13(t *testing.T) {
	addr := startEcho(t, nil)
	for i, oc := range allOffers() {
		t.Run(fmt.Sprintf("13.%d/%s", i+1, oc.offer), func(t *testing.T) {
			c := dialWith(t, addr, dialOpts{extensions: oc.offer})
			if externalURL == "" {
				if c.deflate != oc.accept {
					t.Fatalf("offer %q: accepted %q, want accepted=%v", oc.offer, c.accepted, oc.accept)
				}
				if c.deflate && !strings.Contains(c.accepted, "server_no_context_takeover") || c.deflate && !strings.Contains(c.accepted, "client_no_context_takeover") {
					t.Fatalf("offer %q answered %q: want both no_context_takeover parameters", oc.offer, c.accepted)
				}
			}
			// A few sizes on each: small (sent as is by the server), at
			// the threshold, over a 512-byte window, over 32 KiB.
			for _, n := range []int{20, 300, 4000, 40000} {
				kinds := payloadKinds()
				c.echoCompressed(ws.OpText, kinds[0].make(n), kinds[3].make(n))
				c.echoCompressed(ws.OpBinary, pattern(n))
			}
			c.closeNormally()
		})
	}
	expectReleased(t, addr)
}

// TestCompressionRefusals is 12.6.x (not in Autobahn): offers declined
// without failing the handshake, and compressed input the server refuses.
func TestCompressionRefusals(t *testing.T) {
	addr := startEcho(t, func(cfg *engine.Config) { cfg.MaxMessageBytes = 1 << 20 })
	for i, offer := range []string{
		"permessage-deflate; foo",
		"permessage-deflate; client_max_window_bits=7",
		"permessage-deflate; client_max_window_bits=16",
		"permessage-deflate; server_max_window_bits",
		"permessage-deflate; server_max_window_bits=abc",
		"permessage-deflate; server_no_context_takeover=1",
		"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
		"permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
		"x-webkit-deflate-frame",
		"deflate-frame; no_context_takeover",
	} {
		t.Run(fmt.Sprintf("12.6.%d/declined/%s", i+1, offer), func(t *testing.T) {
			c := dialWith(t, addr, dialOpts{extensions: offer})
			if c.deflate {
				t.Fatalf("offer %q accepted as %q", offer, c.accepted)
			}
			c.send(text("still works"))
			c.expectText("still works")
			c.closeNormally()
		})
	}

	hello := []byte(strings.Repeat("Hello, compressed world! ", 40))
	cases := []tcase{
		{"12.7.1", "corrupt-data", func(c *client) {
			c.send(frame{fin: true, rsv: 4, op: ws.OpText, payload: []byte{0xff, 0xfe, 0xfd, 0xfc, 0x00, 0x13}})
			c.expectClose(codeInvalid)
		}},
		{"12.7.2", "deflate-bomb", func(c *client) {
			// 64 MiB of zeros is 64 KiB compressed: it must fail once the
			// inflated size passes the 1 MiB limit, not be inflated whole.
			c.send(compressed(ws.OpBinary, make([]byte, 64<<20)))
			c.expectClose(codeTooBig)
		}},
		{"12.7.3", "deflate-bomb-fragmented", func(c *client) {
			z := deflateMsg(make([]byte, 8<<20))
			half := len(z) / 2
			c.send(frame{fin: false, rsv: 4, op: ws.OpBinary, payload: z[:half]}, frag(ws.OpContinuation, true, z[half:]))
			c.expectClose(codeTooBig)
		}},
		{"12.7.4", "rsv1-on-continuation", func(c *client) {
			z := deflateMsg(hello)
			c.send(frame{fin: false, rsv: 4, op: ws.OpText, payload: z[:5]}, frame{fin: true, rsv: 4, op: ws.OpContinuation, payload: z[5:]})
			c.expectClose(codeProtocol)
		}},
		{"12.7.5", "rsv1-on-ping", func(c *client) {
			c.send(frame{fin: true, rsv: 4, op: ws.OpPing, payload: []byte("x")})
			c.expectClose(codeProtocol)
		}},
		{"12.7.6", "rsv2-still-reserved", func(c *client) {
			c.send(frame{fin: true, rsv: 2, op: ws.OpText, payload: []byte("x")})
			c.expectClose(codeProtocol)
		}},
		{"12.7.7", "compressed-invalid-utf8", func(c *client) {
			c.send(compressed(ws.OpText, append(bytes.Repeat([]byte("a"), 300), 0xff, 0xfe)))
			c.expectClose(codeInvalid)
		}},
		{"12.7.8", "fragmented-compressed-with-ping-between", func(c *client) {
			z := deflateMsg(hello)
			third := len(z) / 3
			c.send(frame{fin: false, rsv: 4, op: ws.OpText, payload: z[:third]}, ping("mid"),
				frag(ws.OpContinuation, false, z[third:2*third]), frag(ws.OpContinuation, true, z[2*third:]))
			c.expectPong("mid")
			c.expectText(string(hello))
			c.closeNormally()
		}},
		{"12.7.9", "compressed-and-plain-interleaved", func(c *client) {
			for i := range 10 {
				m := fmt.Appendf(nil, "%d %s", i, hello)
				if i%2 == 0 {
					c.send(compressed(ws.OpText, m))
				} else {
					c.send(text(string(m)))
				}
				c.expectText(string(m))
			}
			c.closeNormally()
		}},
		{"12.7.10", "empty-compressed-message", func(c *client) {
			c.send(frame{fin: true, rsv: 4, op: ws.OpBinary, payload: []byte{0x00}})
			c.expectBinary([]byte{})
			c.send(compressed(ws.OpText, nil))
			c.expectText("")
			c.closeNormally()
		}},
		{"12.7.11", "exactly-the-limit-inflated", func(c *client) {
			m := make([]byte, 1<<20)
			for i := range m {
				m[i] = byte(mrand.IntN(4))
			}
			c.send(compressed(ws.OpBinary, m))
			c.expectBinary(m)
			c.send(compressed(ws.OpBinary, append(m, 0)))
			c.expectClose(codeTooBig)
		}},
	}
	runDeflateCases(t, addr, "permessage-deflate", cases)
}
