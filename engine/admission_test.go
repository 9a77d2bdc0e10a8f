package engine

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// admHTTP fetches without keep-alive, so that it leaves no socket behind.
var admHTTP = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 20 * time.Second}

// admGet fetches path from addr and returns the status and body.
func admGet(t testing.TB, addr, path string) (int, string) {
	t.Helper()
	resp, err := admHTTP.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// admMetric reads one sample (name with its labels, as exposed) of the
// server's /metrics.
func admMetric(t testing.TB, addr, name string) float64 {
	t.Helper()
	status, body := admGet(t, addr, "/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d", status)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

func refusedMetric(cause string) string {
	return `fanout_upgrades_refused_total{cause="` + cause + `"}`
}

// quietLogger discards what a server logs.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openFDs counts the process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// baseline is what a test compares the process with once its clients are
// gone: no descriptor and no goroutine may stay behind.
type baseline struct{ fds, goroutines int }

func takeBaseline(t testing.TB, s *Server) baseline {
	t.Helper()
	// Warm up what the process creates once, lazily (netpoll's pollers,
	// net/http's and the pools' goroutines): one WebSocket and one HTTP
	// request, gone before the count.
	c := openWS(t, s)
	c.nc.Close()
	if status, _ := admGet(t, s.Addr().String(), "/healthz"); status != http.StatusOK {
		t.Fatalf("/healthz: %d", status)
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := s.adm.held.Load(); n != 0 {
			return fmt.Errorf("%d sockets held", n)
		}
		return nil
	})
	return baseline{openFDs(t), runtime.NumGoroutine()}
}

// checkNoGrowth polls until the process is back to b (netpoll and net/http
// finish closing in the background). Goroutines get a little slack: a
// pool worker may be parked between tasks.
func (b baseline) checkNoGrowth(t testing.TB) {
	t.Helper()
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := openFDs(t); n > b.fds {
			return fmt.Errorf("%d open descriptors, %d before", n, b.fds)
		}
		if n := runtime.NumGoroutine(); n > b.goroutines+5 {
			return fmt.Errorf("%d goroutines, %d before", n, b.goroutines)
		}
		return nil
	})
}

// refusal sends an upgrade request and returns the response, which must
// not be an upgrade, and its body; the server must then close.
func refusal(t testing.TB, s *Server, req string) (*http.Response, string) {
	t.Helper()
	c := dialRaw(t, s)
	defer c.nc.Close()
	c.write([]byte(req))
	resp := c.response()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		t.Fatalf("upgraded, want a refusal")
	}
	c.expectEOF()
	return resp, string(body)
}

// openWS upgrades a connection and reads its connected push.
func openWS(t testing.TB, s *Server, extra ...string) *rawConn {
	t.Helper()
	c := dialRaw(t, s)
	c.upgrade(extra...)
	if h, p := c.readFrame(); h.OpCode != ws.OpText || !strings.Contains(string(p), `"connected"`) {
		t.Fatalf("first message %v %q", h.OpCode, p)
	}
	return c
}

// pingOK checks that an open connection is still served: a ping command
// gets its reply.
func pingOK(t testing.TB, c *rawConn, id int) {
	t.Helper()
	c.write(pingCommands(id, 1))
	if r := c.readReply(); r.ID != uint64(id) || !r.OK {
		t.Fatalf("ping %d: %+v", id, r)
	}
}

// upgradeStatus sends an upgrade request and returns the status; a 101
// connection is closed again at once.
func upgradeStatus(t testing.TB, s *Server, extra ...string) int {
	t.Helper()
	c := dialRaw(t, s)
	defer c.nc.Close()
	c.write([]byte(upgradeRequest("GET", "/ws", extra...)))
	return c.response().StatusCode
}

// checkRetryAfter checks a Retry-After of whole seconds, at least 1.
func checkRetryAfter(t testing.TB, resp *http.Response) {
	t.Helper()
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Fatalf("Retry-After %q, want seconds >= 1", resp.Header.Get("Retry-After"))
	}
}

// TestMaxConns: past MaxConns an upgrade gets 503 with Retry-After, while
// the open WebSockets, /healthz, /readyz and /metrics are served; once one
// leaves an upgrade succeeds again, and nothing stays behind.
func TestMaxConns(t *testing.T) {
	const max = 3
	s := startServer(t, Config{MaxConns: max})
	addr := s.Addr().String()
	base := takeBaseline(t, s)

	var open []*rawConn
	for range max {
		open = append(open, openWS(t, s))
	}
	for i := range 3 {
		resp, body := refusal(t, s, upgradeRequest("GET", "/ws"))
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "connection limit") {
			t.Fatalf("refusal %d: %s %q, want 503", i, resp.Status, body)
		}
		checkRetryAfter(t, resp)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if status, _ := admGet(t, addr, path); status != http.StatusOK {
			t.Fatalf("%s at the limit: %d", path, status)
		}
	}
	if got := admMetric(t, addr, refusedMetric("max_conns")); got != 3 {
		t.Fatalf("refused max_conns %v, want 3", got)
	}
	if got := admMetric(t, addr, "fanout_max_conns"); got != max {
		t.Fatalf("fanout_max_conns %v", got)
	}
	for i, c := range open {
		pingOK(t, c, i+1)
	}

	// One leaves: room for one more, once the server has seen it go.
	open[0].nc.Close()
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if st := upgradeStatus(t, s); st != http.StatusSwitchingProtocols {
			return fmt.Errorf("upgrade after a close: %d", st)
		}
		return nil
	})
	for _, c := range open[1:] {
		c.nc.Close()
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := s.adm.held.Load(); n != 0 {
			return fmt.Errorf("%d sockets held", n)
		}
		return nil
	})
	base.checkNoGrowth(t)
}

// TestMaxConnsDefault: the default leaves max(256, 5%) of RLIMIT_NOFILE
// free; negative is no limit.
func TestMaxConnsDefault(t *testing.T) {
	l := fdLimit()
	if l == 0 {
		t.Skip("RLIMIT_NOFILE unlimited or unknown")
	}
	tests := []struct {
		name string
		cfg  Config
		want int64
	}{
		{"default", Config{}, int64(l - max(256, l/20))},
		{"default with TLS", Config{TLSCertFile: "x", TLSKeyFile: "y"}, int64((l - max(256, l/20)) / 3)},
		{"set", Config{MaxConns: 7}, 7},
		{"negative", Config{MaxConns: -1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if l <= 512 {
				t.Skip("RLIMIT_NOFILE too small for the table")
			}
			cfg := tt.cfg
			cfg.Logger = quietLogger()
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.adm.maxConns != tt.want {
				t.Fatalf("max conns %d, want %d (RLIMIT_NOFILE %d)", s.adm.maxConns, tt.want, l)
			}
			if s.adm.acceptCap <= s.adm.maxConns && tt.cfg.MaxConns == 0 {
				t.Fatalf("accept cap %d not above max conns %d", s.adm.acceptCap, s.adm.maxConns)
			}
		})
	}
}

// TestMaxConnsPerIP: the open WebSockets of one client address are
// bounded (429 with Retry-After). The address is the peer's unless the peer
// is a trusted proxy, whose X-Forwarded-For then names it (the rightmost
// hop that is not a trusted proxy; IPv6 by /64). An untrusted peer's
// X-Forwarded-For changes nothing. Loopback clients (a proxy on this host,
// a benchmark) are not limited, so the direct case needs the machine's
// own non-loopback address.
func TestMaxConnsPerIP(t *testing.T) {
	type step struct {
		xff  string // X-Forwarded-For, "" for none
		want int
	}
	tests := []struct {
		name    string
		direct  bool // listen on (and connect from) a non-loopback address
		proxies []string
		steps   []step
	}{
		{"direct peer", true, nil, []step{
			{"", 101}, {"", 101}, {"", 429},
			{"1.2.3.4", 429}, // forged: the peer is not a proxy
		}},
		{"loopback peer", false, nil, []step{
			{"", 101}, {"", 101}, {"", 101},
			{"1.2.3.4", 101}, {"1.2.3.4", 101}, {"1.2.3.4", 101}, // ignored
		}},
		{"trusted proxy", false, []string{"127.0.0.1/32", "10.0.0.0/8"}, []step{
			{"1.2.3.4", 101}, {"1.2.3.4", 101}, {"1.2.3.4", 429},
			{"5.6.7.8", 101},
			{"9.9.9.9, 1.2.3.4", 429},  // the client forged the leftmost hop
			{"1.2.3.4, 10.0.0.7", 429}, // two proxies
			{"5.6.7.8, 10.0.0.7", 101},
			{"5.6.7.8:4711", 429}, // with a port
			{"2001:db8::1", 101},
			{"2001:db8::2", 101},
			{"2001:db8::3", 429}, // one /64
			{"2001:db8:0:1::1", 101},
			{"", 101}, {"", 101}, {"", 101}, // the proxy's own: loopback
			{"garbage", 101}, // unparsable: the proxy
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := ""
			if tt.direct {
				ip := nonLoopbackIPv4(t)
				if ip == "" {
					t.Skip("no non-loopback IPv4 address")
				}
				addr = ip + ":0"
			}
			s := startServer(t, Config{Addr: addr, MaxConnsPerIP: 2, TrustedProxies: tt.proxies})
			base := takeBaseline(t, s)
			var open []*rawConn
			for i, st := range tt.steps {
				extra := []string{}
				if st.xff != "" {
					extra = append(extra, "X-Forwarded-For: "+st.xff)
				}
				if st.want == 101 {
					open = append(open, openWS(t, s, extra...))
					continue
				}
				resp, body := refusal(t, s, upgradeRequest("GET", "/ws", extra...))
				if resp.StatusCode != st.want || !strings.Contains(body, "too many connections") {
					t.Fatalf("step %d (%q): %s %q, want %d", i, st.xff, resp.Status, body, st.want)
				}
				checkRetryAfter(t, resp)
			}
			for i, c := range open {
				pingOK(t, c, i+1)
			}
			want := 0
			for _, st := range tt.steps {
				if st.want == 429 {
					want++
				}
			}
			if got := admMetric(t, s.Addr().String(), refusedMetric("per_ip")); got != float64(want) {
				t.Fatalf("refused per_ip %v, want %d", got, want)
			}
			// The first address's first connection leaves: it may come back.
			open[0].nc.Close()
			first := []string{}
			if x := tt.steps[0].xff; x != "" {
				first = append(first, "X-Forwarded-For: "+x)
			}
			checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
				if st := upgradeStatus(t, s, first...); st != 101 {
					return fmt.Errorf("upgrade after a close: %d", st)
				}
				return nil
			})
			for _, c := range open {
				c.nc.Close()
			}
			// Entries go at zero: the table is empty again.
			checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
				if n := s.adm.ips.len(); n != 0 {
					return fmt.Errorf("%d addresses in the table", n)
				}
				return nil
			})
			base.checkNoGrowth(t)
		})
	}
}

// nonLoopbackIPv4 is one of the machine's IPv4 addresses other than
// loopback, "" when it has none.
func nonLoopbackIPv4(t testing.TB) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String()
		}
	}
	return ""
}

// TestClientAddr: the rightmost X-Forwarded-For hop that is not a trusted
// proxy, only from a trusted peer.
func TestClientAddr(t *testing.T) {
	proxies, err := parseTrustedProxies([]string{"10.0.0.0/8", " 192.168.1.1 ", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		peer, xff, want string
	}{
		{"10.1.1.1", "", "10.1.1.1"},
		{"10.1.1.1", "1.2.3.4", "1.2.3.4"},
		{"10.1.1.1", "1.2.3.4,5.6.7.8", "5.6.7.8"},
		{"10.1.1.1", "1.2.3.4, 10.9.9.9 , 192.168.1.1", "1.2.3.4"},
		{"10.1.1.1", "10.2.2.2, 10.3.3.3", "10.2.2.2"}, // all trusted: the leftmost
		{"10.1.1.1", "1.2.3.4, bogus", "10.1.1.1"},
		{"10.1.1.1", "1.2.3.4, bogus, 10.3.3.3", "10.3.3.3"},
		{"10.1.1.1", "[2001:db8::1]:80", "2001:db8::1"},
		{"10.1.1.1", "::ffff:1.2.3.4", "1.2.3.4"},
		{"::1", "1.2.3.4", "1.2.3.4"},
		{"8.8.8.8", "1.2.3.4", "8.8.8.8"}, // untrusted peer
		{"192.168.1.2", "1.2.3.4", "192.168.1.2"},
	}
	for _, tt := range tests {
		got := proxies.clientAddr(netip.MustParseAddr(tt.peer), []byte(tt.xff))
		if got != netip.MustParseAddr(tt.want) {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", tt.peer, tt.xff, got, tt.want)
		}
	}
	if _, err := New(Config{TrustedProxies: []string{"10.0.0.0/33"}, Logger: quietLogger()}); !errors.Is(err, ErrBadTrustedProxy) {
		t.Fatal("bad CIDR accepted")
	}
	if _, err := parseTrustedProxies([]string{"proxy.example"}); err == nil {
		t.Fatal("host name accepted")
	}
	if k := ipKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6")); k != netip.MustParseAddr("2001:db8:1:2::") {
		t.Fatalf("IPv6 key %s", k)
	}
}

// TestSecWebSocketKey: the key must be base64 of exactly 16 bytes, once
// (RFC 6455 4.1); otherwise 400 "invalid Sec-WebSocket-Key".
func TestSecWebSocketKey(t *testing.T) {
	s := startServer(t, Config{})
	base := takeBaseline(t, s)
	tests := []struct {
		name  string
		lines []string
		want  int
	}{
		{"valid", []string{"Sec-WebSocket-Key: " + testKey}, 101},
		{"lower-case name", []string{"Sec-WebSocket-Key: -", "sec-websocket-key: " + testKey}, 101},
		{"not base64", []string{"Sec-WebSocket-Key: not*base64*at*all*!!!!!!"}, 400},
		{"18 bytes", []string{"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA"}, 400},
		{"17 bytes", []string{"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA="}, 400},
		{"non-canonical padding bits", []string{"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAB=="}, 400},
		{"twice", []string{"Sec-WebSocket-Key: " + testKey, "Sec-WebSocket-Key: " + testKey}, 400},
		{"too short (gobwas/ws)", []string{"Sec-WebSocket-Key: AAAA"}, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := upgradeRequest("GET", "/ws", tt.lines...)
			if tt.want == 101 {
				c := dialRaw(t, s)
				c.write([]byte(req))
				if resp := c.response(); resp.StatusCode != 101 {
					t.Fatalf("status %s", resp.Status)
				}
				c.nc.Close()
				return
			}
			resp, body := refusal(t, s, req)
			if resp.StatusCode != tt.want || !strings.Contains(strings.ToLower(body), "sec-websocket-key") {
				t.Fatalf("%s %q, want %d", resp.Status, body, tt.want)
			}
		})
	}
	if got := admMetric(t, s.Addr().String(), refusedMetric("bad_key")); got != 5 {
		t.Fatalf("refused bad_key %v, want 5 (the short key is gobwas/ws's own refusal)", got)
	}
	base.checkNoGrowth(t)
	checkServing(t, s)
}

// TestIPTable: counts per address, entries gone at zero.
func TestIPTable(t *testing.T) {
	var tab ipTable
	tab.init()
	a, b := netip.MustParseAddr("1.2.3.4"), netip.MustParseAddr("5.6.7.8")
	e1, ok1 := tab.acquire(a, 2)
	e2, ok2 := tab.acquire(a, 2)
	if _, ok := tab.acquire(a, 2); !ok1 || !ok2 || ok {
		t.Fatalf("acquire: %v %v %v", ok1, ok2, ok)
	}
	if _, ok := tab.acquire(b, 0); ok {
		t.Fatal("acquired past a limit of 0")
	}
	if n := tab.len(); n != 1 {
		t.Fatalf("%d entries, want 1 (a refused address keeps none)", n)
	}
	tab.release(e1)
	if tab.count(a) != 1 {
		t.Fatalf("count %d", tab.count(a))
	}
	tab.release(e2)
	if n := tab.len(); n != 0 {
		t.Fatalf("%d entries after the last release", n)
	}
}
