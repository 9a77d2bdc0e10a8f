package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"time"
)

//go:embed index.html client.js style.css
var files embed.FS

// contentSecurityPolicy is sent with the HTML page. The app loads nothing
// but its own script and stylesheet and only talks to its own origin: /ws,
// auth.json, api/stats and the token endpoint. connect-src is 'self' alone:
// in CSP level 3 'self' also matches ws: and wss: URLs of the page's own
// host and port (Chromium and Firefox both; engine/browser_e2e_test.go
// checks that the app connects and that another origin is refused), so a
// script injected into the page could not send anything elsewhere.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; " +
	"form-action 'none'; frame-ancestors 'none'"

type asset struct {
	body  []byte
	ctype string
	etag  string
	html  bool
}

// assets maps request paths to the embedded files; it is built once at init
// and never written afterwards, so concurrent reads need no locking.
var assets = mustLoad()

func mustLoad() map[string]*asset {
	load := func(name, ctype string) *asset {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			panic("web: embedded file missing: " + name)
		}
		sum := sha256.Sum256(b)
		return &asset{
			body:  b,
			ctype: ctype,
			etag:  `"` + hex.EncodeToString(sum[:16]) + `"`,
			html:  ctype == "text/html; charset=utf-8",
		}
	}
	index := load("index.html", "text/html; charset=utf-8")
	return map[string]*asset{
		"/":           index,
		"/index.html": index,
		"/client.js":  load("client.js", "text/javascript; charset=utf-8"),
		"/style.css":  load("style.css", "text/css; charset=utf-8"),
	}
}

// Handler serves the embedded browser app: "/" (and "/index.html") is the
// page, "/client.js" and "/style.css" its script and stylesheet. Every other
// path answers 404, methods other than GET and HEAD answer 405. Responses
// carry Cache-Control: no-cache and a strong ETag (hash of the content,
// computed once); a matching If-None-Match answers 304 Not Modified.
//
// Mount it at the root of the mux, or under a prefix with http.StripPrefix;
// the page refers to its files by relative URLs.
func Handler() http.Handler {
	return http.HandlerFunc(serve)
}

func serve(w http.ResponseWriter, r *http.Request) {
	a, ok := assets[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	if a.html {
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("Referrer-Policy", "no-referrer")
	}
	// ServeContent implements If-None-Match (weak comparison, lists, "*"),
	// If-Match, HEAD and Range against the ETag set above. A zero modtime
	// means no Last-Modified and no If-Modified-Since handling.
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
