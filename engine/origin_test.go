package engine

import (
	"errors"
	"strings"
	"testing"
)

// originRequest builds an upgrade request for Host host with extra header
// lines ("Origin: ..."); host "" keeps upgradeRequest's example.test.
func originRequest(host string, extra ...string) string {
	req := upgradeRequest("GET", "/ws", extra...)
	if host != "" {
		req = strings.Replace(req, "Host: example.test\r\n", "Host: "+host+"\r\n", 1)
	}
	return req
}

// TestOriginCheck is the origin matrix through the server: development
// mode (nothing configured: the request's own host, on localhost only),
// forwarded host and scheme from a trusted proxy and from an untrusted
// peer, configured origins (PublicURL, AllowedOrigins: the Host header
// plays no part), and "*".
func TestOriginCheck(t *testing.T) {
	type tc struct {
		name  string
		host  string
		lines []string
		want  int
	}
	rebinding := []string{"Origin: http://evil.example:9200"}
	tests := []struct {
		name  string
		cfg   Config
		cases []tc
	}{
		{"development", Config{}, []tc{
			{"no origin (not a browser)", "", nil, 101},
			{"no origin, any host", "evil.example:9200", nil, 101},
			{"same localhost origin", "localhost:9200", []string{"Origin: http://localhost:9200"}, 101},
			{"case", "localhost:9200", []string{"Origin: HTTP://LocalHost:9200"}, 101},
			{"https page", "localhost:9200", []string{"Origin: https://localhost:9200"}, 101},
			{"default port in origin", "localhost:80", []string{"Origin: http://localhost"}, 101},
			{"default port in host", "localhost", []string{"Origin: http://localhost:80"}, 101},
			{"https default port", "localhost", []string{"Origin: https://localhost"}, 101},
			{"127.0.0.1", "127.0.0.1:9200", []string{"Origin: http://127.0.0.1:9200"}, 101},
			{"[::1]", "[::1]:9200", []string{"Origin: http://[::1]:9200"}, 101},
			{"other port", "localhost:9200", []string{"Origin: http://localhost:9201"}, 403},
			{"other port by default", "localhost:8080", []string{"Origin: http://localhost"}, 403},
			{"https origin, http default port", "localhost", []string{"Origin: https://localhost:80"}, 403},
			{"ftp scheme", "127.0.0.1:9200", []string{"Origin: ftp://127.0.0.1:9200"}, 403},
			{"null", "localhost:9200", []string{"Origin: null"}, 403},
			{"empty", "localhost:9200", []string{"Origin: "}, 403},
			{"with a path", "localhost:9200", []string{"Origin: http://localhost:9200/x"}, 403},
			{"other host on localhost", "localhost:9200", []string{"Origin: http://127.0.0.1:9200"}, 403},
			{"DNS rebinding", "evil.example:9200", rebinding, 403},
			{"same host, not localhost", "example.test", []string{"Origin: http://example.test"}, 403},
			{"two Origin headers", "localhost:9200", []string{"Origin: http://localhost:9200", "Origin: http://localhost:9200"}, 400},
			{"forwarded host from an untrusted peer", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost:9200", "Origin: http://localhost:9200"}, 403},
		}},
		{"development behind a trusted proxy", Config{TrustedProxies: []string{"127.0.0.0/8"}}, []tc{
			{"forwarded host", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost:9200", "Origin: http://localhost:9200"}, 101},
			{"forwarded host and proto", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost:9200", "X-Forwarded-Proto: https", "Origin: https://localhost:9200"}, 101},
			{"forwarded proto mismatch", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost:9200", "X-Forwarded-Proto: https", "Origin: http://localhost:9200"}, 403},
			{"forwarded https default port", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost", "X-Forwarded-Proto: https", "Origin: https://localhost"}, 101},
			{"first of a forwarded list", "backend.internal:8080",
				[]string{"X-Forwarded-Host: localhost:9200, backend.internal", "Origin: http://localhost:9200"}, 101},
			{"forwarded rebinding", "backend.internal:8080",
				[]string{"X-Forwarded-Host: evil.example:9200", "Origin: http://evil.example:9200"}, 403},
			{"Host without a forwarded host", "localhost:9200", []string{"Origin: http://localhost:9200"}, 101},
		}},
		{"configured", Config{PublicURL: "https://chat.example.com/app/", AllowedOrigins: []string{" http://localhost:3000/ ", ""}}, []tc{
			{"no origin", "", nil, 101},
			{"public origin", "chat.example.com", []string{"Origin: https://chat.example.com"}, 101},
			{"public origin, any Host", "backend.internal:8080", []string{"Origin: https://chat.example.com"}, 101},
			{"case and explicit default port", "", []string{"Origin: HTTPS://Chat.Example.COM:443"}, 101},
			{"allowed origin", "", []string{"Origin: http://localhost:3000"}, 101},
			{"scheme mismatch", "chat.example.com", []string{"Origin: http://chat.example.com"}, 403},
			{"port mismatch", "chat.example.com", []string{"Origin: https://chat.example.com:8443"}, 403},
			{"wss is not a page's scheme", "", []string{"Origin: wss://chat.example.com"}, 403},
			{"subdomain", "", []string{"Origin: https://evil.chat.example.com"}, 403},
			{"suffix", "", []string{"Origin: https://chat.example.com.evil.example"}, 403},
			{"other site", "chat.example.com", []string{"Origin: https://evil.example"}, 403},
			{"DNS rebinding", "evil.example:9200", rebinding, 403},
			{"no Host fallback, even on localhost", "localhost:9200", []string{"Origin: http://localhost:9200"}, 403},
			{"null", "", []string{"Origin: null"}, 403},
			{"two Origin headers", "", []string{"Origin: https://chat.example.com", "Origin: https://evil.example"}, 400},
		}},
		{"any", Config{AllowedOrigins: []string{"*"}}, []tc{
			{"any origin", "", []string{"Origin: http://evil.example:9200"}, 101},
			{"null", "", []string{"Origin: null"}, 101},
			{"two Origin headers", "", []string{"Origin: http://a.example", "Origin: http://b.example"}, 400},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.cfg)
			base := takeBaseline(t, s)
			refused := 0
			for _, c := range tt.cases {
				t.Run(c.name, func(t *testing.T) {
					req := originRequest(c.host, c.lines...)
					if c.want == 101 {
						rc := dialRaw(t, s)
						rc.write([]byte(req))
						if resp := rc.response(); resp.StatusCode != 101 {
							t.Fatalf("status %s, want 101", resp.Status)
						}
						rc.nc.Close()
						return
					}
					refused++
					resp, body := refusal(t, s, req)
					if resp.StatusCode != c.want {
						t.Fatalf("status %s (%q), want %d", resp.Status, body, c.want)
					}
					if !strings.Contains(strings.ToLower(body), "origin") {
						t.Fatalf("body %q names no reason", body)
					}
					if tt.cfg.PublicURL == "" && len(tt.cfg.AllowedOrigins) == 0 && c.want == 403 && !strings.Contains(body, "--public-url") {
						t.Fatalf("development-mode refusal %q does not say how to configure", body)
					}
				})
			}
			if got := admMetric(t, s.Addr().String(), refusedMetric("origin")); got != float64(refused) {
				t.Fatalf("refused origin %v, want %d", got, refused)
			}
			base.checkNoGrowth(t)
		})
	}
}

// TestOriginConfig: what New accepts as PublicURL and AllowedOrigins.
func TestOriginConfig(t *testing.T) {
	tests := []struct {
		name      string
		publicURL string
		allowed   []string
		ok        bool
		dev       bool
	}{
		{"nothing: development", "", nil, true, true},
		{"blank entries: development", "", []string{" ", ""}, true, true},
		{"public URL", "https://chat.example.com", nil, true, false},
		{"public URL ws", "wss://chat.example.com:8443/ws", nil, true, false},
		{"public URL without scheme", "chat.example.com", nil, false, false},
		{"public URL with user", "https://u:p@chat.example.com", nil, false, false},
		{"origin without scheme", "", []string{"chat.example.com"}, false, false},
		{"origin with path", "", []string{"https://chat.example.com/x"}, false, false},
		{"origin bad port", "", []string{"https://chat.example.com:99999"}, false, false},
		{"any", "", []string{"*"}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := newOriginPolicy(tt.publicURL, tt.allowed)
			if (err == nil) != tt.ok {
				t.Fatalf("err %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrBadOrigin) {
					t.Fatalf("err %v is not ErrBadOrigin", err)
				}
				if _, nerr := New(Config{PublicURL: tt.publicURL, AllowedOrigins: tt.allowed, Logger: quietLogger()}); !errors.Is(nerr, ErrBadOrigin) {
					t.Fatalf("New: %v", nerr)
				}
				return
			}
			if p.dev != tt.dev {
				t.Fatalf("dev %v, want %v", p.dev, tt.dev)
			}
		})
	}
	p, _ := newOriginPolicy("wss://chat.example.com", nil)
	if !p.allows([]byte("https://chat.example.com"), nil, nil) {
		t.Fatal("wss public URL does not allow its https page")
	}
}

// TestParseOrigin: scheme://host[:port], nothing else.
func TestParseOrigin(t *testing.T) {
	tests := []struct {
		in           string
		scheme, host string
		port         int
		ok           bool
	}{
		{"http://a.example", "http", "a.example", 80, true},
		{"https://a.example", "https", "a.example", 443, true},
		{"https://a.example:8443", "https", "a.example", 8443, true},
		{"chrome-extension://abcdef", "chrome-extension", "abcdef", 0, true},
		{"http://[::1]:9", "http", "[::1]", 9, true},
		{"http://[::1]", "http", "[::1]", 80, true},
		{"null", "", "", 0, false},
		{"", "", "", 0, false},
		{"http://", "", "", 0, false},
		{"://a.example", "", "", 0, false},
		{"1http://a.example", "", "", 0, false},
		{"http://a.example:", "", "", 0, false},
		{"http://a.example:0", "", "", 0, false},
		{"http://a.example:65536", "", "", 0, false},
		{"http://a.example:8x", "", "", 0, false},
		{"http://a.example/", "", "", 0, false},
		{"http://u@a.example", "", "", 0, false},
		{"http://a example", "", "", 0, false},
		{"http://[::1", "", "", 0, false},
		{"http://[::1]x", "", "", 0, false},
	}
	for _, tt := range tests {
		scheme, host, port, ok := parseOrigin([]byte(tt.in))
		if ok != tt.ok || ok && (string(scheme) != tt.scheme || string(host) != tt.host || port != tt.port) {
			t.Errorf("%q: %q %q %d %v, want %q %q %d %v", tt.in, scheme, host, port, ok, tt.scheme, tt.host, tt.port, tt.ok)
		}
	}
}
