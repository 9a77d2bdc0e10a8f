package engine

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The shipped proxy configurations (deploy/nginx.conf, deploy/haproxy.cfg)
// run in front of a real server: Debian's nginx and HAProxy, started by
// the test as foreground processes with the shipped file, templated only
// for ports, the upstream address and the certificate, and killed at the
// end.

// proxyProgram finds an installed proxy. Without it the test fails when
// FANOUT_REQUIRE_CLIENTS=1 (CI installs the package) and is skipped loudly
// otherwise.
func proxyProgram(t *testing.T, name, pkg string) string {
	t.Helper()
	for _, p := range []string{name, "/usr/sbin/" + name} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("FANOUT_REQUIRE_CLIENTS") == "1" {
		t.Fatalf("%s not installed (apt-get install %s) and FANOUT_REQUIRE_CLIENTS=1", name, pkg)
	}
	skipLoudly(t, fmt.Sprintf("%s not installed (apt-get install %s), so deploy/ was not tested with it; FANOUT_REQUIRE_CLIENTS=1 makes this a failure", name, pkg))
	return ""
}

// deployFile reads deploy/name and makes each replacement (old, new
// pairs), each of which must match exactly once: the test breaks loudly
// if the shipped file no longer has what it templates.
func deployFile(t *testing.T, name string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(repl); i += 2 {
		if n := strings.Count(s, repl[i]); n != 1 {
			t.Fatalf("deploy/%s: %q appears %d times, want once (the test templates it)", name, repl[i], n)
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	return s
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// proxyProcess is a proxy running in the foreground.
type proxyProcess struct {
	cmd  *exec.Cmd
	out  *tlsLogBuffer
	done chan struct{}
}

// startProxy runs argv and waits until addr accepts connections. The
// process (its whole group) is killed when the test ends.
func startProxy(t *testing.T, addr string, argv ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{cmd: exec.Command(argv[0], argv[1:]...), out: &tlsLogBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: %v", argv[0], err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
	checkFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v\n%s", argv[0], p.cmd.ProcessState, p.out)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
	return p
}

// proxyCert writes a self-signed certificate for localhost and 127.0.0.1
// into dir: cert.pem, key.pem and both in one (HAProxy's form).
func proxyCert(t *testing.T, dir string) (roots *x509.CertPool, certFile, keyFile, bundle string) {
	t.Helper()
	c := newTLSTestCert(t, "fanout-proxy-test")
	certFile, keyFile, bundle = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem")
	c.write(t, certFile, keyFile)
	if err := os.WriteFile(bundle, append(append([]byte{}, c.certPEM...), c.keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(c.leaf)
	return roots, certFile, keyFile, bundle
}

// checkThroughProxy is the end-to-end check of a proxy in front of s at
// https://127.0.0.1:port: n browsers (Origin https://localhost:port, as
// the proxy tells fanout through X-Forwarded-Host/-Proto) each make a
// plain HTTPS request and then open a WebSocket, so that the proxy sends
// upgrades on the upstream connections the plain requests left idle.
// Every upgrade must succeed, every WebSocket receive a publication made
// through the proxy's HTTP API route and one made over a WebSocket, and a
// foreign origin must still be refused. It returns how many upgrades
// fanout saw on kept-alive connections.
func checkThroughProxy(t *testing.T, s *Server, port int, roots *x509.CertPool, n int) float64 {
	t.Helper()
	host := "localhost:" + strconv.Itoa(port)
	base := "https://127.0.0.1:" + strconv.Itoa(port)
	tlsConf := &tls.Config{RootCAs: roots, ServerName: "localhost"}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer hc.CloseIdleConnections()
	get := func(path string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Host = host
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s through the proxy: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s through the proxy: %s", path, resp.Status)
		}
	}
	d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, HandshakeTimeout: 20 * time.Second, TLSClientConfig: tlsConf}
	dial := func(origin string) (*websocket.Conn, *http.Response, error) {
		h := http.Header{"Origin": {origin}, "Host": {host}}
		return d.Dial("wss://127.0.0.1:"+strconv.Itoa(port)+"/ws", h)
	}
	upgradesBefore := admMetric(t, s.Addr().String(), "fanout_upgrades_total")
	kaBefore := admMetric(t, s.Addr().String(), "fanout_keepalive_upgrades_total")
	clients := make([]*testClient, 0, n)
	for i := range n {
		get([]string{"/healthz", "/auth.json", "/readyz"}[i%3])
		c, resp, err := dial("https://" + host)
		if err != nil {
			status := ""
			if resp != nil {
				b, _ := io.ReadAll(resp.Body)
				status = resp.Status + " " + string(b)
			}
			t.Fatalf("upgrade %d of %d through the proxy: %v %s", i+1, n, err, status)
		}
		t.Cleanup(func() { c.Close() })
		tc := &testClient{t: t, c: c}
		if m := tc.read(); m["push"] != "connected" {
			t.Fatalf("connection %d: first message %v", i, m)
		}
		tc.mustOK(map[string]any{"op": "subscribe", "channel": "proxied"})
		clients = append(clients, tc)
	}
	// A foreign page is still refused through the proxy.
	if _, resp, err := dial("https://evil.example"); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign origin through the proxy: %v %+v, want 403", err, resp)
	}
	// A publication over the HTTP API (a plain request through the
	// proxy) and one over a WebSocket reach every subscriber.
	req, _ := http.NewRequest("POST", base+"/api/publish", strings.NewReader(`{"channel":"proxied","data":"api"}`))
	req.Host = host
	req.Header.Set("Authorization", "Bearer k")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("API publish through the proxy: %s %s", resp.Status, body)
	}
	// The publisher may get the API's publication before its reply.
	r, pushes := clients[0].call(map[string]any{"op": "publish", "channel": "proxied", "data": "ws"})
	if r["ok"] != true {
		t.Fatalf("publish over a WebSocket through the proxy: %v", r)
	}
	var early []string
	for _, m := range pushes {
		if m["push"] == "pub" {
			early = append(early, fmt.Sprint(m["data"]))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, tc := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got []string
			if i == 0 {
				got = early
			}
			for len(got) < 2 {
				_ = tc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
				var m map[string]any
				if err := tc.c.ReadJSON(&m); err != nil {
					errs <- fmt.Errorf("connection %d: %v after %v", i, err, got)
					return
				}
				if m["push"] == "pub" {
					got = append(got, fmt.Sprint(m["data"]))
				}
			}
			if got[0] != "api" || got[1] != "ws" {
				errs <- fmt.Errorf("connection %d: publications %v, want [api ws]", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	if got := admMetric(t, s.Addr().String(), "fanout_upgrades_total") - upgradesBefore; got != float64(n) {
		t.Fatalf("fanout counted %v upgrades, want %d", got, n)
	}
	return admMetric(t, s.Addr().String(), "fanout_keepalive_upgrades_total") - kaBefore
}

// TestNginxDeployConfig: Debian's nginx with deploy/nginx.conf (TLS
// termination, upstream keepalive) in front of fanout: 100% of the
// WebSocket upgrades succeed although nginx sends them on upstream
// connections kept alive from plain requests (every one of them failed
// with 400 before), and they exchange messages.
func TestNginxDeployConfig(t *testing.T) {
	nginx := proxyProgram(t, "nginx", "nginx")
	s := startServer(t, Config{TrustedProxies: []string{"127.0.0.1/32"}, APIKey: "k", CommandRate: -1})
	dir := t.TempDir()
	roots, certFile, keyFile, _ := proxyCert(t, dir)
	ports := freePorts(t, 2)
	site := deployFile(t, "nginx.conf",
		"listen 80;", "listen 127.0.0.1:"+strconv.Itoa(ports[0])+";",
		"listen 443 ssl;", "listen 127.0.0.1:"+strconv.Itoa(ports[1])+" ssl;",
		"server 127.0.0.1:8080;", "server "+s.Addr().String()+";",
		"/etc/ssl/fanout/fullchain.pem", certFile,
		"/etc/ssl/fanout/privkey.pem", keyFile,
	)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sitePath := write("fanout.conf", site)
	// One process (no master, no workers to outlive a kill), everything
	// it writes in dir.
	main := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 1024; }
http {
    access_log %[1]s/access.log;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[2]s;
}
`, dir, sitePath)
	conf := write("nginx.conf", main)
	startProxy(t, "127.0.0.1:"+strconv.Itoa(ports[1]), nginx, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf)
	logs := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return string(b)
	}
	defer func() {
		if t.Failed() {
			t.Logf("nginx error.log:\n%s", logs())
		}
	}()

	// The port-80 server redirects to https.
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get("http://127.0.0.1:" + strconv.Itoa(ports[0]) + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || !strings.HasPrefix(resp.Header.Get("Location"), "https://") {
		t.Fatalf("port 80: %s %q, want a redirect to https", resp.Status, resp.Header.Get("Location"))
	}

	const n = 50
	ka := checkThroughProxy(t, s, ports[1], roots, n)
	t.Logf("nginx: %d of %d upgrades arrived on kept-alive upstream connections", int(ka), n)
	// nginx takes an idle upstream connection for each upgrade after the
	// plain request before it left one; it must have done so nearly
	// always (the first may open a fresh one).
	if ka < n/2 {
		t.Fatalf("only %v of %d upgrades came on kept-alive upstream connections: the test no longer exercises them", ka, n)
	}
	if strings.Contains(logs(), "[error]") {
		t.Fatalf("nginx logged errors:\n%s", logs())
	}
}

// TestHAProxyDeployConfig: the same with Debian's HAProxy and
// deploy/haproxy.cfg (http-reuse always).
func TestHAProxyDeployConfig(t *testing.T) {
	haproxy := proxyProgram(t, "haproxy", "haproxy")
	s := startServer(t, Config{TrustedProxies: []string{"127.0.0.1/32"}, APIKey: "k", CommandRate: -1})
	dir := t.TempDir()
	roots, _, _, bundle := proxyCert(t, dir)
	ports := freePorts(t, 2)
	cfg := deployFile(t, "haproxy.cfg",
		"bind :80\n", "bind 127.0.0.1:"+strconv.Itoa(ports[0])+"\n",
		"bind :443 ssl crt /etc/haproxy/certs/fanout.pem", "bind 127.0.0.1:"+strconv.Itoa(ports[1])+" ssl crt "+bundle,
		"server fanout1 127.0.0.1:8080", "server fanout1 "+s.Addr().String(),
		// Enough for the test, within an unprivileged RLIMIT_NOFILE.
		"maxconn 100000\n", "maxconn 1000\n",
	)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, "127.0.0.1:"+strconv.Itoa(ports[1]), haproxy, "-db", "-f", path)
	defer func() {
		if t.Failed() {
			t.Logf("haproxy output:\n%s", p.out)
		}
	}()
	const n = 50
	ka := checkThroughProxy(t, s, ports[1], roots, n)
	t.Logf("haproxy: %d of %d upgrades arrived on kept-alive upstream connections", int(ka), n)
	if ka < n/2 {
		t.Fatalf("only %v of %d upgrades came on kept-alive upstream connections: the test no longer exercises them", ka, n)
	}
	if out := p.out.String(); strings.Contains(out, "ALERT") {
		t.Fatalf("haproxy alerts:\n%s", out)
	}
}
