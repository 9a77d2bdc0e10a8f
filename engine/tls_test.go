package engine

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// tlsTestCert is a self-signed certificate for 127.0.0.1 and localhost,
// written to PEM files.
type tlsTestCert struct {
	certPEM, keyPEM []byte
	leaf            *x509.Certificate
}

func newTLSTestCert(t testing.TB, cn string) tlsTestCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return tlsTestCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
		leaf:    leaf,
	}
}

// write puts the certificate and key in certFile and keyFile, each
// replaced atomically (a rename, as certificate managers do).
func (c tlsTestCert) write(t testing.TB, certFile, keyFile string) {
	t.Helper()
	for _, f := range []struct {
		path string
		b    []byte
	}{{certFile, c.certPEM}, {keyFile, c.keyPEM}} {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			t.Fatal(err)
		}
	}
}

// tlsEnv is a TLS server started on a random port with its certificate
// files and a client configuration that trusts it.
type tlsEnv struct {
	s                 *Server
	certFile, keyFile string
	roots             *x509.CertPool
	logs              *tlsLogBuffer
}

func startTLSServer(t testing.TB, cfg Config, certs ...tlsTestCert) *tlsEnv {
	t.Helper()
	dir := t.TempDir()
	e := &tlsEnv{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"),
		roots: x509.NewCertPool(), logs: &tlsLogBuffer{}}
	if len(certs) == 0 {
		certs = []tlsTestCert{newTLSTestCert(t, "fanout-test")}
	}
	for _, c := range certs {
		e.roots.AddCert(c.leaf)
	}
	certs[0].write(t, e.certFile, e.keyFile)
	cfg.TLSCertFile, cfg.TLSKeyFile = e.certFile, e.keyFile
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.s = startServer(t, cfg)
	return e
}

func (e *tlsEnv) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: e.roots, ServerName: "127.0.0.1"}
}

func (e *tlsEnv) httpsClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: e.clientConfig(), DisableKeepAlives: true}}
}

func (e *tlsEnv) wssURL() string { return "wss://" + e.s.Addr().String() + "/ws" }

// dial opens a protocol client over wss://.
func (e *tlsEnv) dial(t testing.TB) *testClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, HandshakeTimeout: 5 * time.Second,
		TLSClientConfig: e.clientConfig()}
	c, resp, err := d.Dial(e.wssURL(), nil)
	if err != nil {
		t.Fatalf("wss dial: %v (%+v)", err, resp)
	}
	t.Cleanup(func() { c.Close() })
	tc := &testClient{t: t, c: c}
	m := tc.read()
	if m["push"] != "connected" {
		t.Fatalf("first message %v", m)
	}
	tc.client, _ = m["client"].(string)
	return tc
}

// servedCert returns the common name of the certificate the server
// presents to a new handshake.
func (e *tlsEnv) servedCert(t testing.TB) string {
	t.Helper()
	conf := e.clientConfig()
	conf.InsecureSkipVerify = true // the name is the test, not the chain
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", e.s.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// tlsLogBuffer collects a server's log lines (safe for concurrent use).
type tlsLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *tlsLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *tlsLogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func tlsOpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func TestTLSServesHTTPSAndWSS(t *testing.T) {
	e := startTLSServer(t, Config{CommandRate: -1, PublishBytesPerSecond: -1})

	resp, err := e.httpsClient().Get("https://" + e.s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" || resp.TLS == nil {
		t.Fatalf("https /healthz: %s %q tls=%v", resp.Status, body, resp.TLS != nil)
	}

	// ALPN: HTTP/1.1 even when the client prefers h2 (an h2 connection
	// could not be upgraded); TLS 1.2 at least.
	conf := e.clientConfig()
	conf.NextProtos = []string{"h2", "http/1.1"}
	c, err := tls.Dial("tcp", e.s.Addr().String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	st := c.ConnectionState()
	c.Close()
	if st.NegotiatedProtocol != "http/1.1" || st.Version < tls.VersionTLS12 {
		t.Fatalf("negotiated %q version %x", st.NegotiatedProtocol, st.Version)
	}
	old := e.clientConfig()
	old.MaxVersion = tls.VersionTLS11
	if c, err := tls.Dial("tcp", e.s.Addr().String(), old); err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	only12 := e.clientConfig()
	only12.MaxVersion = tls.VersionTLS12
	only12.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256} // no forward secrecy
	if c, err := tls.Dial("tcp", e.s.Addr().String(), only12); err == nil {
		c.Close()
		t.Fatal("a TLS 1.2 handshake without ECDHE succeeded")
	}

	// wss: pub/sub between two TLS clients, with a publication larger than
	// a TLS record and the pooled buffers both ways.
	sub, pub := e.dial(t), e.dial(t)
	sub.mustOK(map[string]any{"op": "subscribe", "channel": "news"})
	big := strings.Repeat("0123456789abcdef", 12<<10) // 192 KiB
	for i, data := range []string{"hello", big, "after"} {
		r := tlsPublish(pub, "news", data)
		if r["offset"] != float64(i+1) {
			t.Fatalf("publish reply %v", r)
		}
		p := sub.nextPub()
		if p["data"] != data {
			t.Fatalf("pub %d: %d bytes, want %d", i, len(fmt.Sprint(p["data"])), len(data))
		}
	}

	// The engine knows each client's real address.
	want := map[string]bool{sub.c.LocalAddr().String(): true, pub.c.LocalAddr().String(): true}
	for _, cn := range serverConnsTLS(e.s) {
		if cn.state.Load() != stateOpen {
			continue
		}
		ra, ok := cn.nc.RemoteAddr().(*net.TCPAddr)
		if !ok || !want[ra.String()] {
			t.Fatalf("engine connection's remote address %v, want one of %v", cn.nc.RemoteAddr(), want)
		}
		delete(want, ra.String())
	}
	if len(want) != 0 {
		t.Fatalf("clients %v not found among the engine's connections", want)
	}
}

// tlsPublish publishes data and returns the reply; a failure is reported
// without the (large) data.
func tlsPublish(tc *testClient, channel, data string) map[string]any {
	tc.t.Helper()
	r, _ := tc.call(map[string]any{"op": "publish", "channel": channel, "data": data})
	if r["ok"] != true {
		tc.t.Fatalf("publish of %d bytes to %s: %v", len(data), channel, r["error"])
	}
	return r
}

// serverConnsTLS lists the engine's connections.
func serverConnsTLS(s *Server) []*Conn {
	var all []*Conn
	for i := range s.registry.shards {
		all = s.registry.shards[i].snapshot(all)
	}
	return all
}

func TestTLSPlaintextRequestGets400(t *testing.T) {
	e := startTLSServer(t, Config{})
	for _, req := range []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
		upgradeRequest("GET", "/ws"),
	} {
		nc, err := net.DialTimeout("tcp", e.s.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(nc, req); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(nc) // the answer, then EOF: not a reset
		nc.Close()
		if err != nil || !bytes.HasPrefix(got, []byte("HTTP/1.0 400 Bad Request\r\n")) ||
			!bytes.Contains(got, []byte("HTTP request to an HTTPS server")) {
			t.Fatalf("plaintext %q: %q, %v", req[:14], got, err)
		}
	}
	if n := e.s.tls.plaintextRefused.Load(); n != 2 {
		t.Fatalf("plaintext refusals counted %d, want 2", n)
	}
	resp, err := e.httpsClient().Get("https://" + e.s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

// TestTLSBadClientsLeaveNothingBehind: garbage instead of a handshake,
// clients that vanish in the middle of one, stall in it, vanish right after
// it or after their upgrade: each is closed, no goroutine and no
// descriptor stays behind, and the server keeps serving.
func TestTLSBadClientsLeaveNothingBehind(t *testing.T) {
	e := startTLSServer(t, Config{HandshakeTimeout: 1500 * time.Millisecond, CloseTimeout: 300 * time.Millisecond})
	addr := e.s.Addr().String()
	// Warm up: one of each successful path, so that lazily started
	// goroutines (gopool workers, pollers) are in the baseline.
	warm := e.dial(t)
	warm.mustOK(map[string]any{"op": "subscribe", "channel": "warm"})
	warm.c.Close()
	resp, err := e.httpsClient().Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	settled := func() error {
		if n := e.s.tls.liveConns(); n != 0 {
			return fmt.Errorf("%d TLS connections live", n)
		}
		if n := e.s.registry.len(); n != 0 {
			return fmt.Errorf("%d engine connections", n)
		}
		return nil
	}
	checkFor(t, 10*time.Second, 20*time.Millisecond, settled)
	time.Sleep(100 * time.Millisecond)
	baseFDs, baseG := tlsOpenFDs(), runtime.NumGoroutine()

	dial := func() net.Conn {
		nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		return nc
	}
	readsToEnd := func(nc net.Conn, what string) {
		t.Helper()
		start := time.Now()
		_, err := io.Copy(io.Discard, nc)
		if err != nil && !isReset(err) {
			t.Fatalf("%s: %v after %v, want the server to close", what, err, time.Since(start))
		}
	}
	garbage := make([]byte, 2048)
	_, _ = rand.Read(garbage)
	var wg sync.WaitGroup
	run := func(n int, f func(i int)) {
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f(i)
			}()
		}
	}
	run(10, func(int) { // garbage bytes
		nc := dial()
		defer nc.Close()
		_, _ = nc.Write(garbage)
		readsToEnd(nc, "garbage")
	})
	run(10, func(int) { // a handshake record header that claims more than comes
		nc := dial()
		defer nc.Close()
		_, _ = nc.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03})
		readsToEnd(nc, "stalled ClientHello")
	})
	run(10, func(int) { // a partial ClientHello, then gone
		nc := dial()
		_, _ = nc.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
		nc.Close()
	})
	// connect, close
	run(10, func(int) { dial().Close() })
	// connect, say nothing: HandshakeTimeout
	run(5, func(int) {
		nc := dial()
		defer nc.Close()
		readsToEnd(nc, "silent client")
	})
	run(10, func(i int) { // complete the handshake, then close or reset
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, e.clientConfig())
		if err != nil {
			t.Error(err)
			return
		}
		if i%2 == 1 {
			_ = c.NetConn().(*net.TCPConn).SetLinger(0)
			_ = c.NetConn().Close()
			return
		}
		c.Close()
	})
	run(10, func(i int) { // a partial request over TLS, then gone
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, e.clientConfig())
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: x\r\n")
		time.Sleep(20 * time.Millisecond)
		if i%2 == 1 {
			_ = c.NetConn().(*net.TCPConn).SetLinger(0)
		}
		_ = c.NetConn().Close()
	})
	run(10, func(i int) { // upgrade, then drop without a close frame
		d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, TLSClientConfig: e.clientConfig()}
		c, _, err := d.Dial(e.wssURL(), nil)
		if err != nil {
			t.Error(err)
			return
		}
		_, _, _ = c.ReadMessage()
		if i%2 == 1 {
			_ = c.NetConn().(*tls.Conn).NetConn().(*net.TCPConn).SetLinger(0)
		}
		_ = c.NetConn().Close()
	})
	run(5, func(int) { // a clean WebSocket close
		d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, TLSClientConfig: e.clientConfig()}
		c, _, err := d.Dial(e.wssURL(), nil)
		if err != nil {
			t.Error(err)
			return
		}
		_, _, _ = c.ReadMessage()
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, _, err := c.ReadMessage(); err != nil {
				break
			}
		}
		c.Close()
	})
	wg.Wait()
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if err := settled(); err != nil {
			return err
		}
		if n := tlsOpenFDs(); n > baseFDs {
			return fmt.Errorf("%d descriptors open, %d before", n, baseFDs)
		}
		if g := runtime.NumGoroutine(); g > baseG+2 {
			return fmt.Errorf("%d goroutines, %d before", g, baseG)
		}
		return nil
	})
	if n := e.s.tls.handshakeErrors.Load(); n < 40 {
		t.Fatalf("%d handshake errors counted, want at least 40", n)
	}
	// Unharmed: pub/sub still works.
	sub, pub := e.dial(t), e.dial(t)
	sub.mustOK(map[string]any{"op": "subscribe", "channel": "after"})
	pub.mustOK(map[string]any{"op": "publish", "channel": "after", "data": "still here"})
	if p := sub.nextPub(); p["data"] != "still here" {
		t.Fatalf("pub %v", p)
	}
}

// TestTLSStalledReaderIsDropped: a TLS client that stops reading fills its
// socket, the socketpair and then the engine's queue; the engine closes it
// and the front lets go within WriteTimeout, whatever the client does.
func TestTLSStalledReaderIsDropped(t *testing.T) {
	e := startTLSServer(t, Config{CommandRate: -1, PublishBytesPerSecond: -1, WriteQueueBytes: 64 << 10, WriteTimeout: 500 * time.Millisecond})
	stalled := e.dial(t)
	stalled.mustOK(map[string]any{"op": "subscribe", "channel": "flood"})
	live, pub := e.dial(t), e.dial(t)
	live.mustOK(map[string]any{"op": "subscribe", "channel": "flood"})
	data := strings.Repeat("x", 32<<10)
	sawEnd := make(chan struct{})
	go func() { // the live subscriber keeps reading
		for {
			_ = live.c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, b, err := live.c.ReadMessage()
			if err != nil {
				return
			}
			if bytes.Contains(b, []byte(`"data":"end"`)) {
				close(sawEnd)
				return
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for e.s.tls.liveConns() > 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled client is still held: %d TLS connections", e.s.tls.liveConns())
		}
		tlsPublish(pub, "flood", data)
	}
	tlsPublish(pub, "flood", "end")
	select {
	case <-sawEnd: // the one dropped was the stalled one
	case <-time.After(10 * time.Second):
		t.Fatal("the live subscriber did not get the last publication")
	}
	// The stalled client's socket was closed under it.
	_ = stalled.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := stalled.c.ReadMessage(); err != nil {
			break
		}
	}
}

func TestTLSReloadSwitchesCertificate(t *testing.T) {
	a, b := newTLSTestCert(t, "fanout-a"), newTLSTestCert(t, "fanout-b")
	e := startTLSServer(t, Config{}, a, b)
	if cn := e.servedCert(t); cn != "fanout-a" {
		t.Fatalf("served %q, want fanout-a", cn)
	}
	before := e.dial(t) // established with a; stays up across reloads
	before.mustOK(map[string]any{"op": "subscribe", "channel": "c"})

	b.write(t, e.certFile, e.keyFile)
	if err := e.s.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if cn := e.servedCert(t); cn != "fanout-b" {
		t.Fatalf("after reload served %q, want fanout-b", cn)
	}
	if !strings.Contains(e.logs.String(), "tls certificate reloaded") {
		t.Fatalf("no reload log line:\n%s", e.logs)
	}

	// Failed reloads keep the current certificate: a truncated key, a key
	// that is not the certificate's, a missing file.
	if err := os.WriteFile(e.keyFile, b.keyPEM[:40], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.s.ReloadTLS(); err == nil {
		t.Fatal("reload of a truncated key succeeded")
	}
	a.write(t, e.certFile, filepath.Join(t.TempDir(), "unused"))
	if err := os.WriteFile(e.keyFile, b.keyPEM, 0o600); err != nil { // a's certificate, b's key
		t.Fatal(err)
	}
	if err := e.s.ReloadTLS(); err == nil {
		t.Fatal("reload of a mismatched pair succeeded")
	}
	if err := os.Remove(e.certFile); err != nil {
		t.Fatal(err)
	}
	if err := e.s.ReloadTLS(); err == nil {
		t.Fatal("reload of a missing file succeeded")
	}
	if cn := e.servedCert(t); cn != "fanout-b" {
		t.Fatalf("after failed reloads served %q, want fanout-b", cn)
	}
	if n := strings.Count(e.logs.String(), "reload failed; keeping the previous certificate"); n != 3 {
		t.Fatalf("%d failure log lines, want 3:\n%s", n, e.logs)
	}

	after := e.dial(t)
	after.mustOK(map[string]any{"op": "publish", "channel": "c", "data": "x"})
	if p := before.nextPub(); p["data"] != "x" {
		t.Fatalf("pub %v", p)
	}

	plain := startServer(t, Config{})
	if err := plain.ReloadTLS(); err == nil {
		t.Fatal("ReloadTLS on a plain server succeeded")
	}
}

func TestTLSStartFailsWithoutUsableCertificate(t *testing.T) {
	dir := t.TempDir()
	c := newTLSTestCert(t, "x")
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	c.write(t, certFile, keyFile)
	other := newTLSTestCert(t, "y")
	otherKey := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(otherKey, other.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, cert, key string }{
		{"no key", certFile, ""},
		{"no cert", "", keyFile},
		{"missing file", filepath.Join(dir, "nope.pem"), keyFile},
		{"mismatched key", certFile, otherKey},
	} {
		s, err := New(Config{Addr: "127.0.0.1:0", TLSCertFile: tt.cert, TLSKeyFile: tt.key,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		err = s.Start()
		if err == nil {
			s.Close()
			t.Fatalf("%s: Start succeeded", tt.name)
		}
		if !strings.Contains(err.Error(), "tls") {
			t.Fatalf("%s: %v", tt.name, err)
		}
		s.Close()
	}
}

// TestTLSShutdownAndClose: Shutdown sends TLS clients 1012 like plain
// ones; Close drops the rest; the front holds nothing afterwards.
func TestTLSShutdownAndClose(t *testing.T) {
	e := startTLSServer(t, Config{})
	fds := tlsOpenFDs()
	cs := []*testClient{e.dial(t), e.dial(t)}
	errc := make(chan error, 1)
	go func() { errc <- e.s.Shutdown(t.Context()) }()
	for _, c := range cs {
		_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var ce *websocket.CloseError
		for {
			_, _, err := c.c.ReadMessage()
			if err == nil {
				continue
			}
			if !errors.As(err, &ce) || ce.Code != 1012 {
				t.Fatalf("client got %v, want 1012", err)
			}
			break
		}
		c.c.Close()
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := e.s.tls.liveConns(); n != 0 {
		t.Fatalf("%d TLS connections after Shutdown", n)
	}
	if _, err := net.DialTimeout("tcp", e.s.Addr().String(), time.Second); err == nil {
		t.Fatal("the port still accepts after Shutdown")
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		// The listener, the eventfd and every connection are closed.
		if n := tlsOpenFDs(); n > fds-2 {
			return fmt.Errorf("%d descriptors, %d with the server listening", n, fds)
		}
		return nil
	})

	// Close with connections open (and one mid-handshake).
	e2 := startTLSServer(t, Config{})
	_ = e2.dial(t)
	nc, err := net.Dial("tcp", e2.s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e2.s.tls.liveConns(); n != 2 {
			return fmt.Errorf("%d live", n)
		}
		return nil
	})
	start := time.Now()
	e2.s.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if n := e2.s.tls.liveConns(); n != 0 {
		t.Fatalf("%d TLS connections after Close", n)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bufio.NewReader(nc).ReadByte(); err == nil {
		t.Fatal("a connection in its handshake was not closed")
	}
}

// TestTLSFrontCapShedsAtAccept: past its cap (admission's accept cap by
// default) the front closes new clients at once, before any handshake, and
// serves again once below it.
func TestTLSFrontCapShedsAtAccept(t *testing.T) {
	e := startTLSServer(t, Config{})
	if e.s.tls.maxLive <= 0 {
		t.Fatalf("front cap %d, want admission's accept cap", e.s.tls.maxLive)
	}
	e.s.tls.mu.Lock()
	e.s.tls.maxLive = 3
	e.s.tls.mu.Unlock()
	var held []net.Conn
	for i := 0; i < 3; i++ { // silent: in their handshake
		nc, err := net.Dial("tcp", e.s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, nc)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.s.tls.liveConns(); n != 3 {
			return fmt.Errorf("%d live", n)
		}
		return nil
	})
	// Reset at once: the dial itself may already see it.
	if nc, err := net.Dial("tcp", e.s.Addr().String()); err == nil {
		_ = nc.SetReadDeadline(time.Now().Add(2 * time.Second)) // HandshakeTimeout is 5 s
		if _, err := nc.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a client past the cap: %v, want closed at once", err)
		}
		nc.Close()
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.s.tls.shed.Load(); n != 1 {
			return fmt.Errorf("shed %d, want 1", n)
		}
		return nil
	})
	if n := e.s.tls.shed.Load(); n != 1 {
		t.Fatalf("shed %d, want 1", n)
	}
	// Counted with every other refusal too.
	if n := e.s.adm.refused[causeAcceptShed].Load(); n != 1 {
		t.Fatalf("fanout_upgrades_refused_total{cause=\"accept_shed\"} %d, want 1", n)
	}
	for _, c := range held {
		c.Close()
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.s.tls.liveConns(); n != 0 {
			return fmt.Errorf("%d live", n)
		}
		return nil
	})
	resp, err := e.httpsClient().Get("https://" + e.s.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}
