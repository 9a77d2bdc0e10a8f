package deflate

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
)

func option(t testing.TB, header string) []httphead.Option {
	t.Helper()
	opts, ok := httphead.ParseOptions([]byte(header), nil)
	if !ok {
		t.Fatalf("parse %q", header)
	}
	return opts
}

func TestNegotiate(t *testing.T) {
	for _, tt := range []struct {
		offers string
		off    bool
		want   int // index of the accepted offer, -1: none
	}{
		{"permessage-deflate", false, 0},
		{"permessage-deflate", true, -1},
		{"permessage-deflate; client_max_window_bits", false, 0},
		{"permessage-deflate; client_max_window_bits=9; client_no_context_takeover", false, 0},
		{"permessage-deflate; server_no_context_takeover", false, 0},
		{"permessage-deflate; server_max_window_bits=15", false, 0},
		{"permessage-deflate; server_max_window_bits=10", false, -1},
		{"permessage-deflate; server_max_window_bits=10, permessage-deflate", false, 1},
		{"x-webkit-deflate-frame, permessage-deflate", false, 1},
		{"permessage-deflate; foo", false, -1},
		{"permessage-deflate; client_max_window_bits=16", false, -1},
		{"permessage-deflate; server_max_window_bits", false, -1},
		{"permessage-deflate; server_no_context_takeover; server_no_context_takeover", false, -1},
		{"permessage-deflate, permessage-deflate", false, 0},
	} {
		t.Run(fmt.Sprintf("offers=%s/off=%v", tt.offers, tt.off), func(t *testing.T) {
			n := Negotiator{Off: tt.off}
			got := -1
			for i, o := range option(t, tt.offers) {
				resp, err := n.Negotiate(o)
				if err != nil {
					t.Fatalf("offer %d: %v", i, err)
				}
				if resp.Size() == 0 {
					continue
				}
				if got >= 0 {
					t.Fatalf("accepted offers %d and %d", got, i)
				}
				got = i
				var b bytes.Buffer
				if _, err := httphead.WriteOptions(&b, []httphead.Option{resp}); err != nil {
					t.Fatal(err)
				}
				if s := b.String(); s != "permessage-deflate;server_no_context_takeover;client_no_context_takeover" {
					t.Fatalf("answer %q", s)
				}
			}
			if got != tt.want || n.Accepted() != (tt.want >= 0) {
				t.Fatalf("accepted %d (Accepted %v), want %d", got, n.Accepted(), tt.want)
			}
		})
	}
}

func plainFrame(p []byte) *wsframe.Frame {
	f := wsframe.Get()
	f.B = append(f.B, p...)
	return f.Finish(ws.OpText)
}

// stdInflate inflates with the standard library, as a client would.
func stdInflate(t testing.TB, p []byte) []byte {
	t.Helper()
	out, err := io.ReadAll(flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader(inflateTail))))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCompressorFrame(t *testing.T) {
	text := []byte(strings.Repeat(`{"channel":"room","data":"hello"},`, 40))
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(rand.Uint32())
	}
	for _, tt := range []struct {
		name    string
		c       Compressor
		payload []byte
		want    bool // compressed
	}{
		{"text", Compressor{}, text, true},
		{"level=9", Compressor{Level: 9}, text, true},
		{"level=out-of-range", Compressor{Level: 42}, text, true},
		{"under-min", Compressor{}, text[:255], false},
		{"min=negative", Compressor{MinBytes: -1}, []byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), true},
		{"min=2000", Compressor{MinBytes: 2000}, text, false},
		{"random", Compressor{}, random, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			live := wsframe.Live()
			plain := plainFrame(tt.payload)
			z := tt.c.Frame(plain)
			if (z != nil) != tt.want {
				t.Fatalf("compressed: %v, want %v", z != nil, tt.want)
			}
			if z != nil {
				if !z.Compressed() || z.OpCode() != ws.OpText || plain.Compressed() {
					t.Fatalf("flags: compressed %v op %v", z.Compressed(), z.OpCode())
				}
				h, err := ws.ReadHeader(bytes.NewReader(z.Bytes()))
				if err != nil || !h.Fin || h.Rsv != 4 || int(h.Length) != len(z.Payload()) {
					t.Fatalf("header %+v %v", h, err)
				}
				if got := stdInflate(t, z.Payload()); !bytes.Equal(got, tt.payload) {
					t.Fatal("standard inflate differs")
				}
				got, err := Inflate(nil, z.Payload(), len(tt.payload), nil)
				if err != nil || !bytes.Equal(got, tt.payload) {
					t.Fatalf("Inflate: %v", err)
				}
				z.Release()
			}
			plain.Release()
			if wsframe.Live() != live {
				t.Fatalf("frames leaked: %d", wsframe.Live()-live)
			}
		})
	}
}

func compress(p []byte) []byte {
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestSpeed)
	_, _ = w.Write(p)
	_ = w.Flush()
	return bytes.TrimSuffix(b.Bytes(), syncTail)
}

func TestInflate(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789"), 1000)
	z := compress(msg)
	for _, tt := range []struct {
		name  string
		in    []byte
		limit int
		err   error
	}{
		{"exact-limit", z, len(msg), nil},
		{"over-limit", z, len(msg) - 1, ErrTooLarge},
		{"empty", compress(nil), 0, nil},
		{"corrupt", []byte{0xff, 0xfe, 0xfd}, 1 << 20, ErrCorrupt},
		{"truncated", z[:len(z)/2], 1 << 20, ErrCorrupt},
		{"bomb", compress(make([]byte, 32<<20)), 1 << 20, ErrTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Inflate([]byte("prefix"), tt.in, tt.limit, nil)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatal("dst prefix lost")
			}
			if n := len(out) - len("prefix"); n > tt.limit+1 {
				t.Fatalf("inflated %d bytes past limit %d", n, tt.limit)
			}
			if cap(out) > 2*(tt.limit+inflateChunk)+64 {
				t.Fatalf("reserved %d bytes for limit %d", cap(out), tt.limit)
			}
			if err == nil && tt.name == "exact-limit" && !bytes.Equal(out[len("prefix"):], msg) {
				t.Fatal("content")
			}
		})
	}
}

func FuzzInflate(f *testing.F) {
	f.Add(compress([]byte("hello")), 100)
	f.Add(compress(bytes.Repeat([]byte("abc"), 1000)), 2000)
	f.Add(compress(make([]byte, 1<<16)), 1<<20)
	f.Add([]byte{0x00}, 10)
	f.Add([]byte{0x02, 0x00}, 10)
	f.Fuzz(func(t *testing.T, in []byte, limit int) {
		if limit < 0 || limit > 4<<20 {
			return
		}
		out, err := Inflate(nil, in, limit, nil)
		if len(out) > limit+1 {
			t.Fatalf("%d bytes past limit %d", len(out), limit)
		}
		if err == nil {
			again, err := Inflate(nil, compress(out), limit, nil)
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}

func BenchmarkCompress(b *testing.B) {
	for _, size := range []int{256, 1024, 16384} {
		for _, level := range []int{1, 6} {
			p := []byte(strings.Repeat(`{"channel":"room.7","data":{"user":"u13","text":"hello there"}},`, size/60+1))[:size]
			plain := plainFrame(p)
			c := Compressor{Level: level}
			b.Run(fmt.Sprintf("size=%d/level=%d", size, level), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				var zlen int
				for b.Loop() {
					z := c.Frame(plain)
					zlen = z.Len()
					z.Release()
				}
				b.ReportMetric(float64(zlen)/float64(plain.Len()), "ratio")
			})
			plain.Release()
		}
	}
}

func BenchmarkInflate(b *testing.B) {
	for _, size := range []int{256, 16384} {
		p := []byte(strings.Repeat(`{"op":"publish","channel":"room","data":"hello"},`, size/48+1))[:size]
		z := compress(p)
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			buf := make([]byte, 0, size)
			for b.Loop() {
				var err error
				if buf, err = Inflate(buf[:0], z, size, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestInflateReserve: the output is reserved before it is inflated, never
// more than the limit and one chunk, and a refusal stops at once.
func TestInflateReserve(t *testing.T) {
	msg := bytes.Repeat([]byte("0123456789"), 20000) // 200,000 bytes
	z := compress(msg)
	for _, tt := range []struct {
		name   string
		budget int
		err    error
	}{
		{"budget=plenty", 1 << 20, nil},
		{"budget=100000", 100000, ErrNoRoom},
		{"budget=0", 0, ErrNoRoom},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reserved := 0
			out, err := Inflate(nil, z, 1<<20, func(n int) bool {
				if reserved+n > tt.budget {
					return false
				}
				reserved += n
				return true
			})
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if len(out) > reserved {
				t.Fatalf("inflated %d bytes with %d reserved", len(out), reserved)
			}
			if err == nil && (!bytes.Equal(out, msg) || reserved > len(msg)+inflateChunk) {
				t.Fatalf("reserved %d for %d bytes", reserved, len(msg))
			}
		})
	}
}
