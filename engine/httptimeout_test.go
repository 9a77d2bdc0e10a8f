package engine

import (
	"io"
	"strings"
	"testing"
	"time"
)

// TestHTTPBodyTrickleTimesOut: an ordinary HTTP request whose body trickles
// in is cut off after HTTPReadTimeout (there was no ReadTimeout: 300 such
// connections held 300 goroutines and descriptors for 76 s+ with no
// response), and the server serves others meanwhile and afterwards.
func TestHTTPBodyTrickleTimesOut(t *testing.T) {
	s := startServer(t, Config{APIKey: "k", HTTPReadTimeout: 500 * time.Millisecond})
	const n = 20
	conns := make([]*rawConn, n)
	for i := range conns {
		c := dialRaw(t, s)
		c.write([]byte("POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"))
		conns[i] = c
	}
	// Someone else is served while they trickle.
	h := dialRaw(t, s)
	h.write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp := h.response(); resp.StatusCode != 200 {
		t.Fatalf("healthz: %s", resp.Status)
	}
	for i, c := range conns {
		// One more byte, well inside the timeout, changes nothing.
		_, _ = c.nc.Write([]byte(`"`))
		_ = c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
		start := time.Now()
		// net/http answers a request whose body times out by closing
		// the connection (possibly after a 4xx); it must not wait for
		// the rest of the body.
		b, err := io.ReadAll(c.br)
		if err != nil && !isReset(err) {
			t.Fatalf("conn %d: %v after %v (want the server to close it)", i, err, time.Since(start))
		}
		if strings.Contains(string(b), "200 OK") {
			t.Fatalf("conn %d: a request with 2 of 1000 body bytes succeeded: %q", i, b)
		}
	}
	h2 := dialRaw(t, s)
	h2.write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	if resp := h2.response(); resp.StatusCode != 200 {
		t.Fatalf("healthz after: %s", resp.Status)
	}
}
