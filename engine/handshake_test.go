package engine

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// upgradeHeaders are the lines of a valid upgrade request after its request
// line.
const upgradeHeaders = "Host: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: " + testKey + "\r\nSec-WebSocket-Version: 13\r\n\r\n"

// checkServing checks that the server still upgrades a WebSocket and still
// answers plain HTTP.
func checkServing(t *testing.T, s *Server) {
	t.Helper()
	c := dialRaw(t, s)
	c.upgrade()
	if h, p := c.readFrame(); h.OpCode != ws.OpText || !strings.Contains(string(p), `"connected"`) {
		t.Fatalf("after: first message %v %q", h.OpCode, p)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatalf("after: /healthz: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after: /healthz %s", resp.Status)
	}
}

// TestMalformedRequestLineGets400: a request for /ws whose request line
// gobwas/ws cannot parse (it then writes no response) gets a 400 with a
// readable reason, and the server keeps serving. It used to queue an empty
// response, whose write panicked with the write lock held: the sweeper and
// every later close then waited for that lock forever.
func TestMalformedRequestLineGets400(t *testing.T) {
	s := startServer(t, Config{})
	tests := []struct{ name, line string }{
		{"bad protocol name", "GET /ws HTTX/9.9"},
		{"no protocol", "GET /ws "},
		{"no minor version", "GET /ws HTTP/1"},
		{"extra field", "GET /ws HTTP/1.1 x"},
		{"query, bad protocol", "GET /ws?a=b HTTP/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			_ = c.nc.SetDeadline(time.Now().Add(10 * time.Second))
			c.write([]byte(tt.line + "\r\n" + upgradeHeaders))
			resp := c.response()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %s, want 400", resp.Status)
			}
			if !resp.Close {
				t.Fatalf("no Connection: close: %v", resp.Header)
			}
			if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
				t.Fatalf("Content-Length %q for a %d-byte body", cl, len(body))
			}
			if !strings.Contains(string(body), "malformed") {
				t.Fatalf("body %q gives no reason", body)
			}
			c.expectEOF()
		})
	}
	checkServing(t, s)
}

// TestAbsoluteFormTarget: a request target in absolute form (RFC 7230
// 5.3.2: a server must accept it) is routed by its path, and names the host
// that a browser's Origin is checked against (RFC 7230 5.5).
func TestAbsoluteFormTarget(t *testing.T) {
	s := startServer(t, Config{})
	tests := []struct {
		name   string
		target string
		extra  []string
		status int // 0: anything but an upgrade (net/http answers)
	}{
		{"http", "http://example.test/ws", nil, 101},
		{"ws with query", "ws://example.test/ws?x=1", nil, 101},
		{"upper-case scheme", "HTTP://example.test/ws", nil, 101},
		// Development origin mode (origin_test.go): the request's host,
		// on localhost only.
		{"origin matches the target's host", "http://localhost:9200/ws", []string{"Origin: http://localhost:9200"}, 101},
		{"origin matches only the Host header", "http://target.test/ws", []string{"Origin: http://example.test"}, 403},
		{"other path", "http://example.test/wsx", nil, 0},
		{"no path", "http://example.test", nil, 0},
		{"other scheme", "ftp://example.test/ws", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			c.write([]byte(upgradeRequest("GET", tt.target, tt.extra...)))
			resp := c.response()
			body, _ := io.ReadAll(resp.Body)
			if got := resp.StatusCode; got != tt.status && (tt.status != 0 || got == 101) {
				t.Fatalf("status %s (%q), want %d", resp.Status, body, tt.status)
			}
			if tt.status == 101 {
				if _, p := c.readFrame(); !strings.Contains(string(p), `"connected"`) {
					t.Fatalf("first message %q", p)
				}
			}
		})
	}
}

// TestHeadEndStraddlingReads sends an upgrade request in two reads split at
// every byte around the blank line that ends it: whichever read brings the
// end of "\r\n\r\n", the server must find it.
func TestHeadEndStraddlingReads(t *testing.T) {
	s := startServer(t, Config{})
	req := []byte(upgradeRequest("GET", "/ws"))
	end := len(req) - len(headerEnd)
	for cut := end - 2; cut < len(req); cut++ {
		t.Run(strconv.Itoa(cut-end), func(t *testing.T) {
			c := dialRaw(t, s)
			c.write(req[:cut])
			// The first piece must have been read (and scanned) on its own.
			waitScanned(t, s, cut)
			c.write(req[cut:])
			if resp := c.response(); resp.StatusCode != 101 {
				t.Fatalf("upgrade: %s", resp.Status)
			}
		})
	}
}

// waitScanned waits until a connection of s in the handshake state has
// searched n bytes of its request head for its end.
func waitScanned(t *testing.T, s *Server, n int) {
	t.Helper()
	checkFor(t, 10*time.Second, time.Millisecond, func() error {
		for i := range s.registry.shards {
			for _, c := range s.registry.shards[i].snapshot(nil) {
				c.rmu.Lock()
				got := int(c.scanned)
				c.rmu.Unlock()
				if c.state.Load() == stateHandshake && got == n {
					return nil
				}
			}
		}
		return io.ErrNoProgress
	})
}

// TestHandshakeScansOnlyNewBytes: a request head trickled in tiny pieces is
// searched for its end once, not once per piece (the work was quadratic in
// the head: a slowloris cost). The search work is what the searches cover.
func TestHandshakeScansOnlyNewBytes(t *testing.T) {
	head := []byte("GET /ws HTTP/1.1\r\nHost: example.test\r\nX-Pad: " + strings.Repeat("a", 8000) + "\r\n\r\n")
	for _, step := range []int{1, 2, 3, 5, 64} {
		t.Run("step="+strconv.Itoa(step), func(t *testing.T) {
			scanned, work, found, calls := 0, 0, 0, 0
			for n := step; ; n += step {
				calls++
				n = min(n, len(head))
				end, from := headEnd(head[:n], scanned)
				work += n - from
				scanned = n
				if end > 0 {
					found = end
					break
				}
			}
			if found != len(head) {
				t.Fatalf("head end at %d, want %d", found, len(head))
			}
			// Each byte once, plus the 3 before each piece (a "\r\n\r\n"
			// may straddle): linear. Searching all every time was quadratic.
			if limit := len(head) + 3*calls; work > limit {
				t.Fatalf("searched %d bytes for a %d-byte head in %d pieces", work, len(head), calls)
			}
		})
	}
	// A terminator split across the boundary of what was scanned.
	b := []byte("GET / HTTP/1.1\r\n\r\n")
	for scanned := range len(b) {
		if end, _ := headEnd(b, scanned); end != len(b) {
			t.Fatalf("scanned %d: end %d, want %d", scanned, end, len(b))
		}
	}
	if end, _ := headEnd(bytes.Repeat([]byte("\r\n"), 1), 0); end != 0 {
		t.Fatalf("end %d in an incomplete head", end)
	}
}
