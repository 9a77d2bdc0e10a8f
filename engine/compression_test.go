package engine

import (
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

// acceptedDeflate is the server's answer to every offer it accepts.
const acceptedDeflate = "permessage-deflate;server_no_context_takeover;client_no_context_takeover"

// dialDeflate is dialClient with gorilla's permessage-deflate offered
// (and used for what it sends) when deflate is set; it checks that the
// server answered the offer as Config.Compression says.
func dialDeflate(t testing.TB, s *Server, useMsgpack, deflate bool) *testClient {
	t.Helper()
	proto := "fanout.v1.json"
	if useMsgpack {
		proto = "fanout.v1.msgpack"
	}
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 10 * time.Second, EnableCompression: deflate}
	c, resp, err := d.Dial(wsURL(s), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ext := resp.Header.Get("Sec-WebSocket-Extensions")
	wantExt := deflate && s.cfg.Compression != CompressionOff
	if (ext != "") != wantExt {
		t.Fatalf("offered deflate=%v with Compression=%d: Sec-WebSocket-Extensions %q", deflate, s.cfg.Compression, ext)
	}
	if wantExt && strings.ReplaceAll(ext, " ", "") != acceptedDeflate {
		t.Fatalf("Sec-WebSocket-Extensions %q", ext)
	}
	c.EnableWriteCompression(deflate)
	tc := &testClient{t: t, c: c, msgpack: useMsgpack}
	if m := tc.read(); m["push"] != "connected" {
		t.Fatalf("first message %v", m)
	}
	return tc
}

// TestCompressedOncePerEncoding: a publication reaches subscribers of both
// encodings, with and without compression; it is encoded once per encoding
// and compressed once per encoding, whatever the number of subscribers,
// and a message under CompressionMinBytes is not compressed at all.
func TestCompressedOncePerEncoding(t *testing.T) {
	s := startServer(t, Config{})
	type sub struct {
		tc               *testClient
		msgpack, deflate bool
	}
	var subs []sub
	for _, mp := range []bool{false, true} {
		for _, df := range []bool{false, true, true} {
			tc := dialDeflate(t, s, mp, df)
			tc.mustOK(map[string]any{"op": "subscribe", "id": 1, "channel": "room"})
			subs = append(subs, sub{tc, mp, df})
		}
	}
	pub := dialDeflate(t, s, false, true)
	big := strings.Repeat("compressible text, ", 200)
	for _, tt := range []struct {
		name           string
		text           string
		wantCompressed float64
	}{
		{"size=4000", big, 2},
		{"size=small", "hi", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := scrape(t, s)
			pub.mustOK(map[string]any{"op": "publish", "id": 2, "channel": "room", "data": map[string]any{"text": tt.text}})
			for _, sb := range subs {
				p := sb.tc.nextPub()
				data, _ := p["data"].(map[string]any)
				if data["text"] != tt.text {
					t.Fatalf("msgpack=%v deflate=%v got %v", sb.msgpack, sb.deflate, p)
				}
			}
			after := scrape(t, s)
			if got := after["fanout_hub_compressed_total"] - before["fanout_hub_compressed_total"]; got != tt.wantCompressed {
				t.Fatalf("compressed frames: %v, want %v (once per encoding)", got, tt.wantCompressed)
			}
			if got := after["fanout_hub_encodes_total"] - before["fanout_hub_encodes_total"]; got != 2 {
				t.Fatalf("encodes: %v, want 2", got)
			}
		})
	}
}

// TestCompressedFrameOnTheWire reads what a compressing client receives
// byte by byte: RSV1 set on a large publication, payload that inflates
// (without context) to the publication; a small one goes plain; the
// inflated message the client sent is what subscribers get.
func TestCompressedFrameOnTheWire(t *testing.T) {
	s := startServer(t, Config{})
	c := dialRaw(t, s)
	resp := c.upgrade("Sec-WebSocket-Protocol: fanout.v1.json", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
	if got := resp.Header.Get("Sec-WebSocket-Extensions"); strings.ReplaceAll(got, " ", "") != acceptedDeflate {
		t.Fatalf("extensions %q", got)
	}
	if h, _ := c.readFrame(); h.Rsv != 0 {
		t.Fatalf("connected push (small) compressed: %+v", h)
	}
	c.write(clientFrameCompressed(t, []byte(`{"op":"subscribe","id":1,"channel":"wire"}`), false))
	if h, p := c.readFrame(); h.Rsv != 0 || !bytes.Contains(p, []byte(`"id":1`)) {
		t.Fatalf("subscribe reply: %+v %s", h, p)
	}
	text := strings.Repeat("abcdefgh", 100)
	c.write(clientFrameCompressed(t, []byte(`{"op":"publish","id":2,"channel":"wire","data":"`+text+`"}`), true))
	var gotPub, gotReply bool
	for !gotPub || !gotReply {
		h, p := c.readFrame()
		if h.Rsv != 0 {
			if h.Rsv != 4 {
				t.Fatalf("RSV %d", h.Rsv)
			}
			out, err := io.ReadAll(flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff}))))
			if err != nil {
				t.Fatalf("inflate: %v", err)
			}
			if len(p) >= len(out) {
				t.Fatalf("compressed %d bytes to %d", len(out), len(p))
			}
			p = out
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		switch {
		case m["push"] == "pub":
			if h.Rsv != 4 || m["data"] != text {
				t.Fatalf("publication rsv=%d %v", h.Rsv, m)
			}
			gotPub = true
		case m["id"] == float64(2):
			if h.Rsv != 0 {
				t.Fatal("small publish reply compressed")
			}
			gotReply = true
		}
	}
}

// clientFrameCompressed builds a masked text frame, compressed (RSV1) or
// not.
func clientFrameCompressed(t testing.TB, p []byte, compress bool) []byte {
	t.Helper()
	h := ws.Header{Fin: true, OpCode: ws.OpText, Masked: true, Mask: [4]byte{1, 2, 3, 4}}
	if compress {
		var b bytes.Buffer
		w, _ := flate.NewWriter(&b, flate.BestSpeed)
		_, _ = w.Write(p)
		_ = w.Flush()
		p = bytes.TrimSuffix(b.Bytes(), []byte{0, 0, 0xff, 0xff})
		h.Rsv = ws.Rsv(true, false, false)
	}
	h.Length = int64(len(p))
	var out bytes.Buffer
	_ = ws.WriteHeader(&out, h)
	masked := append([]byte(nil), p...)
	ws.Cipher(masked, h.Mask, 0)
	out.Write(masked)
	return out.Bytes()
}

// TestCompressionOff: Config.Compression off declines every offer, and
// RSV1 is then a protocol error.
func TestCompressionOff(t *testing.T) {
	s := startServer(t, Config{Compression: CompressionOff})
	tc := dialDeflate(t, s, false, true)
	tc.mustOK(map[string]any{"op": "subscribe", "id": 1, "channel": "x"})
	c := dialRaw(t, s)
	c.upgrade("Sec-WebSocket-Protocol: fanout.v1.json", "Sec-WebSocket-Extensions: permessage-deflate")
	c.readFrame()
	c.write(clientFrameCompressed(t, []byte(`{"op":"ping","id":1}`), true))
	if reason := c.expectClose(1002); !strings.Contains(reason, "reserved bits") {
		t.Fatalf("reason %q", reason)
	}
}

// TestDeflateBombFromGorilla: a real client compressing 8 MiB of zeros
// (8 KiB on the wire) is closed 1009 once the inflated size passes
// MaxMessageBytes, and the server lets the memory go.
func TestDeflateBombFromGorilla(t *testing.T) {
	s := startServer(t, Config{})
	tc := dialDeflate(t, s, false, true)
	payload := `{"op":"publish","id":1,"channel":"x","data":"` + strings.Repeat("0", 8<<20) + `"}`
	if err := tc.c.WriteMessage(websocket.TextMessage, []byte(payload)); err != nil {
		t.Fatal(err)
	}
	_ = tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := tc.c.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != 1009 || ce.Text != "message too big once inflated" {
			t.Fatalf("got %v, want close 1009 message too big once inflated", err)
		}
		break
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := s.reassembly.Load(); n != 0 {
			return fmt.Errorf("reassembly bytes %d", n)
		}
		return nil
	})
}

// TestInflationCountsAgainstReassemblyBudget: what a compressed message
// inflates to is taken from --max-reassembly-bytes as it is inflated, so a
// few KiB on the wire cannot hold more than the budget, however many
// connections send them.
func TestInflationCountsAgainstReassemblyBudget(t *testing.T) {
	s := startServer(t, Config{MaxMessageBytes: 1 << 20, MaxReassemblyBytes: 128 << 10})
	tc := dialDeflate(t, s, false, true)
	payload := `{"op":"publish","id":1,"channel":"x","data":"` + strings.Repeat("0", 512<<10) + `"}`
	if err := tc.c.WriteMessage(websocket.TextMessage, []byte(payload)); err != nil {
		t.Fatal(err)
	}
	_ = tc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := tc.c.ReadMessage()
		if err == nil {
			continue
		}
		ce, ok := err.(*websocket.CloseError)
		if !ok || ce.Code != 1009 || !strings.Contains(ce.Text, "reassembly budget") {
			t.Fatalf("got %v, want close 1009 for the reassembly budget", err)
		}
		break
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := s.reassembly.Load(); n != 0 {
			return fmt.Errorf("reassembly bytes %d", n)
		}
		return nil
	})
}
