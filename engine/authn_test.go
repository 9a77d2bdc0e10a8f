package engine

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine/auth"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// Authentication through the real server (authn.go, docs/PROTOCOL.md
// "Authentication").

const (
	testSecret = "test-secret-0123456789"
	// testOrigin is the allowed browser origin of the auth tests' servers.
	testOrigin = "https://app.example"
)

// testKeys are the asymmetric keys of the auth tests, made once: RSA key
// generation takes a while on a busy machine.
var testKeys = sync.OnceValue(func() (k struct {
	rsa    *rsa.PrivateKey
	ec     *ecdsa.PrivateKey
	ecJWKS *ecdsa.PrivateKey // published in the JWKS file under kid "k2"
}) {
	var err error
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		panic(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	if k.ecJWKS, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		panic(err)
	}
	return k
})

// writeKeyFiles writes the public test keys: a PEM file with the RSA and
// EC keys, and a JWKS file with the other EC key under kid "k2".
func writeKeyFiles(t testing.TB) (pemFile, jwksFile string) {
	t.Helper()
	k := testKeys()
	var pemBytes []byte
	for _, pub := range []any{&k.rsa.PublicKey, &k.ec.PublicKey} {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		pemBytes = append(pemBytes, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	dir := t.TempDir()
	pemFile = filepath.Join(dir, "keys.pem")
	if err := os.WriteFile(pemFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	b64 := func(n *big.Int) string { return base64.RawURLEncoding.EncodeToString(n.FillBytes(make([]byte, 32))) }
	jwks, _ := json.Marshal(map[string]any{"keys": []any{map[string]string{
		"kty": "EC", "kid": "k2", "crv": "P-256", "use": "sig", "x": b64(k.ecJWKS.X), "y": b64(k.ecJWKS.Y),
	}}})
	jwksFile = filepath.Join(dir, "keys.jwks")
	if err := os.WriteFile(jwksFile, jwks, 0o600); err != nil {
		t.Fatal(err)
	}
	return pemFile, jwksFile
}

// tokenSpec describes a test token.
type tokenSpec struct {
	alg      string // HS256 (default), RS256, ES256, ES256-JWKS
	sub      string
	name     string
	channels []string
	publish  []string
	ttl      time.Duration // default 1h; negative: expired
	secret   string        // HS256 secret, default testSecret
}

// mint signs a token described by spec.
func mint(t testing.TB, spec tokenSpec) string {
	t.Helper()
	if spec.ttl == 0 {
		spec.ttl = time.Hour
	}
	now := time.Now()
	claims := jwt.MapClaims{"sub": spec.sub, "iat": now.Unix(), "exp": now.Add(spec.ttl).Unix()}
	if spec.ttl < 0 {
		claims["iat"] = now.Add(2 * spec.ttl).Unix()
	}
	if spec.channels != nil {
		claims["channels"] = spec.channels
	}
	if spec.publish != nil {
		claims["publish"] = spec.publish
	}
	if spec.name != "" {
		claims["info"] = map[string]string{"name": spec.name}
	}
	var (
		method jwt.SigningMethod
		key    any
		kid    string
	)
	switch spec.alg {
	case "", "HS256":
		method, key = jwt.SigningMethodHS256, []byte(testSecret)
		if spec.secret != "" {
			key = []byte(spec.secret)
		}
	case "RS256":
		method, key = jwt.SigningMethodRS256, testKeys().rsa
	case "ES256":
		method, key = jwt.SigningMethodES256, testKeys().ec
	case "ES256-JWKS":
		method, key, kid = jwt.SigningMethodES256, testKeys().ecJWKS, "k2"
	default:
		t.Fatalf("unknown alg %q", spec.alg)
	}
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// authConfig is a server configuration with every kind of token key.
func authConfig(t testing.TB) Config {
	t.Helper()
	pemFile, jwksFile := writeKeyFiles(t)
	return Config{
		TokenSecret:        testSecret,
		TokenPublicKeyFile: pemFile,
		TokenJWKSFile:      jwksFile,
		AllowedOrigins:     []string{testOrigin},
	}
}

// dialOpts is how dialAuth connects.
type dialOpts struct {
	header  string // Authorization: Bearer token
	query   string // ?token=
	origin  bool   // send Origin: testOrigin (a browser)
	msgpack bool
}

// dialAuth upgrades with opts. On a refused upgrade it returns the
// response (status, headers, body read into body) and no client.
func dialAuth(t testing.TB, s *Server, o dialOpts) (*testClient, *http.Response, string) {
	t.Helper()
	proto := "fanout.v1.json"
	if o.msgpack {
		proto = "fanout.v1.msgpack"
	}
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 10 * time.Second}
	h := http.Header{}
	if o.header != "" {
		h.Set("Authorization", "Bearer "+o.header)
	}
	if o.origin {
		h.Set("Origin", testOrigin)
	}
	u := wsURL(s)
	if o.query != "" {
		u += "?token=" + url.QueryEscape(o.query)
	}
	c, resp, err := d.Dial(u, h)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp, string(b)
	}
	t.Cleanup(func() { c.Close() })
	return &testClient{t: t, c: c, msgpack: o.msgpack}, resp, ""
}

// mustDialAuth upgrades with opts and reads the connected push, unless the
// connection is pending (a browser without a token).
func mustDialAuth(t testing.TB, s *Server, o dialOpts) (*testClient, map[string]any) {
	t.Helper()
	tc, resp, body := dialAuth(t, s, o)
	if tc == nil {
		t.Fatalf("upgrade refused: %s %s", resp.Status, body)
	}
	if o.origin && o.header == "" && o.query == "" {
		return tc, nil
	}
	m := tc.read()
	if m["push"] != "connected" {
		t.Fatalf("first message %v", m)
	}
	tc.client, _ = m["client"].(string)
	return tc, m
}

// errorCode returns the error code of a reply ("" for none).
func errorCode(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// expectError calls cmd and checks that the reply is an error of code.
func (tc *testClient) expectError(cmd map[string]any, code string) map[string]any {
	tc.t.Helper()
	r, _ := tc.call(cmd)
	if errorCode(r) != code {
		tc.t.Fatalf("%v: reply %v, want error %s", cmd, r, code)
	}
	return r
}

// nextPush reads until a push of kind from client (info.client) and
// returns it.
func (tc *testClient) nextPush(kind, client string) map[string]any {
	tc.t.Helper()
	for {
		m := tc.read()
		if info, _ := m["info"].(map[string]any); m["push"] == kind && info["client"] == client {
			return m
		}
	}
}

// expectCloseWS reads until the server's close and checks code and reason.
func (tc *testClient) expectCloseWS(code int, reason string) []map[string]any {
	tc.t.Helper()
	var before []map[string]any
	for {
		_ = tc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, b, err := tc.c.ReadMessage()
		if err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok || ce.Code != code || ce.Text != reason {
				tc.t.Fatalf("closed with %v, want %d %q", err, code, reason)
			}
			return before
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		before = append(before, m)
	}
}

// TestAuthUpgradeAccepted: HS256, RS256 and ES256 tokens (the last from
// the PEM file and by kid from the JWKS file) are accepted at the upgrade,
// in the Authorization header and in the token query parameter; the
// connection is the token's sub, with its display name, in both encodings.
func TestAuthUpgradeAccepted(t *testing.T) {
	s := startServer(t, authConfig(t))
	for _, alg := range []string{"HS256", "RS256", "ES256", "ES256-JWKS"} {
		for _, where := range []string{"header", "query"} {
			for _, useMsgpack := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/msgpack=%v", alg, where, useMsgpack), func(t *testing.T) {
					tok := mint(t, tokenSpec{alg: alg, sub: "alice", name: "Alice A.", channels: []string{"*"}})
					o := dialOpts{msgpack: useMsgpack}
					if where == "header" {
						o.header = tok
					} else {
						o.query = tok
					}
					tc, m := mustDialAuth(t, s, o)
					if m["user"] != "alice" || m["name"] != "Alice A." {
						t.Fatalf("connected push %v, want user alice, name Alice A.", m)
					}
					tc.mustOK(map[string]any{"op": "subscribe", "channel": "any:thing"})
				})
			}
		}
	}
}

// TestAuthUpgradeRefused: a bad, expired or missing token gets 401 before
// the upgrade, with WWW-Authenticate: Bearer and a readable reason; the
// server serves a good client afterwards.
func TestAuthUpgradeRefused(t *testing.T) {
	s := startServer(t, authConfig(t))
	good := mint(t, tokenSpec{sub: "alice"})
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(otherKey)
	noExp, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice"}).SignedString([]byte(testSecret))
	noSub, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}).SignedString([]byte(testSecret))
	noneAlg, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	tests := []struct {
		name   string
		opts   dialOpts
		reason string // substring of the body
	}{
		{"missing token, not a browser", dialOpts{}, "token required"},
		{"expired header", dialOpts{header: mint(t, tokenSpec{sub: "alice", ttl: -time.Minute})}, "token expired"},
		{"expired query", dialOpts{query: mint(t, tokenSpec{sub: "alice", ttl: -time.Minute})}, "token expired"},
		{"wrong secret", dialOpts{header: mint(t, tokenSpec{sub: "alice", secret: "other"})}, "invalid token"},
		{"tampered", dialOpts{header: good[:len(good)-2] + "xx"}, "invalid token"},
		{"garbage", dialOpts{query: "not-a-jwt"}, "invalid token"},
		{"unknown EC key", dialOpts{header: forged}, "invalid token"},
		{"no exp", dialOpts{header: noExp}, "invalid token"},
		{"no sub", dialOpts{header: noSub}, "invalid token"},
		{"alg none", dialOpts{header: noneAlg}, "invalid token"},
		{"too long", dialOpts{header: strings.Repeat("a", maxTokenBytes+1)}, "longer than"},
		{"bad token from a browser", dialOpts{query: "x.y.z", origin: true}, "invalid token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, resp, body := dialAuth(t, s, tt.opts)
			if tc != nil {
				t.Fatal("upgraded")
			}
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status %s (%s), want 401", resp.Status, body)
			}
			if h := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Bearer ") {
				t.Fatalf("WWW-Authenticate %q", h)
			}
			if !strings.Contains(body, tt.reason) {
				t.Fatalf("body %q, want it to say %q", body, tt.reason)
			}
		})
	}
	if _, m := mustDialAuth(t, s, dialOpts{header: good}); m["user"] != "alice" {
		t.Fatalf("after the refusals: %v", m)
	}
}

// TestAuthConnectFlow: a browser (Origin) without a token is upgraded but
// served nothing but connect: other ops are unauthorized, a bad token is
// refused (the connection may try again), and a good one answers with the
// identity and then the connected push.
func TestAuthConnectFlow(t *testing.T) {
	s := startServer(t, authConfig(t))
	for _, useMsgpack := range []bool{false, true} {
		t.Run(fmt.Sprintf("msgpack=%v", useMsgpack), func(t *testing.T) {
			tc, _ := mustDialAuth(t, s, dialOpts{origin: true, msgpack: useMsgpack})
			tc.expectError(map[string]any{"op": "ping"}, "unauthorized")
			tc.expectError(map[string]any{"op": "subscribe", "channel": "chat:1"}, "unauthorized")
			tc.expectError(map[string]any{"op": "publish", "channel": "chat:1", "data": 1}, "unauthorized")
			tc.expectError(map[string]any{"op": "history", "channel": "chat:1"}, "unauthorized")
			tc.expectError(map[string]any{"op": "refresh", "token": "x"}, "unauthorized")
			tc.expectError(map[string]any{"op": "connect"}, "unauthorized") // anonymous not allowed
			tc.expectError(map[string]any{"op": "connect", "token": "x.y.z"}, "unauthorized")
			r := tc.expectError(map[string]any{"op": "connect", "token": mint(t, tokenSpec{sub: "bob", ttl: -time.Minute})}, "unauthorized")
			if e := r["error"].(map[string]any); e["message"] != "token expired" {
				t.Fatalf("expired connect: %v", r)
			}
			r, pushes := tc.call(map[string]any{"op": "connect", "token": mint(t, tokenSpec{sub: "bob", name: "Bob", channels: []string{"chat:*"}})})
			if len(pushes) != 0 {
				t.Fatalf("pushes before the connect reply: %v", pushes)
			}
			if r["ok"] != true || r["user"] != "bob" || r["name"] != "Bob" || r["client"] == "" {
				t.Fatalf("connect reply %v", r)
			}
			m := tc.read()
			if m["push"] != "connected" || m["user"] != "bob" || m["name"] != "Bob" || m["client"] != r["client"] {
				t.Fatalf("after connect: %v", m)
			}
			tc.mustOK(map[string]any{"op": "subscribe", "channel": "chat:1"})
			tc.expectError(map[string]any{"op": "connect", "token": mint(t, tokenSpec{sub: "bob"})}, "bad_request")
		})
	}
}

// TestAuthConnectTimeout: a browser that does not connect within the
// handshake timeout is closed 1008 "authentication required"; one that
// connected in time is not.
func TestAuthConnectTimeout(t *testing.T) {
	cfg := authConfig(t)
	cfg.HandshakeTimeout = time.Second
	s := startServer(t, cfg)
	tok := mint(t, tokenSpec{sub: "carol"})
	connected, _ := mustDialAuth(t, s, dialOpts{origin: true})
	connected.mustOK(map[string]any{"op": "connect", "token": tok})
	silent, _ := mustDialAuth(t, s, dialOpts{origin: true})
	if got := silent.expectCloseWS(1008, "authentication required"); len(got) != 0 {
		t.Fatalf("a pending connection got %v", got)
	}
	// The one that connected outlives the deadline.
	connected.read() // connected push
	time.Sleep(2 * cfg.HandshakeTimeout)
	connected.mustOK(map[string]any{"op": "ping"})
}

// TestAuthForbidden: channels globs gate subscribe, history and presence;
// publish globs gate publish.
func TestAuthForbidden(t *testing.T) {
	s := startServer(t, authConfig(t))
	tok := mint(t, tokenSpec{sub: "alice", channels: []string{"chat:*", "private:alice"}, publish: []string{"chat:general"}})
	for _, useMsgpack := range []bool{false, true} {
		tc, _ := mustDialAuth(t, s, dialOpts{header: tok, msgpack: useMsgpack})
		tests := []struct {
			cmd  map[string]any
			code string // "" for ok
		}{
			{map[string]any{"op": "subscribe", "channel": "private:bob"}, "forbidden"},
			{map[string]any{"op": "history", "channel": "private:bob"}, "forbidden"},
			{map[string]any{"op": "presence", "channel": "private:bob"}, "forbidden"},
			{map[string]any{"op": "publish", "channel": "private:bob", "data": "x"}, "forbidden"},
			{map[string]any{"op": "publish", "channel": "chat:random", "data": "x"}, "forbidden"},
			{map[string]any{"op": "publish", "channel": "private:alice", "data": "x"}, "forbidden"},
			{map[string]any{"op": "subscribe", "channel": "chat:random"}, ""},
			{map[string]any{"op": "subscribe", "channel": "private:alice"}, ""},
			{map[string]any{"op": "history", "channel": "chat:general"}, ""},
			{map[string]any{"op": "presence", "channel": "chat:general"}, ""},
			{map[string]any{"op": "publish", "channel": "chat:general", "data": "x"}, ""},
		}
		for _, tt := range tests {
			r, _ := tc.call(tt.cmd)
			if tt.code == "" && r["ok"] != true || tt.code != "" && errorCode(r) != tt.code {
				t.Fatalf("msgpack=%v %v: %v, want %q", useMsgpack, tt.cmd, r, tt.code)
			}
			if tt.code == "forbidden" {
				msg, _ := r["error"].(map[string]any)["message"].(string)
				if !strings.Contains(msg, tt.cmd["channel"].(string)) {
					t.Fatalf("forbidden message %q does not name the channel", msg)
				}
			}
		}
	}
}

// TestAuthNoSpoofing: the info others see is the server's: user is the
// token's sub and name its info.name, whatever the client puts in its
// commands; anonymous names are carried with an empty user (unverified).
func TestAuthNoSpoofing(t *testing.T) {
	cfg := authConfig(t)
	cfg.AllowAnonymous = true
	cfg.AnonymousChannels = []string{"room:*"}
	cfg.AnonymousPublish = []string{"room:*"}
	s := startServer(t, cfg)
	all := []string{"room:*"}
	alice, _ := mustDialAuth(t, s, dialOpts{header: mint(t, tokenSpec{sub: "alice", name: "Alice", channels: all, publish: all})})
	bob, _ := mustDialAuth(t, s, dialOpts{header: mint(t, tokenSpec{sub: "bob", channels: all, publish: all})})
	anon, _ := mustDialAuth(t, s, dialOpts{})
	bob.mustOK(map[string]any{"op": "subscribe", "channel": "room:1", "presence": true})
	// Alice claims to be someone else every way a client could try.
	alice.mustOK(map[string]any{"op": "subscribe", "channel": "room:1", "name": "Mallory", "user": "mallory",
		"info": map[string]any{"user": "mallory", "name": "Mallory"}})
	join := bob.nextPush("join", alice.client)
	if info := join["info"].(map[string]any); info["user"] != "alice" || info["name"] != "Alice" {
		t.Fatalf("join %v", join)
	}
	alice.mustOK(map[string]any{"op": "publish", "channel": "room:1", "data": map[string]any{"user": "mallory"},
		"user": "mallory", "client": "x", "info": map[string]any{"user": "mallory", "client": "x"}})
	pub := bob.nextPub()
	if info := pub["info"].(map[string]any); info["user"] != "alice" || info["name"] != "Alice" || info["client"] != alice.client {
		t.Fatalf("pub info %v, want alice's", info)
	}
	// An anonymous connection names itself: carried, with no user.
	anon.mustOK(map[string]any{"op": "subscribe", "channel": "room:1", "name": "Alice"})
	join = bob.nextPush("join", anon.client)
	if info := join["info"].(map[string]any); info["user"] != "" || info["name"] != "Alice" {
		t.Fatalf("anonymous join %v", join)
	}
	anon.mustOK(map[string]any{"op": "publish", "channel": "room:1", "data": 1})
	if info := bob.nextPub()["info"].(map[string]any); info["user"] != "" || info["name"] != "Alice" {
		t.Fatalf("anonymous pub info %v", info)
	}
	r := bob.mustOK(map[string]any{"op": "presence", "channel": "room:1"})
	users := map[string]string{}
	for _, c := range r["clients"].([]any) {
		c := c.(map[string]any)
		name, _ := c["name"].(string)
		users[c["client"].(string)] = c["user"].(string) + "/" + name
	}
	if users[alice.client] != "alice/Alice" || users[anon.client] != "/Alice" || users[bob.client] != "bob/" {
		t.Fatalf("presence %v", users)
	}
	// A name changes only while the connection has no subscription.
	anon.expectError(map[string]any{"op": "subscribe", "channel": "room:2", "name": "Eve"}, "bad_request")
	anon.expectError(map[string]any{"op": "subscribe", "channel": "room:3", "name": "bad\nname"}, "bad_request")
}

// TestAuthRefresh: a connection gets the refresh push before its token
// expires; a refresh with a new token of the same user keeps it open past
// the first token's exp. A token of another user, or a bad one, is
// refused and changes nothing.
func TestAuthRefresh(t *testing.T) {
	s := startServer(t, authConfig(t))
	const ttl = 4 * time.Second // the push comes a tenth of it before exp
	tc, _ := mustDialAuth(t, s, dialOpts{header: mint(t, tokenSpec{sub: "dave", ttl: ttl, channels: []string{"a"}})})
	exp := time.Now().Add(ttl)
	tc.expectError(map[string]any{"op": "subscribe", "channel": "b"}, "forbidden")
	tc.expectError(map[string]any{"op": "refresh", "token": mint(t, tokenSpec{sub: "eve", channels: []string{"*"}})}, "forbidden")
	tc.expectError(map[string]any{"op": "refresh", "token": "x.y.z"}, "unauthorized")
	tc.expectError(map[string]any{"op": "refresh"}, "bad_request")
	fresh := mint(t, tokenSpec{sub: "dave", name: "Dave", channels: []string{"b"}})
	if m := tc.read(); m["push"] != "refresh" {
		t.Fatalf("want the refresh push, got %v", m)
	}
	tc.mustOK(map[string]any{"op": "refresh", "token": fresh})
	// The new token's permissions apply.
	tc.mustOK(map[string]any{"op": "subscribe", "channel": "b"})
	tc.expectError(map[string]any{"op": "subscribe", "channel": "a"}, "forbidden")
	// Past the first token's expiry (whole seconds: up to a second before
	// exp as computed here, plus the sweeper's tick), the connection is
	// still served, and gets no second refresh push.
	time.Sleep(time.Until(exp.Add(1500 * time.Millisecond)))
	if r, pushes := tc.call(map[string]any{"op": "ping"}); r["ok"] != true || len(pushes) != 0 {
		t.Fatalf("after the first token's exp: %v %v", r, pushes)
	}
}

// TestAuthExpiry: without a refresh, the refresh push comes, then close
// 1008 "token expired".
func TestAuthExpiry(t *testing.T) {
	s := startServer(t, authConfig(t))
	for _, useMsgpack := range []bool{false, true} {
		tc, _ := mustDialAuth(t, s, dialOpts{query: mint(t, tokenSpec{sub: "frank", ttl: 2 * time.Second}), msgpack: useMsgpack})
		if useMsgpack {
			if m := tc.read(); m["push"] != "refresh" {
				t.Fatalf("want the refresh push, got %v", m)
			}
			for {
				if _, _, err := tc.c.ReadMessage(); err != nil {
					if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 1008 || ce.Text != "token expired" {
						t.Fatalf("closed with %v", err)
					}
					break
				}
			}
			continue
		}
		got := tc.expectCloseWS(1008, "token expired")
		if len(got) != 1 || got[0]["push"] != "refresh" {
			t.Fatalf("before the close: %v, want one refresh push", got)
		}
	}
}

// TestAuthAnonymous: with AllowAnonymous, a client without a token is
// anonymous, limited to the anonymous globs; a browser connects with only
// a name. Without AllowAnonymous the anonymous globs are not reachable.
func TestAuthAnonymous(t *testing.T) {
	cfg := authConfig(t)
	cfg.AllowAnonymous = true
	cfg.AnonymousChannels = []string{"public:*"}
	cfg.AnonymousPublish = []string{"public:chat"}
	s := startServer(t, cfg)
	tc, m := mustDialAuth(t, s, dialOpts{})
	if m["user"] != "" {
		t.Fatalf("anonymous connected push %v", m)
	}
	tc.mustOK(map[string]any{"op": "subscribe", "channel": "public:news"})
	tc.expectError(map[string]any{"op": "subscribe", "channel": "chat:1"}, "forbidden")
	tc.expectError(map[string]any{"op": "history", "channel": "private:alice"}, "forbidden")
	tc.expectError(map[string]any{"op": "publish", "channel": "public:news", "data": 1}, "forbidden")
	tc.mustOK(map[string]any{"op": "publish", "channel": "public:chat", "data": 1})
	tc.expectError(map[string]any{"op": "refresh", "token": mint(t, tokenSpec{sub: "x"})}, "bad_request")

	browser, _ := mustDialAuth(t, s, dialOpts{origin: true})
	r, _ := browser.call(map[string]any{"op": "connect", "name": "Ada"})
	if r["ok"] != true || r["user"] != "" || r["name"] != "Ada" {
		t.Fatalf("anonymous connect %v", r)
	}
	if m := browser.read(); m["push"] != "connected" || m["name"] != "Ada" {
		t.Fatalf("connected push %v", m)
	}
	browser.expectError(map[string]any{"op": "subscribe", "channel": "chat:1"}, "forbidden")

	// A browser may still authenticate with a token.
	user, _ := mustDialAuth(t, s, dialOpts{origin: true})
	if r, _ := user.call(map[string]any{"op": "connect", "token": mint(t, tokenSpec{sub: "gina", channels: []string{"chat:*"}})}); r["user"] != "gina" {
		t.Fatalf("connect %v", r)
	}
	user.read()
	user.mustOK(map[string]any{"op": "subscribe", "channel": "chat:1"})

	strict := startServer(t, authConfig(t))
	if tc, resp, _ := dialAuth(t, strict, dialOpts{}); tc != nil || resp.StatusCode != 401 {
		t.Fatalf("anonymous without AllowAnonymous: %v", resp.Status)
	}
}

// TestAuthOpenServer: without token keys everyone is anonymous with every
// channel open (the existing tests' setting); connect and refresh have
// nothing to do, and a name given on subscribe is carried.
func TestAuthOpenServer(t *testing.T) {
	s := startServer(t, Config{})
	a := dialClient(t, s, false)
	b := dialClient(t, s, true)
	a.expectError(map[string]any{"op": "connect", "token": "x"}, "bad_request")
	a.expectError(map[string]any{"op": "refresh", "token": "x"}, "bad_request")
	b.mustOK(map[string]any{"op": "subscribe", "channel": "private:alice", "presence": true})
	a.mustOK(map[string]any{"op": "subscribe", "channel": "private:alice", "name": "Ann"})
	if m := b.nextPush("join", a.client); m["info"].(map[string]any)["name"] != "Ann" {
		t.Fatalf("join %v", m)
	}
	// A token is not even read.
	if _, m := mustDialAuth(t, s, dialOpts{header: "ignored"}); m["user"] != "" {
		t.Fatalf("connected %v", m)
	}
}

// TestPublishByteRate: publish data per second is bounded per user,
// across the user's connections, and per connection for anonymous ones;
// others are unaffected. (A rate of 1 byte per second: the bucket refills
// nothing measurable while the test runs, however slow the machine.)
func TestPublishByteRate(t *testing.T) {
	cfg := authConfig(t)
	cfg.AllowAnonymous = true
	cfg.AnonymousPublish = []string{"*"}
	cfg.PublishBytesPerSecond = 1
	cfg.PublishBurstBytes = 3000
	cfg.MaxMessageBytes = 2000
	s := startServer(t, cfg)
	data := strings.Repeat("x", 998) // 1000 bytes as JSON
	pub := func(tc *testClient) string {
		t.Helper()
		r, _ := tc.call(map[string]any{"op": "publish", "channel": "c", "data": data})
		if r["ok"] == true {
			return "ok"
		}
		return errorCode(r)
	}
	tok := mint(t, tokenSpec{sub: "henry", publish: []string{"*"}})
	h1, _ := mustDialAuth(t, s, dialOpts{header: tok})
	h2, _ := mustDialAuth(t, s, dialOpts{header: tok, msgpack: true}) // msgpack: 1002 bytes
	var got []string
	for _, tc := range []*testClient{h1, h2, h1, h2} {
		got = append(got, pub(tc))
	}
	if strings.Join(got, ",") != "ok,ok,rate_limited,rate_limited" {
		t.Fatalf("henry's publishes: %v, want the user's 3000 bytes shared by both connections", got)
	}
	// Others are unaffected: another user, and anonymous connections, each
	// with a bucket of its own.
	ivy, _ := mustDialAuth(t, s, dialOpts{header: mint(t, tokenSpec{sub: "ivy", publish: []string{"*"}})})
	a1, _ := mustDialAuth(t, s, dialOpts{})
	a2, _ := mustDialAuth(t, s, dialOpts{})
	for _, tc := range []*testClient{ivy, a1, a2} {
		for i, want := range []string{"ok", "ok", "ok", "rate_limited"} {
			if g := pub(tc); g != want {
				t.Fatalf("publish %d: %s, want %s", i, g, want)
			}
		}
	}
	// Small publishes still fit where big ones do not.
	if r, _ := h1.call(map[string]any{"op": "publish", "channel": "c", "data": "tiny"}); r["ok"] != true {
		t.Fatalf("small publish: %v", r)
	}
	if n := s.authn.users.len(); n != 2 {
		t.Fatalf("%d user buckets, want 2", n)
	}
}

// TestUserLimiterDropsIdle: buckets that are full again are dropped, so
// the map holds only the users who published lately.
func TestUserLimiterDropsIdle(t *testing.T) {
	var l userLimiter
	l.init()
	const users = 10000
	for i := range users {
		if !l.allow(fmt.Sprint("u", i), 10, 100, 1000) {
			t.Fatal("refused")
		}
	}
	if n := l.len(); n < users/2 {
		t.Fatalf("%d buckets for %d active users", n, users)
	}
	// Much later every bucket is full: the next publishes sweep them.
	for i := range users {
		l.allow(fmt.Sprint("v", i), 10, 100, 1_000_000)
	}
	if n := l.len(); n > users+users/2 {
		t.Fatalf("%d buckets after the first users went idle, want about %d", n, users)
	}
}

// TestAPIPublishBatch: the batch form publishes in order and answers one
// result per publication, failures included; bounds are enforced.
func TestAPIPublishBatch(t *testing.T) {
	s := startServer(t, Config{APIKey: "k"})
	sub := dialClient(t, s, false)
	sub.mustOK(map[string]any{"op": "subscribe", "channel": "b"})
	post := func(body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+s.Addr().String()+"/api/publish", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := post(`{"publications":[{"channel":"b","data":1},{"channel":"bad name","data":2},{"channel":"b"},{"channel":"b","data":{"n":3}}]}`)
	if code != 200 {
		t.Fatalf("batch: %d %v", code, m)
	}
	res := m["results"].([]any)
	want := []string{"offset 1", "error 400", "error 400", "offset 2"}
	for i, r := range res {
		r := r.(map[string]any)
		got := fmt.Sprint("offset ", r["offset"])
		if r["error"] != nil {
			got = fmt.Sprint("error ", r["status"])
		}
		if i >= len(want) || got != want[i] {
			t.Fatalf("results %v, want %v", res, want)
		}
	}
	for _, off := range []float64{1, 2} {
		if p := sub.nextPub(); p["offset"] != off {
			t.Fatalf("pub %v, want offset %v", p, off)
		}
	}
	tooMany := `{"publications":[` + strings.Repeat(`{"channel":"b","data":0},`, maxBatchPublications) + `{"channel":"b","data":0}]}`
	for _, tt := range []struct {
		body string
		code int
	}{
		{`{"publications":[]}`, 400},
		{`{"channel":"b","data":1,"publications":[{"channel":"b","data":1}]}`, 400},
		{tooMany, 413},
		{`{"channel":"b","data":5}`, 200}, // the single form still works
	} {
		if code, m := post(tt.body); code != tt.code {
			t.Fatalf("%.60s: %d %v, want %d", tt.body, code, m, tt.code)
		}
	}
}

// TestAPIDisconnect: every connection of a user is closed with the code
// and reason asked; others stay; codes are validated.
func TestAPIDisconnect(t *testing.T) {
	cfg := authConfig(t)
	cfg.APIKey = "k"
	s := startServer(t, cfg)
	post := func(body, key string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+s.Addr().String()+"/api/disconnect", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	for _, tt := range []struct {
		body, key string
		code      int
	}{
		{`{"user":"x","code":4000}`, "wrong", 401},
		{`{"code":4000}`, "k", 400},
		{`{"user":"x","code":1000}`, "k", 400},
		{`{"user":"x","code":3999}`, "k", 400},
		{`{"user":"x","code":5000}`, "k", 400},
		{`{"user":"x","reason":"` + strings.Repeat("r", 124) + `"}`, "k", 400},
		{`{"user":"nobody","code":4999}`, "k", 200},
	} {
		if code, m := post(tt.body, tt.key); code != tt.code {
			t.Fatalf("%s: %d %v, want %d", tt.body, code, m, tt.code)
		}
	}
	tok := mint(t, tokenSpec{sub: "judy"})
	j1, _ := mustDialAuth(t, s, dialOpts{header: tok})
	j2, _ := mustDialAuth(t, s, dialOpts{query: tok, msgpack: true})
	j3, _ := mustDialAuth(t, s, dialOpts{origin: true})
	j3.mustOK(map[string]any{"op": "connect", "token": tok})
	other, _ := mustDialAuth(t, s, dialOpts{header: mint(t, tokenSpec{sub: "judy2"})})
	code, m := post(`{"user":"judy","code":4001,"reason":"access revoked"}`, "k")
	if code != 200 || m["disconnected"] != float64(3) {
		t.Fatalf("disconnect: %d %v, want 3 disconnected", code, m)
	}
	for _, tc := range []*testClient{j1, j2, j3} {
		tc.expectCloseWS(4001, "access revoked")
	}
	other.mustOK(map[string]any{"op": "ping"})
	// Default code and reason.
	k1, _ := mustDialAuth(t, s, dialOpts{header: tok})
	if code, m := post(`{"user":"judy"}`, "k"); code != 200 || m["disconnected"] != float64(1) {
		t.Fatalf("disconnect: %d %v", code, m)
	}
	k1.expectCloseWS(1008, "disconnected by the server")
}

// TestAuthJSONAndDevTokens: /auth.json tells the web app what to do; the
// dev token endpoint exists only with DevTokens, and its tokens work.
func TestAuthJSONAndDevTokens(t *testing.T) {
	get := func(s *Server, path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	open := startServer(t, Config{})
	if _, m := get(open, "/auth.json"); m["auth"] != "none" {
		t.Fatalf("open server: %v", m)
	}
	if code, _ := get(open, "/api/dev-token?name=x"); code != 404 {
		t.Fatalf("dev-token without DevTokens: %d", code)
	}
	cfg := authConfig(t)
	cfg.TokenURL = "/session/token"
	cfg.AllowAnonymous = true
	if _, m := get(startServer(t, cfg), "/auth.json"); m["auth"] != "optional" || m["tokenURL"] != "/session/token" || m["dev"] != nil {
		t.Fatalf("optional: %v", m)
	}
	dev := startServer(t, Config{DevTokens: true, DevTokenChannels: []string{"room:*"}, DevTokenTTL: time.Minute})
	if _, m := get(dev, "/auth.json"); m["auth"] != "required" || m["tokenURL"] != "/api/dev-token" || m["dev"] != true {
		t.Fatalf("dev: %v", m)
	}
	if code, _ := get(dev, "/api/dev-token?name="); code != 400 {
		t.Fatalf("empty name: %d", code)
	}
	code, m := get(dev, "/api/dev-token?name=Zoe")
	if code != 200 || m["user"] != "Zoe" {
		t.Fatalf("dev token: %d %v", code, m)
	}
	tc, cm := mustDialAuth(t, dev, dialOpts{header: m["token"].(string)})
	if cm["user"] != "Zoe" || cm["name"] != "Zoe" {
		t.Fatalf("connected %v", cm)
	}
	tc.mustOK(map[string]any{"op": "subscribe", "channel": "room:1"})
	tc.expectError(map[string]any{"op": "subscribe", "channel": "other"}, "forbidden")
}

// TestFanoutTokenMintCompat: auth.Mint's tokens (what fanout token
// prints) are accepted, with their globs.
func TestFanoutTokenMintCompat(t *testing.T) {
	s := startServer(t, authConfig(t))
	tok, err := auth.Mint([]byte(testSecret), auth.Claims{Subject: "kim", Name: "Kim", Channels: []string{"chat:*"}, Publish: []string{"chat:*"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tc, m := mustDialAuth(t, s, dialOpts{header: tok})
	if m["user"] != "kim" || m["name"] != "Kim" {
		t.Fatalf("connected %v", m)
	}
	tc.mustOK(map[string]any{"op": "publish", "channel": "chat:1", "data": 1})
}

// BenchmarkVerifyToken is the cost of one token check at the upgrade (or
// in connect/refresh): signature, claims, and the identity built from them.
func BenchmarkVerifyToken(b *testing.B) {
	cfg := authConfig(b)
	cfg.Logger = nil
	cfg = cfg.withDefaults()
	a, err := newAuthenticator(&Server{cfg: cfg})
	if err != nil {
		b.Fatal(err)
	}
	for _, alg := range []string{"HS256", "ES256", "RS256"} {
		b.Run(alg, func(b *testing.B) {
			tok := mint(b, tokenSpec{alg: alg, sub: "alice", name: "Alice", channels: []string{"chat:*"}, publish: []string{"chat:*"}})
			now := time.Now().UnixNano()
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := a.verify(tok, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
