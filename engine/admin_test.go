package engine

import (
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestAdminAddr: with AdminAddr, metrics and profiles leave the public port.
func TestAdminAddr(t *testing.T) {
	tests := []struct {
		name        string
		cfg         Config
		public      map[string]int
		admin       map[string]int
		postAPIAddr string // "public" or "admin": where POST /api/publish is served
	}{
		{"public only", Config{Pprof: true, APIKey: "k"},
			map[string]int{"/metrics": 200, "/debug/pprof/": 200, "/healthz": 200}, nil, "public"},
		{"admin port", Config{Pprof: true, APIKey: "k", AdminAddr: "127.0.0.1:0"},
			map[string]int{"/metrics": 404, "/debug/pprof/": 404, "/healthz": 200},
			map[string]int{"/metrics": 200, "/debug/pprof/": 200, "/healthz": 200, "/": 404}, "public"},
		{"admin port with API", Config{APIKey: "k", AdminAddr: "127.0.0.1:0", AdminAPI: true},
			map[string]int{"/metrics": 404, "/debug/pprof/": 404},
			map[string]int{"/metrics": 200, "/debug/pprof/": 404}, "admin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.cfg)
			for path, want := range tt.public {
				if got := get(t, "http://"+s.Addr().String()+path); got != want {
					t.Errorf("public %s: %d, want %d", path, got, want)
				}
			}
			for path, want := range tt.admin {
				if got := get(t, "http://"+s.AdminAddr().String()+path); got != want {
					t.Errorf("admin %s: %d, want %d", path, got, want)
				}
			}
			post := func(addr string) int {
				req, _ := http.NewRequest("POST", "http://"+addr+"/api/publish", strings.NewReader(`{"channel":"c","data":1}`))
				req.Header.Set("Authorization", "Bearer k")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			pub := post(s.Addr().String())
			if tt.postAPIAddr == "admin" {
				if pub == 200 {
					t.Errorf("API served on the public port")
				}
				if got := post(s.AdminAddr().String()); got != 200 {
					t.Errorf("API on admin port: %d", got)
				}
			} else if pub != 200 {
				t.Errorf("API on public port: %d", pub)
			}
		})
	}
}

// TestUpgradeElsewhereIs404: a WebSocket handshake for a path other than /ws
// gets 404, not the page at that path with 200 (RFC 6455 4.2.2).
func TestUpgradeElsewhereIs404(t *testing.T) {
	s := startServer(t, Config{})
	for _, path := range []string{"/", "/index.html", "/healthz", "/metrics", "/ws/"} {
		c := dialRaw(t, s)
		c.write([]byte(upgradeRequest("GET", path)))
		if resp := c.response(); resp.StatusCode != http.StatusNotFound {
			t.Errorf("upgrade at %s: %s, want 404", path, resp.Status)
		}
	}
	if got := get(t, "http://"+s.Addr().String()+"/healthz"); got != 200 {
		t.Fatalf("plain /healthz: %d", got)
	}
}
