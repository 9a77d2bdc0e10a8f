package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/engine/auth"
)

// TestTokenCommand: "fanout token" prints a token the server's verifier
// accepts, with the claims asked for; missing flags are errors.
func TestTokenCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	err := tokenCommand([]string{"--secret", "S", "--sub", "alice", "--channels", "chat:*, room:1", "--publish", "chat:*",
		"--name", "Alice", "--ttl", "1h"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	v, err := auth.NewVerifier(auth.Config{Secret: []byte("S")})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("printed token %q: %v", out.String(), err)
	}
	if c.Subject != "alice" || c.Name != "Alice" || strings.Join(c.Channels, " ") != "chat:* room:1" ||
		strings.Join(c.Publish, " ") != "chat:*" || !c.CanSubscribe("room:1") || c.CanPublish("room:1") {
		t.Fatalf("claims %+v", c)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--sub", "alice"}, "--secret"},
		{[]string{"--secret", "S"}, "--sub"},
		{[]string{"--secret", "S", "--sub", "a", "--ttl", "-1s"}, "--ttl"},
		{[]string{"--secret", "S", "--sub", "a", "extra"}, "unexpected"},
	} {
		t.Setenv("FANOUT_TOKEN_SECRET", "")
		if err := tokenCommand(tt.args, &out, &errOut); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error about %s", tt.args, err, tt.want)
		}
	}
}
