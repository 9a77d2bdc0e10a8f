package web

import (
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

func do(t *testing.T, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, req)
	return rec
}

func TestHandlerServes(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		status   int
		ctype    string
		contains string
	}{
		{"index", "GET", "/", 200, "text/html; charset=utf-8", `<script src="client.js"`},
		{"index by name", "GET", "/index.html", 200, "text/html; charset=utf-8", `id="messages"`},
		{"script", "GET", "/client.js", 200, "text/javascript; charset=utf-8", "class FanoutClient"},
		{"stylesheet", "GET", "/style.css", 200, "text/css; charset=utf-8", "prefers-color-scheme"},
		{"unknown", "GET", "/nope", 404, "", ""},
		{"unknown js", "GET", "/other.js", 404, "", ""},
		{"embed source", "GET", "/embed.go", 404, "", ""},
		{"websocket path", "GET", "/ws", 404, "", ""},
		{"nested", "GET", "/client.js/x", 404, "", ""},
		{"post", "POST", "/", 405, "", ""},
		{"head", "HEAD", "/client.js", 200, "text/javascript; charset=utf-8", ""},
		// The end-to-end test driver in web/e2e is neither embedded nor served.
		{"e2e driver", "GET", "/e2e/driver.js", 404, "", ""},
		{"e2e package", "GET", "/e2e/package.json", 404, "", ""},
		{"e2e modules", "GET", "/e2e/node_modules/puppeteer-core/package.json", 404, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(t, tc.method, tc.path, nil)
			if rec.Code != tc.status {
				t.Fatalf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
			}
			if tc.status != 200 {
				return
			}
			h := rec.Header()
			if got := h.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if got := h.Get("Cache-Control"); got != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", got)
			}
			if etag := h.Get("ETag"); !regexp.MustCompile(`^"[0-9a-f]{32}"$`).MatchString(etag) {
				t.Errorf("ETag %q is not a quoted hash", etag)
			}
			if h.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("missing nosniff")
			}
			if tc.method == "HEAD" {
				if rec.Body.Len() != 0 {
					t.Errorf("HEAD returned a body")
				}
				return
			}
			if !strings.Contains(rec.Body.String(), tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
		})
	}
}

func TestETagRevalidation(t *testing.T) {
	for _, path := range []string{"/", "/client.js", "/style.css"} {
		first := do(t, "GET", path, nil)
		etag := first.Header().Get("ETag")
		if again := do(t, "GET", path, nil).Header().Get("ETag"); again != etag {
			t.Fatalf("%s: ETag changed between requests: %q then %q", path, etag, again)
		}
		tests := []struct {
			name        string
			ifNoneMatch string
			status      int
		}{
			{"match", etag, http.StatusNotModified},
			{"weak match", "W/" + etag, http.StatusNotModified},
			{"in list", `"deadbeef", ` + etag, http.StatusNotModified},
			{"star", "*", http.StatusNotModified},
			{"stale", `"0123456789abcdef0123456789abcdef"`, http.StatusOK},
		}
		for _, tc := range tests {
			t.Run(path+" "+tc.name, func(t *testing.T) {
				rec := do(t, "GET", path, map[string]string{"If-None-Match": tc.ifNoneMatch})
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d", rec.Code, tc.status)
				}
				if got := rec.Header().Get("ETag"); got != etag {
					t.Errorf("ETag %q, want %q", got, etag)
				}
				if rec.Header().Get("Cache-Control") != "no-cache" {
					t.Errorf("Cache-Control missing on %d", rec.Code)
				}
				if tc.status == http.StatusNotModified && rec.Body.Len() != 0 {
					t.Errorf("304 with a body of %d bytes", rec.Body.Len())
				}
				if tc.status == http.StatusOK && rec.Body.Len() == 0 {
					t.Errorf("200 with an empty body")
				}
			})
		}
	}
	if a, b := do(t, "GET", "/", nil).Header().Get("ETag"), do(t, "GET", "/client.js", nil).Header().Get("ETag"); a == b {
		t.Errorf("different files share ETag %q", a)
	}
}

func TestIndexSecurityHeaders(t *testing.T) {
	csp := do(t, "GET", "/", nil).Header().Get("Content-Security-Policy")
	for _, want := range []string{"script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	// The page may connect to its own origin only: no scheme-wide sources
	// (ws:, wss:, https:) and no other host.
	directives := map[string]string{}
	for _, d := range strings.Split(csp, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = strings.TrimSpace(value)
	}
	if got := directives["connect-src"]; got != "'self'" {
		t.Errorf("connect-src %q, want 'self' alone", got)
	}
}

// Only the three app files are embedded: nothing else in the directory (the
// e2e driver and its node_modules, Go sources) can be served.
func TestEmbedsOnlyTheApp(t *testing.T) {
	var names []string
	if err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, path)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names, " "); got != "client.js index.html style.css" {
		t.Fatalf("embedded files: %s", got)
	}
}

// The app must work offline and must never build HTML from strings.
func TestAssetsAreSelfContained(t *testing.T) {
	js := do(t, "GET", "/client.js", nil).Body.String()
	for _, banned := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(js, banned) {
			t.Errorf("client.js contains %q", banned)
		}
	}
	for _, path := range []string{"/", "/client.js", "/style.css"} {
		body := do(t, "GET", path, nil).Body.String()
		if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).FindString(body); m != "" {
			t.Errorf("%s references an external resource: %q", path, m)
		}
		if m := regexp.MustCompile(`(?i)@import|url\(\s*["']?https?:`).FindString(body); path == "/style.css" && m != "" {
			t.Errorf("%s imports an external resource: %q", path, m)
		}
	}
	// Every local script and stylesheet the page references is served.
	index := do(t, "GET", "/", nil).Body.String()
	refs := regexp.MustCompile(`(?:src|href)="([^"#:]+)"`).FindAllStringSubmatch(index, -1)
	if len(refs) < 2 {
		t.Fatalf("index.html references %d local files, want client.js and style.css", len(refs))
	}
	for _, m := range refs {
		if rec := do(t, "GET", "/"+strings.TrimPrefix(m[1], "./"), nil); rec.Code != 200 {
			t.Errorf("index.html references %q, which answers %d", m[1], rec.Code)
		}
	}
}

// The chromedp end-to-end test relies on these element ids.
func TestIndexHasTestIDs(t *testing.T) {
	index := do(t, "GET", "/", nil).Body.String()
	for _, id := range []string{"name", "room", "join", "join-error", "message", "send", "status", "status-text", "messages", "presence", "notice", "errors", "stats", "stats-connections", "stats-rate"} {
		if !strings.Contains(index, `id="`+id+`"`) {
			t.Errorf("index.html lacks id=%q", id)
		}
		if !strings.Contains(do(t, "GET", "/client.js", nil).Body.String(), "$('"+id+"')") {
			t.Errorf("client.js does not use #%s", id)
		}
	}
}

// The web package is a plain protocol client: it must not reach into the
// server's internals (engine, codec, hub or anything else in this module).
func TestImportsOnlyStandardLibrary(t *testing.T) {
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path := strings.Trim(imp.Path.Value, `"`)
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s; package web may use the standard library only", name, path)
			}
		}
	}
}
