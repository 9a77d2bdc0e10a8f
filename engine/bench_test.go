package engine

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

func benchServer(b *testing.B, cfg Config) *Server {
	b.Helper()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// BenchmarkUpgrade measures the handshake as the event loop runs it: gobwas/ws
// parsing a request head straight from netpoll's buffer, our header
// callbacks (origin, subprotocol) and the 101 response into netpoll's
// output buffer.
func BenchmarkUpgrade(b *testing.B) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"protocol=none", nil},
		{"protocol=msgpack", []string{"Sec-WebSocket-Protocol: fanout.v1.msgpack", "Origin: http://example.test"}},
		{"protocol=json/deflate=offered", []string{"Sec-WebSocket-Protocol: fanout.v1.json", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := benchServer(b, Config{AllowedOrigins: []string{"http://example.test"}})
			head := []byte(upgradeRequest("GET", "/ws", tc.extra...))
			c := &Conn{srv: s}
			b.ReportAllocs()
			b.SetBytes(int64(len(head)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				out := wsframe.Get()
				if _, err := s.negotiate(c, head, out); err != nil {
					b.Fatal(err)
				}
				out.Release()
			}
		})
	}
}

// BenchmarkReadFrame measures the steady-state read path of one masked
// client frame: header parse, in-place unmask, decode and reply. The reply
// is written to /dev/null through the same direct writev as a socket.
func BenchmarkReadFrame(b *testing.B) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	for _, tc := range []struct {
		name string
		echo bool
		msg  []byte
	}{
		{"mode=echo/size=128", true, make([]byte, 128)},
		{"mode=protocol/op=ping", false, []byte(`{"op":"ping","id":12345}`)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			s := benchServer(b, Config{Echo: tc.echo, CommandRate: -1})
			c := &Conn{srv: s, fd: int(devnull.Fd()), enc: codec.JSON}
			c.state.Store(stateOpen)
			op := ws.OpText
			if tc.echo {
				op = ws.OpBinary
			}
			raw := frame(true, op, tc.msg)
			// readFrames unmasks in place, as it does in netpoll's buffer:
			// each round starts from a fresh copy of the masked frame.
			buf := make([]byte, len(raw))
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(buf, raw)
				if used := s.readFrames(c, buf); used != len(buf) {
					b.Fatalf("readFrames used %d of %d bytes", used, len(buf))
				}
			}
		})
	}
}

// BenchmarkWriteFrames measures the steady-state write path: a batch of
// shared frames (one reference each, as the hub hands them out) queued and
// written with one writev. /dev/null takes every byte, like a socket with
// room.
func BenchmarkWriteFrames(b *testing.B) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	for _, batch := range []int{1, 16, 64} {
		b.Run("batch="+itoa(batch)+"/size=128", func(b *testing.B) {
			s := benchServer(b, Config{})
			c := &Conn{srv: s, fd: int(devnull.Fd())}
			c.state.Store(stateOpen)
			f := wsframe.New(ws.OpText, make([]byte, 128))
			frames := make([]*wsframe.Frame, batch)
			for i := range frames {
				frames[i] = f
			}
			b.ReportAllocs()
			b.SetBytes(int64(batch * f.Len()))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f.Retain(batch)
				c.SendBatch(frames)
			}
			b.StopTimer()
			f.Release()
		})
	}
}
