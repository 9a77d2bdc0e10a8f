package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, channel string
		want             bool
	}{
		{"*", "anything:at/all", true},
		{"chat:*", "chat:lobby", true},
		{"chat:*", "chat:", true},
		{"chat:*", "chat:a/b", true},
		{"chat:*", "chatx", false},
		{"chat:*", "private:alice", false},
		{"private:alice", "private:alice", true},
		{"private:alice", "private:alicex", false},
		{"private:alice", "private:alic", false},
		{"*:alice", "private:alice", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"", "", true},
		{"", "x", false},
		{"**", "x", true},
		{"a*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
	}
	for _, tt := range tests {
		if got := Match(tt.pattern, tt.channel); got != tt.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tt.pattern, tt.channel, got, tt.want)
		}
	}
}

func writeFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sign(t *testing.T, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestVerify(t *testing.T) {
	secret := []byte("s3cret")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pemFile := writeFile(t, "pub.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "EC", "kid": "ec1", "crv": "P-256", "x": b64(ecKey.X.FillBytes(make([]byte, 32))), "y": b64(ecKey.Y.FillBytes(make([]byte, 32)))},
		{"kty": "RSA", "kid": "rsa1", "n": b64(rsaKey.N.Bytes()), "e": b64(big.NewInt(int64(rsaKey.E)).Bytes())},
	}})
	jwksFile := writeFile(t, "jwks.json", jwks)

	v, err := NewVerifier(Config{Secret: secret, PublicKeyFile: pemFile, JWKSFile: jwksFile})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	good := jwt.MapClaims{"sub": "alice", "exp": exp, "channels": []string{"chat:*"}, "publish": []string{"chat:lobby"}, "info": map[string]string{"name": "Alice"}}
	tests := []struct {
		name    string
		token   string
		wantErr error
	}{
		{"HS256", sign(t, jwt.SigningMethodHS256, secret, "", good), nil},
		{"RS256 from PEM", sign(t, jwt.SigningMethodRS256, rsaKey, "", good), nil},
		{"RS256 by kid", sign(t, jwt.SigningMethodRS256, rsaKey, "rsa1", good), nil},
		{"ES256 by kid", sign(t, jwt.SigningMethodES256, ecKey, "ec1", good), nil},
		{"ES256 wrong key", sign(t, jwt.SigningMethodES256, otherEC, "ec1", good), ErrInvalidToken},
		{"HS256 wrong secret", sign(t, jwt.SigningMethodHS256, []byte("nope"), "", good), ErrInvalidToken},
		{"expired", sign(t, jwt.SigningMethodHS256, secret, "", jwt.MapClaims{"sub": "a", "exp": time.Now().Add(-time.Hour).Unix()}), ErrExpired},
		{"not yet valid", sign(t, jwt.SigningMethodHS256, secret, "", jwt.MapClaims{"sub": "a", "exp": exp, "nbf": time.Now().Add(time.Hour).Unix()}), ErrExpired},
		{"no exp", sign(t, jwt.SigningMethodHS256, secret, "", jwt.MapClaims{"sub": "a"}), ErrInvalidToken},
		{"no sub", sign(t, jwt.SigningMethodHS256, secret, "", jwt.MapClaims{"exp": exp}), ErrInvalidToken},
		{"alg none", func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}(), ErrInvalidToken},
		// The classic confusion: the RSA public key used as an HMAC secret.
		{"HS256 signed with the public key", sign(t, jwt.SigningMethodHS256, der, "", good), ErrInvalidToken},
		{"HS384 not accepted", sign(t, jwt.SigningMethodHS384, secret, "", good), ErrInvalidToken},
		{"garbage", "a.b.c", ErrInvalidToken},
		{"empty", "", ErrNoToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(tt.token)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Subject != "alice" || c.Name != "Alice" || !c.CanSubscribe("chat:x") || c.CanSubscribe("private:bob") ||
				!c.CanPublish("chat:lobby") || c.CanPublish("chat:other") {
				t.Fatalf("claims %+v", c)
			}
		})
	}
}

func TestReloadRotatesKeys(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b64 := base64.RawURLEncoding.EncodeToString
	set := func(kid string, k *ecdsa.PrivateKey) []byte {
		b, _ := json.Marshal(map[string]any{"keys": []map[string]string{{"kty": "EC", "kid": kid, "crv": "P-256",
			"x": b64(k.X.FillBytes(make([]byte, 32))), "y": b64(k.Y.FillBytes(make([]byte, 32)))}}})
		return b
	}
	file := writeFile(t, "jwks.json", set("k1", k1))
	v, err := NewVerifier(Config{JWKSFile: file})
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "a", "exp": time.Now().Add(time.Hour).Unix()}
	t1, t2 := sign(t, jwt.SigningMethodES256, k1, "k1", claims), sign(t, jwt.SigningMethodES256, k2, "k2", claims)
	if _, err := v.Verify(t1); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t2); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("unknown kid: %v", err)
	}
	if err := os.WriteFile(file, set("k2", k2), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(t2); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if _, err := v.Verify(t1); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("retired key still accepted: %v", err)
	}
	// A broken file keeps the keys in use.
	if err := os.WriteFile(file, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err == nil {
		t.Fatal("reload of a broken file succeeded")
	}
	if _, err := v.Verify(t2); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}
}

func TestMintRoundTrip(t *testing.T) {
	secret := []byte("dev")
	tok, err := Mint(secret, Claims{Subject: "bob", Name: "Bob", Channels: []string{"*"}, Publish: []string{"chat:*"}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(Config{Secret: secret})
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "bob" || c.Name != "Bob" || time.Until(c.Expires) > time.Minute || !c.CanPublish("chat:x") {
		t.Fatalf("%+v", c)
	}
	if _, err := NewVerifier(Config{}); !errors.Is(err, ErrNoKeys) {
		t.Fatalf("no keys: %v", err)
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("chat:*", "chat:lobby")
	f.Add("a*b*c", "aXbYc")
	f.Fuzz(func(t *testing.T, pattern, channel string) {
		if len(pattern) > 24 || len(channel) > 24 { // the reference is exponential
			return
		}
		got := Match(pattern, channel)
		// Reference: '*' as a path.Match-free regexp-like check by recursion
		// on small inputs.
		if want := matchRef(pattern, channel); got != want {
			t.Fatalf("Match(%q, %q) = %v, reference %v", pattern, channel, got, want)
		}
	})
}

func matchRef(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if matchRef(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && p[0] == s[0] && matchRef(p[1:], s[1:])
}
