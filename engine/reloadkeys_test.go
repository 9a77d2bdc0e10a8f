package engine

import (
	"net/http"
	"os"
	"testing"
)

// TestReloadKeysRotatesJWKS: a token signed by a key that is not in the
// JWKS file yet is refused; once the file lists the key and the keys are
// reloaded (the command's SIGHUP), it is accepted, and a file that fails to
// parse keeps the keys in use.
func TestReloadKeysRotatesJWKS(t *testing.T) {
	_, jwksFile := writeKeyFiles(t)
	published, err := os.ReadFile(jwksFile)
	if err != nil {
		t.Fatal(err)
	}
	// Start with a JWKS that lists another key under another kid.
	other := []byte(`{"keys":[{"kty":"EC","kid":"old","crv":"P-256","use":"sig",` +
		`"x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}`)
	if err := os.WriteFile(jwksFile, other, 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, Config{TokenJWKSFile: jwksFile})
	tok := mint(t, tokenSpec{alg: "ES256-JWKS", sub: "rotated", channels: []string{"*"}})
	if _, resp, _ := dialAuth(t, s, dialOpts{header: tok}); resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("before rotation: %v, want 401", resp)
	}
	if err := os.WriteFile(jwksFile, published, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	if c, resp, body := dialAuth(t, s, dialOpts{header: tok}); c == nil {
		t.Fatalf("after rotation: %v %s", resp.Status, body)
	}
	if err := os.WriteFile(jwksFile, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadKeys(); err == nil {
		t.Fatal("reload of a broken JWKS file succeeded")
	}
	if c, resp, body := dialAuth(t, s, dialOpts{header: tok}); c == nil {
		t.Fatalf("after a failed reload: %v %s", resp.Status, body)
	}
}
