package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/engine"
)

func TestNewBroker(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct{ url, err string }{
		{"redis://127.0.0.1:6379/0", ""},
		{"rediss://user:pw@redis.example:6380", ""},
		{"nats://127.0.0.1:4222", "NATS is not supported"},
		{"http://x", "want redis://"},
		{"redis://host:notaport", "--broker"},
	} {
		b, err := newBroker(c.url, engine.Config{HistorySize: 10}, log)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.url, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one containing %q", c.url, err, c.err)
		}
		if b != nil {
			b.Close()
		}
	}
}
