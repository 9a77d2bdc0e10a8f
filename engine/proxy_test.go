package engine

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"
)

// servePlain sends plain keep-alive HTTP requests on c and checks each is
// answered 200 and the connection kept: c is then net/http's.
func (c *rawConn) servePlain(paths ...string) {
	c.t.Helper()
	for _, p := range paths {
		c.write([]byte("GET " + p + " HTTP/1.1\r\nHost: example.test\r\n\r\n"))
		resp := c.response()
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Close {
			c.t.Fatalf("GET %s: %s (close %v)", p, resp.Status, resp.Close)
		}
	}
}

// keptAlive dials s and serves two plain requests on the connection.
func keptAlive(t testing.TB, s *Server) *rawConn {
	t.Helper()
	c := dialRaw(t, s)
	c.servePlain("/healthz", "/auth.json")
	return c
}

// readConnected reads the connected push that follows a 101.
func (c *rawConn) readConnected() {
	c.t.Helper()
	if h, p := c.readFrame(); h.OpCode != ws.OpText || !strings.Contains(string(p), `"connected"`) {
		c.t.Fatalf("first message %v %q, want the connected push", h.OpCode, p)
	}
}

// bufConn is a client connection whose first bytes were read into br.
type bufConn struct {
	net.Conn
	br io.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.br.Read(p) }

// keptAliveClient opens a protocol client (gorilla/websocket) on a
// connection that served plain HTTP first.
func keptAliveClient(t testing.TB, s *Server, h http.Header) (*testClient, *http.Response, error) {
	t.Helper()
	c := keptAlive(t, s)
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, HandshakeTimeout: 10 * time.Second,
		NetDial: func(string, string) (net.Conn, error) { return &bufConn{c.nc, c.br}, nil }}
	wc, resp, err := d.Dial(wsURL(s), h)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { wc.Close() })
	tc := &testClient{t: t, c: wc}
	if m := tc.read(); m["push"] != "connected" {
		t.Fatalf("first message %v", m)
	}
	return tc, resp, nil
}

// TestKeepAliveUpgrade: a connection that served ordinary HTTP requests
// (keep-alive, as a proxy's upstream connection does) upgrades later on
// the same TCP connection and is then an ordinary WebSocket of the event
// loop: pub/sub works, fanout_keepalive_upgrades_total counts it, no
// goroutine per connection stays behind, and closing leaves nothing
// behind. Every byte net/http had read past the upgrade request (a client
// sending frames right behind it, pipelined requests) reaches the
// WebSocket. It got 400 "WebSocket upgrades must use a new connection".
func TestKeepAliveUpgrade(t *testing.T) {
	s := startServer(t, Config{CommandRate: -1})
	addr := s.Addr().String()

	t.Run("pub/sub", func(t *testing.T) {
		sub, resp, err := keptAliveClient(t, s, nil)
		if err != nil {
			t.Fatalf("upgrade after plain requests: %v (%+v)", err, resp)
		}
		pub, _, err := keptAliveClient(t, s, nil)
		if err != nil {
			t.Fatal(err)
		}
		sub.mustOK(map[string]any{"op": "subscribe", "channel": "kept"})
		pub.mustOK(map[string]any{"op": "publish", "channel": "kept", "data": "hello"})
		for {
			if m := sub.read(); m["push"] == "pub" {
				if m["data"] != "hello" || m["channel"] != "kept" {
					t.Fatalf("publication %v", m)
				}
				break
			}
		}
	})

	// Bytes read past the upgrade request: a ping command right behind
	// it, in net/http's buffer or (first request pipelined with a long
	// head, so that net/http's 4 KiB reads leave some) not replayed yet.
	pad := "X-Pad: " + strings.Repeat("p", 3000)
	ping := string(pingCommands(7, 1))
	cases := []struct {
		name    string
		plain   string // sent first, in its own write; "" for none
		request string // then the upgrade request and whatever follows it, in one write
		answers int    // plain responses before the 101
	}{
		{"frame behind the request", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", upgradeRequest("GET", "/ws") + ping, 1},
		{"pipelined", "", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + upgradeRequest("GET", "/ws") + ping, 1},
		{"pipelined, long heads", "", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + pad + "\r\n\r\n" + upgradeRequest("GET", "/ws", pad) + ping, 1},
		{"absolute target", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", strings.Replace(upgradeRequest("GET", "/ws"), "GET /ws ", "GET http://example.test/ws ", 1) + ping, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := admMetric(t, addr, "fanout_keepalive_upgrades_total")
			c := dialRaw(t, s)
			if tc.plain != "" {
				c.write([]byte(tc.plain))
				resp := c.response()
				_, _ = io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != 200 {
					t.Fatalf("plain request: %s", resp.Status)
				}
				tc.answers--
			}
			c.write([]byte(tc.request))
			for ; tc.answers > 0; tc.answers-- {
				resp := c.response()
				_, _ = io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != 200 {
					t.Fatalf("pipelined plain request: %s", resp.Status)
				}
			}
			if resp := c.response(); resp.StatusCode != http.StatusSwitchingProtocols {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("upgrade: %s %q", resp.Status, body)
			}
			c.readConnected()
			if r := c.readReply(); r.ID != 7 || !r.OK {
				t.Fatalf("ping sent behind the request: %+v", r)
			}
			pingOK(t, c, 8)
			if got := admMetric(t, addr, "fanout_keepalive_upgrades_total"); got != before+1 {
				t.Fatalf("keepalive upgrades %v, want %v", got, before+1)
			}
		})
	}

	t.Run("owned by the event loop", func(t *testing.T) {
		// Warm up: the loop's listener and goroutines exist from the first
		// kept-alive upgrade on.
		w := keptAlive(t, s)
		w.write([]byte(upgradeRequest("GET", "/ws")))
		if st := w.response().StatusCode; st != 101 {
			t.Fatalf("warm-up: %d", st)
		}
		w.nc.Close()
		base := takeBaseline(t, s)
		const n = 40
		var conns []*rawConn
		for range n {
			c := keptAlive(t, s)
			c.upgrade()
			c.readConnected()
			conns = append(conns, c)
		}
		// net/http's goroutine per connection ended with the hijack; the
		// WebSockets hold none (pool workers may linger a little).
		checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			if g := runtime.NumGoroutine(); g > base.goroutines+n/4 {
				return fmt.Errorf("%d goroutines for %d WebSockets, %d before", g, n, base.goroutines)
			}
			return nil
		})
		if open := s.stats.open.Load(); open < n {
			t.Fatalf("%d open WebSockets, want at least %d", open, n)
		}
		for i, c := range conns {
			pingOK(t, c, i+1)
		}
		for _, c := range conns {
			c.nc.Close()
		}
		base.checkNoGrowth(t)
	})
}

// TestKeepAliveUpgradeSameAnswers: every upgrade request gets the same
// answer on a kept-alive connection as on a fresh one (the same admission,
// gobwas/ws checks and authentication), and its refusals are counted in
// fanout_upgrades_refused_total like a fresh connection's.
func TestKeepAliveUpgradeSameAnswers(t *testing.T) {
	logs := &tlsLogBuffer{}
	s := startServer(t, Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	addr := s.Addr().String()
	tests := []struct {
		name, request string
		want          int
		cause         string // refusal counted, "" for none
	}{
		{"upgrade", upgradeRequest("GET", "/ws"), 101, ""},
		{"bad key", upgradeRequest("GET", "/ws", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA"), 400, "bad_key"},
		{"foreign origin", upgradeRequest("GET", "/ws", "Origin: http://evil.example"), 403, "origin"},
		{"two origins", upgradeRequest("GET", "/ws", "Origin: http://localhost", "Origin: http://localhost"), 400, "origin"},
		{"forged X-Forwarded-Host", upgradeRequest("GET", "/ws", "Origin: http://localhost:8080", "X-Forwarded-Host: localhost:8080"), 403, "origin"},
		{"no Upgrade", "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 0, ""},
		{"wrong version", upgradeRequest("GET", "/ws", "Sec-WebSocket-Version: 8"), 0, ""},
		{"POST", upgradeRequest("POST", "/ws"), 0, ""},
		{"unknown subprotocol", upgradeRequest("GET", "/ws", "Sec-WebSocket-Protocol: nope"), 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status := func(c *rawConn) int {
				c.write([]byte(tt.request))
				resp := c.response()
				if resp.StatusCode != http.StatusSwitchingProtocols {
					_, _ = io.ReadAll(resp.Body)
					c.expectEOF() // a refused handshake is the connection's end
				}
				return resp.StatusCode
			}
			var before float64
			if tt.cause != "" {
				before = admMetric(t, addr, refusedMetric(tt.cause))
			}
			fresh := status(dialRaw(t, s))
			kept := status(keptAlive(t, s))
			if fresh != kept || tt.want != 0 && kept != tt.want {
				t.Fatalf("fresh connection %d, kept-alive %d, want %d for both", fresh, kept, tt.want)
			}
			if tt.cause != "" {
				if got := admMetric(t, addr, refusedMetric(tt.cause)); got != before+2 {
					t.Fatalf("refused %s: %v, want %v (fresh and kept-alive)", tt.cause, got, before+2)
				}
			}
		})
	}
	if !strings.Contains(logs.String(), "refusing upgrades: origin") {
		t.Fatalf("origin refusals not logged:\n%s", logs)
	}
}

// TestKeepAliveTrustedProxies: behind a trusted proxy the per-address
// limit counts the X-Forwarded-For client and the origin check uses
// X-Forwarded-Host/-Proto, on kept-alive connections as on fresh ones;
// from an untrusted peer those headers are ignored.
func TestKeepAliveTrustedProxies(t *testing.T) {
	upgrade := func(t *testing.T, s *Server, extra ...string) int {
		t.Helper()
		c := keptAlive(t, s)
		c.write([]byte(upgradeRequest("GET", "/ws", extra...)))
		resp := c.response()
		if resp.StatusCode == 101 {
			c.readConnected()
		}
		return resp.StatusCode
	}
	xff := func(a string) string { return "X-Forwarded-For: " + a }

	t.Run("per-address limit, trusted", func(t *testing.T) {
		logs := &tlsLogBuffer{}
		s := startServer(t, Config{MaxConnsPerIP: 1, TrustedProxies: []string{"127.0.0.1/32"},
			Logger: slog.New(slog.NewTextHandler(logs, nil))})
		steps := []struct {
			xff  string
			want int
		}{
			{"203.0.113.7", 101},
			{"203.0.113.7", 429},
			{"198.51.100.1, 203.0.113.7", 429}, // a forged hop left of the proxy's
			{"203.0.113.8", 101},
		}
		for i, st := range steps {
			if got := upgrade(t, s, xff(st.xff)); got != st.want {
				t.Fatalf("step %d (%s): %d, want %d", i, st.xff, got, st.want)
			}
		}
		if got := admMetric(t, s.Addr().String(), refusedMetric("per_ip")); got != 2 {
			t.Fatalf("refused per_ip %v, want 2", got)
		}
		if l := logs.String(); !strings.Contains(l, "client=203.0.113.7") {
			t.Fatalf("per-address refusal does not log the client address:\n%s", l)
		}
	})

	t.Run("per-address limit, untrusted peer", func(t *testing.T) {
		ip := nonLoopbackIPv4(t)
		if ip == "" {
			t.Skip("no non-loopback IPv4 address to connect from")
		}
		// The peer is not loopback (so it is limited) and not trusted: its
		// X-Forwarded-For changes nothing.
		s := startServer(t, Config{Addr: ip + ":0", MaxConnsPerIP: 1, TrustedProxies: []string{"10.0.0.0/8"}})
		if got := upgrade(t, s, xff("203.0.113.7")); got != 101 {
			t.Fatalf("first: %d", got)
		}
		if got := upgrade(t, s, xff("203.0.113.8")); got != 429 {
			t.Fatalf("second, another forged client: %d, want 429", got)
		}
	})

	// A proxy on a non-default port that sets Host to the upstream's name
	// (nginx's "proxy_set_header Host $host" drops the port): the page's
	// origin is https://localhost:8443, which only X-Forwarded-Host and
	// -Proto tell (development mode compares the origin with them).
	forwarded := []string{"Origin: https://localhost:8443", "X-Forwarded-Host: localhost:8443", "X-Forwarded-Proto: https"}
	originTests := []struct {
		name    string
		proxies []string
		extra   []string
		want    int
	}{
		{"trusted", []string{"127.0.0.1/32"}, forwarded, 101},
		{"trusted, several hops", []string{"127.0.0.0/8"}, []string{"Origin: https://localhost:8443", "X-Forwarded-Host: localhost:8443, fanout:8080", "X-Forwarded-Proto: https, http"}, 101},
		{"trusted, scheme differs", []string{"127.0.0.1/32"}, []string{"Origin: http://localhost:8443", "X-Forwarded-Host: localhost:8443", "X-Forwarded-Proto: https"}, 403},
		{"untrusted", []string{"10.0.0.0/8"}, forwarded, 403},
		{"no proxies", nil, forwarded, 403},
	}
	for _, tt := range originTests {
		t.Run("origin, "+tt.name, func(t *testing.T) {
			s := startServer(t, Config{TrustedProxies: tt.proxies})
			// Host is the upstream's name, as the proxy sent it.
			extra := append([]string{"Host: localhost"}, tt.extra...)
			req := strings.Replace(upgradeRequest("GET", "/ws", extra...), "Host: example.test\r\n", "", 1)
			for _, kept := range []bool{false, true} {
				c := dialRaw(t, s)
				if kept {
					c.servePlain("/healthz")
				}
				c.write([]byte(req))
				if got := c.response().StatusCode; got != tt.want {
					t.Fatalf("kept-alive %v: %d, want %d", kept, got, tt.want)
				}
				c.nc.Close()
			}
			if tt.want == 403 {
				if got := admMetric(t, s.Addr().String(), refusedMetric("origin")); got != 2 {
					t.Fatalf("refused origin %v, want 2", got)
				}
			}
		})
	}
}

// TestKeepAliveUpgradeWhileStopping: a kept-alive connection asking for an
// upgrade once the server stopped accepting is answered 503 and counted
// (cause keepalive), never left hanging.
func TestKeepAliveUpgradeWhileStopping(t *testing.T) {
	s := startServer(t, Config{})
	c := keptAlive(t, s)
	s.listenerClosed.Store(true) // what Shutdown sets after the drain delay
	c.write([]byte(upgradeRequest("GET", "/ws")))
	resp := c.response()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s %q, want 503 with Retry-After", resp.Status, body)
	}
	c.expectEOF()
	s.listenerClosed.Store(false)
	if got := admMetric(t, s.Addr().String(), refusedMetric("keepalive")); got != 1 {
		t.Fatalf("refused keepalive %v, want 1", got)
	}
}

// TestRequestHead: the head rebuilt from a parsed request carries the
// request line, Host and every header value; line breaks are refused.
func TestRequestHead(t *testing.T) {
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(upgradeRequest("GET", "/ws?token=a%20b", "Origin: http://a", "Origin: http://b"))))
	if err != nil {
		t.Fatal(err)
	}
	head, ok := requestHead(r)
	if !ok {
		t.Fatal("refused")
	}
	for _, want := range []string{"GET /ws?token=a%20b HTTP/1.1\r\n", "Host: example.test\r\n", "Origin: http://a\r\nOrigin: http://b\r\n",
		"Sec-Websocket-Key: " + testKey + "\r\n", "Upgrade: websocket\r\n"} {
		if !bytes.Contains(head, []byte(want)) {
			t.Fatalf("head lacks %q:\n%s", want, head)
		}
	}
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) || bytes.Count(head, []byte("\r\n\r\n")) != 1 {
		t.Fatalf("head does not end once:\n%q", head)
	}
	r.Header.Set("X-Evil", "a\r\nX-Injected: b")
	if _, ok := requestHead(r); ok {
		t.Fatal("a value with a line break was accepted")
	}
}

// TestKeepAliveUpgradeTLS: behind the server's own TLS front (net/http then
// holds one end of a socketpair, not the client's socket) a kept-alive
// connection upgrades too, and the WebSocket is served.
func TestKeepAliveUpgradeTLS(t *testing.T) {
	e := startTLSServer(t, Config{CommandRate: -1})
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.s.Addr().String(), e.clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawConn{t: t, nc: tc, br: bufio.NewReader(tc)}
	c.servePlain("/healthz", "/readyz")
	c.upgrade()
	c.readConnected()
	pingOK(t, c, 1)
	if got := tlsMetric(t, e, "fanout_keepalive_upgrades_total"); got != 1 {
		t.Fatalf("keepalive upgrades %v, want 1", got)
	}
}

// tlsMetric reads a metric of a TLS server.
func tlsMetric(t testing.TB, e *tlsEnv, name string) float64 {
	t.Helper()
	resp, err := e.httpsClient().Get("https://" + e.s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// TestKeepAliveUpgradeShutdown: a WebSocket upgraded on a kept-alive
// connection drains like any other: Shutdown closes it 1012 and returns
// once it is gone.
func TestKeepAliveUpgradeShutdown(t *testing.T) {
	s := startServer(t, Config{DrainDelay: time.Millisecond, DrainTimeout: 20 * time.Second})
	c := keptAlive(t, s)
	c.upgrade()
	c.readConnected()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(t.Context()) }()
	c.expectClose(CloseRestart)
	c.nc.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown did not return")
	}
}
