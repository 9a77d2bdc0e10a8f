package engine

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

func TestGorillaConnectedAndPing(t *testing.T) {
	s := startServer(t, Config{})
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}}
	c, resp, err := d.Dial(wsURL(s), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "fanout.v1.json" {
		t.Fatalf("subprotocol %q", got)
	}
	var connected map[string]any
	if err := c.ReadJSON(&connected); err != nil {
		t.Fatal(err)
	}
	if connected["push"] != "connected" || connected["client"] == "" {
		t.Fatalf("first message %v", connected)
	}
	if err := c.WriteJSON(map[string]any{"op": "ping", "id": 7}); err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	if err := c.ReadJSON(&reply); err != nil {
		t.Fatal(err)
	}
	if reply["id"] != float64(7) || reply["ok"] != true {
		t.Fatalf("ping reply %v", reply)
	}
	// Close handshake: gorilla sends 1000, the server echoes it.
	if err := c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye")); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 1000 {
		t.Fatalf("after close: %v", err)
	}
}

func TestCoderMsgpack(t *testing.T) {
	s := startServer(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket2Dial(ctx, wsURL(s), "fanout.v1.msgpack")
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	typ, msg, err := c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if typ != websocket2Binary {
		t.Fatalf("connected push as %v, want binary", typ)
	}
	var connected map[string]any
	if err := msgpack.Unmarshal(msg, &connected); err != nil || connected["push"] != "connected" {
		t.Fatalf("connected push %v, %v", connected, err)
	}
	ping, _ := msgpack.Marshal(map[string]any{"op": "ping", "id": 3})
	if err := c.Write(ctx, websocket2Binary, ping); err != nil {
		t.Fatal(err)
	}
	_, msg, err = c.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	if err := msgpack.Unmarshal(msg, &reply); err != nil || reply["ok"] != true {
		t.Fatalf("reply %v, %v", reply, err)
	}
	// A text frame on a msgpack connection: 1003.
	if err := c.Write(ctx, websocket2Text, []byte(`{"op":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Read(ctx)
	if got := websocket2CloseStatus(err); got != 1003 {
		t.Fatalf("close status %d (%v), want 1003", got, err)
	}
}

func TestHandshakeRejections(t *testing.T) {
	s := startServer(t, Config{AllowedOrigins: []string{"https://allowed.test", "http://example.test"}})
	tests := []struct {
		name    string
		request string
		status  int
		body    string
	}{
		{"wrong method", upgradeRequest("POST", "/ws"), 405, ""},
		{"missing key", upgradeRequest("GET", "/ws", "Sec-WebSocket-Key: -"), 400, ""},
		{"bad version", upgradeRequest("GET", "/ws", "Sec-WebSocket-Version: 8"), 426, ""},
		{"wrong path", upgradeRequest("GET", "/nope"), 404, ""},
		{"disallowed origin", upgradeRequest("GET", "/ws", "Origin: https://evil.test"), 403, "origin"},
		{"unsupported subprotocol", upgradeRequest("GET", "/ws", "Sec-WebSocket-Protocol: chat, superchat"), 400, "fanout.v1.json"},
		{"malformed request line", "GARBAGE\r\n\r\n", 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			req := tt.request
			if tt.name == "missing key" {
				req = strings.Replace(req, "Sec-WebSocket-Key: "+testKey+"\r\n", "", 1)
			}
			c.write([]byte(req))
			resp := c.response()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			if !strings.Contains(strings.ToLower(string(body))+strings.ToLower(resp.Header.Get("X-Reason")), tt.body) {
				t.Fatalf("body %q lacks %q", body, tt.body)
			}
		})
	}
	for _, origin := range []string{"http://example.test", "https://allowed.test"} {
		t.Run("origin "+origin, func(t *testing.T) {
			c := dialRaw(t, s)
			c.upgrade("Origin: " + origin)
		})
	}
}

func TestMalformedFrames(t *testing.T) {
	s := startServer(t, Config{MaxMessageBytes: 1000})
	bad := []byte{0xff, 0xfe, 0xfd}
	tests := []struct {
		name   string
		frames [][]byte
		code   uint16
	}{
		{"unmasked", [][]byte{clientFrame(t, true, 0, ws.OpText, false, 0, []byte(`{"op":"ping"}`))}, 1002},
		{"reserved bits", [][]byte{clientFrame(t, true, 4, ws.OpText, true, 0, []byte(`{}`))}, 1002},
		{"reserved opcode", [][]byte{clientFrame(t, true, 0, 5, true, 0, nil)}, 1002},
		{"control frame over 125", [][]byte{clientFrame(t, true, 0, ws.OpPing, true, 2, make([]byte, 126))}, 1002},
		{"fragmented control", [][]byte{clientFrame(t, false, 0, ws.OpPing, true, 0, nil)}, 1002},
		{"continuation without start", [][]byte{frame(true, ws.OpContinuation, []byte("x"))}, 1002},
		{"new message inside fragments", [][]byte{frame(false, ws.OpText, []byte("{")), frame(true, ws.OpText, []byte("}"))}, 1002},
		{"invalid utf-8", [][]byte{frame(true, ws.OpText, bad)}, 1007},
		{"invalid utf-8 across fragments", [][]byte{frame(false, ws.OpText, []byte(`{"op":"ping","x":"\xe2\x82`)), frame(true, ws.OpContinuation, []byte("\x28\"}"))}, 1007},
		{"binary on json", [][]byte{frame(true, ws.OpBinary, []byte{0x80})}, 1003},
		{"not an object", [][]byte{frame(true, ws.OpText, []byte(`[1,2]`))}, 1007},
		{"too big", [][]byte{frame(true, ws.OpText, make([]byte, 1001))}, 1009},
		{"too big across fragments", [][]byte{frame(false, ws.OpText, make([]byte, 600)), frame(true, ws.OpContinuation, make([]byte, 600))}, 1009},
		{"close with one byte", [][]byte{frame(true, ws.OpClose, []byte{3})}, 1002},
		{"close with invalid code", [][]byte{frame(true, ws.OpClose, []byte{0x03, 0xed})}, 1002}, // 1005
		{"close with invalid reason", [][]byte{frame(true, ws.OpClose, append([]byte{0x03, 0xe8}, bad...))}, 1007},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			c.upgrade()
			c.readFrame() // connected
			for _, f := range tt.frames {
				c.write(f)
			}
			c.expectClose(tt.code)
		})
	}
}

func TestBadCommandKeepsConnection(t *testing.T) {
	s := startServer(t, Config{})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame()
	c.write(frame(true, ws.OpText, []byte(`{"op":"dance","id":1}`)))
	_, p := c.readFrame()
	var reply struct {
		ID    uint64
		Error struct{ Code string }
	}
	if err := json.Unmarshal(p, &reply); err != nil || reply.ID != 1 || reply.Error.Code != "unknown_op" {
		t.Fatalf("reply %s (%v)", p, err)
	}
	c.write(frame(true, ws.OpText, []byte(`{"op":"subscribe","id":2,"channel":"bad channel!"}`)))
	_, p = c.readFrame()
	if err := json.Unmarshal(p, &reply); err != nil || reply.ID != 2 || reply.Error.Code != "bad_request" {
		t.Fatalf("reply %s (%v)", p, err)
	}
	c.write(frame(true, ws.OpText, []byte(`{"op":"ping","id":3}`)))
	if _, p = c.readFrame(); !strings.Contains(string(p), `"ok":true`) {
		t.Fatalf("connection unusable after error replies: %s", p)
	}
}

func TestEchoFragmentsAndInterleavedControl(t *testing.T) {
	s := startServer(t, Config{Echo: true})
	c := dialRaw(t, s)
	c.upgrade()
	// No connected push in echo mode: the first frame is the pong.
	c.write(frame(false, ws.OpText, []byte("Hello, ")))
	c.write(frame(true, ws.OpPing, []byte("are you there")))
	c.write(frame(false, ws.OpContinuation, []byte("wor")))
	c.write(frame(true, ws.OpContinuation, []byte("ld \u00e9")))
	h, p := c.readFrame()
	if h.OpCode != ws.OpPong || string(p) != "are you there" {
		t.Fatalf("got %v %q, want pong", h.OpCode, p)
	}
	h, p = c.readFrame()
	if h.OpCode != ws.OpText || !h.Fin || string(p) != "Hello, world \u00e9" {
		t.Fatalf("got %v %q", h.OpCode, p)
	}
	big := make([]byte, 200_000)
	for i := range big {
		big[i] = byte(i)
	}
	c.write(frame(true, ws.OpBinary, big))
	h, p = c.readFrame()
	if h.OpCode != ws.OpBinary || string(p) != string(big) {
		t.Fatalf("big echo: op %v, %d bytes", h.OpCode, len(p))
	}
	c.write(frame(true, ws.OpClose, append([]byte{0x0f, 0xa0}, "done"...))) // 4000
	c.expectClose(4000)
}

func TestEchoWithGorilla(t *testing.T) {
	s := startServer(t, Config{Echo: true})
	c, _, err := websocket.DefaultDialer.Dial(wsURL(s), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, msg := range []string{"a", strings.Repeat("b", 70_000), ""} {
		typ := websocket.TextMessage
		if i%2 == 1 {
			typ = websocket.BinaryMessage
		}
		if err := c.WriteMessage(typ, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		gotTyp, got, err := c.ReadMessage()
		if err != nil || gotTyp != typ || string(got) != msg {
			t.Fatalf("echo %d: type %d, %d bytes, %v", i, gotTyp, len(got), err)
		}
	}
}

func TestIdleTimeoutPingsThenCloses(t *testing.T) {
	s := startServer(t, Config{IdleTimeout: 400 * time.Millisecond})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame() // connected
	h, _ := c.readFrame()
	if h.OpCode != ws.OpPing {
		t.Fatalf("got %v, want ping", h.OpCode)
	}
	c.expectClose(1001)
}

func TestPongKeepsConnectionAlive(t *testing.T) {
	s := startServer(t, Config{IdleTimeout: 300 * time.Millisecond})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		h, p := c.readFrame()
		if h.OpCode == ws.OpClose {
			t.Fatalf("closed although pongs were sent: %q", p)
		}
		if h.OpCode == ws.OpPing {
			c.write(frame(true, ws.OpPong, p))
		}
	}
}

func TestHandshakeTimeout(t *testing.T) {
	s := startServer(t, Config{HandshakeTimeout: 200 * time.Millisecond})
	silent := dialRaw(t, s)
	partial := dialRaw(t, s)
	partial.write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\n"))
	start := time.Now()
	silent.expectEOF()
	partial.expectEOF()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

func TestHalfFrameTimesOut(t *testing.T) {
	s := startServer(t, Config{FrameTimeout: 200 * time.Millisecond})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame()
	f := frame(true, ws.OpText, []byte(`{"op":"ping","id":1}`))
	c.write(f[:5]) // header and part of the mask
	c.expectClose(1002)
	// The server is still healthy.
	other := dialRaw(t, s)
	other.upgrade()
	other.readFrame()
}

func TestHTTPEndpoints(t *testing.T) {
	s := startServer(t, Config{})
	base := "http://" + s.Addr().String()
	tests := []struct {
		path, contains string
		status         int
	}{
		{"/healthz", "ok", 200},
		{"/readyz", "ready", 200},
		{"/metrics", "fanout_connections", 200},
		{"/", "<html", 200},
		{"/client.js", "", 200},
		{"/api/publish", "", 404},
		{"/missing", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			method := http.MethodGet
			if tt.path == "/api/publish" {
				method = http.MethodPost
			}
			req, _ := http.NewRequest(method, base+tt.path, strings.NewReader(`{}`))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status || !strings.Contains(strings.ToLower(string(body)), tt.contains) {
				t.Fatalf("%d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestManyIdleConnections holds 5,000 upgraded connections and checks that
// the server's goroutine count does not grow with them. The clients are
// plain sockets read only when the test reads, so they add no goroutines.
func TestManyIdleConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const n = 5000
	s := startServer(t, Config{})
	base := runtime.NumGoroutine()
	conns := make([]*rawConn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	req := []byte(upgradeRequest("GET", "/ws"))
	for i := range conns {
		c := dialRaw(t, s)
		conns[i] = c
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := c.nc.Write(req); err != nil {
				errs <- err
				return
			}
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil || resp.StatusCode != 101 {
				errs <- errors.New("upgrade failed")
				return
			}
			h, err := ws.ReadHeader(c.br)
			if err != nil || h.OpCode != ws.OpText {
				errs <- errors.New("no connected push")
				return
			}
			_, _ = io.CopyN(io.Discard, c.br, h.Length)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if open := s.stats.open.Load(); open != n {
		t.Fatalf("open = %d, want %d", open, n)
	}
	// Idle: no goroutine per connection. Allow slack for netpoll's pool
	// winding down and the runtime.
	checkFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if g := runtime.NumGoroutine(); g > base+100 {
			return errors.New("goroutines: " + itoa(g) + " with " + itoa(n) + " idle connections, base " + itoa(base))
		}
		return nil
	})
	// Close all cleanly: each gets its code echoed.
	for _, c := range conns {
		c.write(frame(true, ws.OpClose, []byte{0x03, 0xe8}))
	}
	for _, c := range conns {
		c.expectClose(1000)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := s.registry.len(); n != 0 {
			return errors.New(itoa(n) + " connections still registered")
		}
		return nil
	})
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + jsonNum(n)) }

func jsonNum(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestShutdownSends1012WithRetryHint(t *testing.T) {
	s := startServer(t, Config{RetryAfterMin: 100 * time.Millisecond, RetryAfterSpread: 400 * time.Millisecond})
	var clients []*rawConn
	for i := 0; i < 20; i++ {
		c := dialRaw(t, s)
		c.upgrade()
		c.readFrame()
		clients = append(clients, c)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	for _, c := range clients {
		reason := c.expectClose(1012)
		ms, ok := strings.CutPrefix(reason, "retry_after_ms=")
		var v int
		if err := json.Unmarshal([]byte(ms), &v); !ok || err != nil || v < 100 || v > 500 {
			t.Fatalf("reason %q", reason)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if _, err := dialRawErr(s); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

func TestShutdownTimesOutWithCtxErr(t *testing.T) {
	s := startServer(t, Config{APIKey: "k"})
	ws := dialRaw(t, s)
	ws.upgrade()
	ws.readFrame()
	// An HTTP request whose body never completes keeps net/http busy, so
	// the drain cannot finish before the deadline.
	c := dialRaw(t, s)
	c.write([]byte("POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 100\r\n\r\n{"))
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if s.stats.httpConns.Load() == 0 {
			return errors.New("request not handed to net/http yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Shutdown returned after %v", d)
	}
	// The WebSocket client was told to come back later.
	ws.expectClose(1012)
	// Everything is closed now; a second Shutdown is a no-op.
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
}

func dialRawErr(s *Server) (any, error) {
	c, _, err := (&websocket.Dialer{HandshakeTimeout: time.Second}).Dial(wsURL(s), nil)
	if err == nil {
		c.Close()
	}
	return c, err
}

var _ = binary.BigEndian
