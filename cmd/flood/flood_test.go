package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestMain lets the test binary act as a flood worker process: --procs
// re-executes os.Executable(), which under "go test" is this binary.
func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// rawServer is a tiny raw-protocol WebSocket server (like bench/peers):
// echo mode returns every message to its sender, broadcast mode sends it
// to every connection, the sender included.
type rawServer struct {
	addr      string
	broadcast bool
	mu        sync.Mutex
	clients   map[*rawClient]struct{}
}

type rawClient struct {
	conn *websocket.Conn
	send chan rawMsg
}

type rawMsg struct {
	typ  int
	data []byte
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

func startRawServer(t *testing.T, broadcast bool) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{addr: ln.Addr().String(), broadcast: broadcast, clients: map[*rawClient]struct{}{}}
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *rawServer) url() string { return "ws://" + s.addr + "/ws" }

func (s *rawServer) serve(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &rawClient{conn: conn, send: make(chan rawMsg, 4096)}
	s.mu.Lock()
	s.clients[c] = struct{}{}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range c.send {
			if conn.WriteMessage(m.typ, m.data) != nil {
				return
			}
		}
	}()
	for {
		typ, data, err := conn.ReadMessage()
		if err != nil {
			break
		}
		m := rawMsg{typ, data}
		if !s.broadcast {
			c.send <- m
			continue
		}
		s.mu.Lock()
		for o := range s.clients {
			select {
			case o.send <- m:
			default: // a full queue: drop (the test would see loss)
			}
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	delete(s.clients, c)
	s.mu.Unlock()
	close(c.send)
	<-done
	conn.Close()
}

// runFlood runs the tool in-process and returns its exit status, stdout
// and stderr.
func runFlood(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(append(args, "--progress", "off"), strings.NewReader(""), &out, &errb)
	t.Logf("flood %s\nexit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

func readReport(t *testing.T, path string) *Report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("--json output does not parse: %v", err)
	}
	return &r
}

func TestEchoRaw(t *testing.T) {
	s := startRawServer(t, false)
	js := filepath.Join(t.TempDir(), "r.json")
	code, out, _ := runFlood(t, "echo", "--url", s.url(), "--protocol", "raw", "--conns", "50",
		"--connect-rate", "1000", "--duration", "2s", "--size", "32", "--inflight", "2", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, js)
	sm := r.Summary
	if sm.ConnOK != 50 || sm.ConnFail != 0 {
		t.Errorf("connections ok %d failed %d, want 50, 0", sm.ConnOK, sm.ConnFail)
	}
	if sm.Delivered == 0 || sm.DeliveryRate <= 0 || sm.Latency.Count == 0 || sm.Latency.P50 <= 0 {
		t.Errorf("no echo throughput: delivered %d rate %f latency %+v", sm.Delivered, sm.DeliveryRate, sm.Latency)
	}
	if sm.Lost != 0 || sm.Pending != 0 {
		t.Errorf("lost %d pending %d, want 0", sm.Lost, sm.Pending)
	}
	if !strings.Contains(out, "rtt") {
		t.Errorf("table has no rtt row")
	}
	if len(r.Series) == 0 {
		t.Errorf("no time series")
	}
}

func TestBroadcastRaw(t *testing.T) {
	s := startRawServer(t, true)
	dir := t.TempDir()
	js, html := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	code, out, _ := runFlood(t, "broadcast", "--url", s.url(), "--protocol", "raw", "--conns", "50",
		"--publishers", "2", "--rate", "400", "--size", "64", "--duration", "2s", "--json", js, "--report", html)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, js)
	sm := r.Summary
	if sm.ConnOK != 52 || sm.Measured != 50 {
		t.Errorf("connected %d measured %d, want 52, 50", sm.ConnOK, sm.Measured)
	}
	if sm.Sent == 0 || sm.Expected != sm.Sent*50 {
		t.Errorf("sent %d expected %d", sm.Sent, sm.Expected)
	}
	if sm.Lost != 0 || sm.Delivered != sm.Expected {
		t.Errorf("delivered %d of %d (lost %d), want all", sm.Delivered, sm.Expected, sm.Lost)
	}
	if sm.DeliveryRate <= 0 || sm.Latency.Count != sm.Delivered || sm.Latency.P99 <= 0 {
		t.Errorf("rate %f latency %+v", sm.DeliveryRate, sm.Latency)
	}
	if len(r.LatencyCurve) == 0 {
		t.Errorf("no latency curve")
	}
	if !strings.Contains(out, "deliveries") || !strings.Contains(out, "p99.9") {
		t.Errorf("table lacks deliveries/latency rows")
	}
	checkHTML(t, html)
}

// checkHTML checks that the report exists, has charts and loads nothing.
func checkHTML(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if !strings.Contains(page, "<svg") {
		t.Errorf("report has no <svg")
	}
	for _, bad := range []string{"src=", "href=", "<script", "<link", "@import", "url("} {
		if strings.Contains(page, bad) {
			t.Errorf("report contains %q: not self-contained", bad)
		}
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	js := filepath.Join(t.TempDir(), "r.json")
	code, out, _ := runFlood(t, "connect", "--url", "ws://"+addr+"/ws", "--protocol", "raw", "--conns", "20",
		"--connect-rate", "2000", "--duration", "100ms", "--connect-timeout", "2s", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, js)
	if r.Summary.ConnOK != 0 || r.Summary.ConnFail != 20 {
		t.Errorf("ok %d failed %d, want 0, 20", r.Summary.ConnOK, r.Summary.ConnFail)
	}
	if len(r.Summary.ConnectFailures) != 1 || r.Summary.ConnectFailures[0] != (CauseCount{"refused", 20}) {
		t.Errorf("failures by cause %+v, want refused 20", r.Summary.ConnectFailures)
	}
	if !strings.Contains(out, "refused 20") {
		t.Errorf("table does not show the cause")
	}
}

func TestConnectStatusAndHold(t *testing.T) {
	ws := startRawServer(t, false)
	js := filepath.Join(t.TempDir(), "r.json")
	// A server that answers upgrades with 403.
	forbidden := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go forbidden.Serve(ln)
	defer forbidden.Close()
	code, _, _ := runFlood(t, "connect", "--url", "ws://"+ln.Addr().String()+"/ws", "--protocol", "fanout-json",
		"--conns", "7", "--duration", "100ms", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if f := readReport(t, js).Summary.ConnectFailures; len(f) != 1 || f[0] != (CauseCount{"status_403", 7}) {
		t.Errorf("failures %+v, want status_403 7", f)
	}

	// Hold: connections stay open for --duration and are counted open.
	code, _, _ = runFlood(t, "connect", "--url", ws.url(), "--protocol", "raw", "--conns", "30",
		"--connect-rate", "300", "--duration", "1s", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, js)
	if r.Summary.ConnOK != 30 || r.Summary.Handshake.Count != 30 || len(r.Summary.DisconnectCauses) != 0 {
		t.Errorf("ok %d handshakes %d disconnects %+v", r.Summary.ConnOK, r.Summary.Handshake.Count, r.Summary.DisconnectCauses)
	}
	peak := int64(0)
	for _, p := range r.Series {
		peak = max(peak, p.Open)
	}
	if peak != 30 || r.Summary.PeakOpen != 30 {
		t.Errorf("series peak open %d, summary %d, want 30", peak, r.Summary.PeakOpen)
	}
}

func TestProcsMerge(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns worker processes")
	}
	s := startRawServer(t, true)
	js := filepath.Join(t.TempDir(), "r.json")
	code, _, _ := runFlood(t, "broadcast", "--url", s.url(), "--protocol", "raw", "--procs", "2", "--conns", "40",
		"--publishers", "1", "--rate", "200", "--duration", "2s", "--json", js,
		"--source-ips", "127.0.0.1-127.0.0.2")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	r := readReport(t, js)
	if r.Procs != 2 || len(r.Workers) != 2 {
		t.Fatalf("procs %d workers %d, want 2", r.Procs, len(r.Workers))
	}
	var ok, deliv int64
	for _, w := range r.Workers {
		ok += w.ConnOK
		deliv += w.Delivered
		if w.ConnOK < 20 {
			t.Errorf("worker %d connected %d, want >= 20", w.Index, w.ConnOK)
		}
	}
	sm := r.Summary
	if ok != sm.ConnOK || sm.ConnOK != 41 {
		t.Errorf("workers' connections %d, total %d, want 41", ok, sm.ConnOK)
	}
	if deliv != sm.Delivered || sm.Delivered != sm.Expected || sm.Expected != sm.Sent*40 || sm.Sent == 0 {
		t.Errorf("workers delivered %d, total %d, expected %d (sent %d)", deliv, sm.Delivered, sm.Expected, sm.Sent)
	}
	if sm.Latency.Count != sm.Delivered {
		t.Errorf("merged latency histogram has %d samples, want %d", sm.Latency.Count, sm.Delivered)
	}
	var seriesDeliv int64
	for _, p := range r.Series {
		seriesDeliv += p.Delivered
	}
	if seriesDeliv == 0 || seriesDeliv > sm.Delivered {
		t.Errorf("series deliveries %d, total %d", seriesDeliv, sm.Delivered)
	}
	if sm.RSSWorkersMax == 0 {
		t.Errorf("no worker RSS")
	}
}

func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"bogus"},
		{"churn", "--protocol", "raw"},
		{"broadcast", "--protocol", "raw", "--size", "4"},
		{"echo", "--url", "http://x/ws"},
		{"echo", "--source-ips", "1.2.3.4-1.2.3.1"},
	} {
		if code, _, _ := runFlood(t, args...); code != 2 {
			t.Errorf("flood %q: exit %d, want 2", args, code)
		}
	}
	var out bytes.Buffer
	if code := Main([]string{"--help"}, nil, &out, &out); code != 0 || !strings.Contains(out.String(), "--source-ips") ||
		strings.Contains(out.String(), "worker-index") {
		t.Errorf("--help: exit %d\n%s", code, out.String())
	}
}

func TestDeadlineBoundsRun(t *testing.T) {
	// A server that accepts TCP but never answers the upgrade: the run
	// must still end by itself, with timeouts.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	js := filepath.Join(t.TempDir(), "r.json")
	began := time.Now()
	code, _, _ := runFlood(t, "broadcast", "--url", "ws://"+ln.Addr().String()+"/ws", "--protocol", "raw",
		"--conns", "10", "--duration", "1s", "--connect-timeout", "500ms", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	if el := time.Since(began); el > 15*time.Second {
		t.Errorf("run took %v", el)
	}
	if f := readReport(t, js).Summary.ConnectFailures; len(f) != 1 || f[0] != (CauseCount{"timeout", 11}) {
		t.Errorf("failures %+v, want timeout 11", f)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestInterruptStopsEarly(t *testing.T) {
	s := startRawServer(t, true)
	js := filepath.Join(t.TempDir(), "r.json")
	cfg, err := parseArgs([]string{"broadcast", "--url", s.url(), "--protocol", "raw", "--conns", "10",
		"--rate", "100", "--duration", "1m", "--progress", "on", "--json", js}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	var errb syncBuffer
	done := make(chan int, 1)
	began := time.Now()
	go func() { done <- runCoordinator(ctx, cfg, &out, &errb) }()
	waitFor(t, 20*time.Second, "the load phase", func() bool { return strings.Contains(errb.String(), "] run ") })
	cancel() // what SIGINT does
	var code int
	select {
	case code = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop after the interrupt")
	}
	if code != 0 || time.Since(began) > 30*time.Second {
		t.Errorf("exit %d after %v", code, time.Since(began))
	}
	r := readReport(t, js)
	if !r.Interrupted || r.Summary.Delivered == 0 || !strings.Contains(out.String(), "interrupted") {
		t.Errorf("interrupted %v delivered %d\n%s", r.Interrupted, r.Summary.Delivered, out.String())
	}
}

func TestTLSEcho(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			typ, data, err := conn.ReadMessage()
			if err != nil || conn.WriteMessage(typ, data) != nil {
				return
			}
		}
	}))
	defer srv.Close()
	u := "wss://" + strings.TrimPrefix(srv.URL, "https://") + "/ws"
	js := filepath.Join(t.TempDir(), "r.json")
	// Without --insecure the self-signed certificate is refused.
	code, _, _ := runFlood(t, "connect", "--url", u, "--protocol", "raw", "--conns", "3", "--duration", "10ms", "--json", js)
	if f := readReport(t, js).Summary.ConnectFailures; code != 0 || len(f) != 1 || f[0] != (CauseCount{"tls", 3}) {
		t.Errorf("exit %d, failures %+v, want tls 3", code, f)
	}
	code, _, _ = runFlood(t, "echo", "--url", u, "--insecure", "--protocol", "raw", "--conns", "10",
		"--duration", "1s", "--json", js)
	sm := readReport(t, js).Summary
	if code != 0 || sm.ConnOK != 10 || sm.Delivered == 0 || sm.Lost != 0 {
		t.Errorf("exit %d ok %d delivered %d lost %d", code, sm.ConnOK, sm.Delivered, sm.Lost)
	}
}

func TestNotReadyCounted(t *testing.T) {
	// Raw broadcast against an echo server: subscribers never receive a
	// broadcast, so none becomes ready; the run still ends on time.
	s := startRawServer(t, false)
	js := filepath.Join(t.TempDir(), "r.json")
	code, out, _ := runFlood(t, "broadcast", "--url", s.url(), "--protocol", "raw", "--conns", "5",
		"--connect-timeout", "500ms", "--duration", "200ms", "--json", js)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	sm := readReport(t, js).Summary
	if sm.ConnOK != 6 || sm.Ready != 0 || len(sm.NotReady) != 1 || sm.NotReady[0] != (CauseCount{"no_broadcast_received", 5}) {
		t.Errorf("ok %d ready %d not ready %+v", sm.ConnOK, sm.Ready, sm.NotReady)
	}
	if sm.Open != 0 || !strings.Contains(out, "not ready") {
		t.Errorf("open at end %d", sm.Open)
	}
}
