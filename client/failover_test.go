package client

import (
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/codec"
)

// deadURL is the URL of a port nobody listens on (connections refused).
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "ws://" + addr + "/ws"
}

// Dial with Options.URLs goes down the list until a server connects; a
// refusal for good stops it; when none connects, every attempt's error is
// returned.
func TestDialURLs(t *testing.T) {
	t.Run("first dead, second connects", func(t *testing.T) {
		srv := newFakeServer(t)
		dead := deadURL(t)
		opts := fastOptions(codec.JSON)
		opts.URLs = []string{srv.url}
		cl := dial(t, dead, opts)
		if cl.URL() != srv.url {
			t.Fatalf("URL() = %q, want %q", cl.URL(), srv.url)
		}
		if srv.connections() != 1 {
			t.Fatalf("server saw %d connections", srv.connections())
		}
	})
	t.Run("all dead", func(t *testing.T) {
		a, b := deadURL(t), deadURL(t)
		opts := fastOptions(codec.JSON)
		opts.URLs = []string{b}
		_, err := Dial(testCtx(t), a, opts)
		if err == nil {
			t.Fatal("Dial succeeded")
		}
		for _, u := range []string{a, b} {
			if !strings.Contains(err.Error(), u) {
				t.Errorf("error %q does not name %s", err, u)
			}
		}
	})
	t.Run("refused for good stops", func(t *testing.T) {
		refusing, other := newFakeServer(t), newFakeServer(t)
		refusing.setReject(http.StatusUnauthorized, "bad token")
		opts := fastOptions(codec.JSON)
		opts.URLs = []string{other.url}
		_, err := Dial(testCtx(t), refusing.url, opts)
		var he *HandshakeError
		if !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
			t.Fatalf("Dial: %v, want a 401 HandshakeError", err)
		}
		if other.connections() != 0 {
			t.Errorf("the next URL was tried after a 401")
		}
	})
}

// A client whose server goes away for good moves on to the next URL and
// resubscribes there, recovering from the last position it delivered.
func TestReconnectMovesToNextURL(t *testing.T) {
	a, b := newFakeServer(t), newFakeServer(t)
	opts := fastOptions(codec.JSON)
	opts.URLs = []string{b.url}
	cl := dial(t, a.url, opts)
	s := subscribe(t, cl, "room", SubscribeOptions{})
	a.publish("room", `1`)
	if p := recv(t, s); p.Offset != 1 {
		t.Fatalf("got offset %d", p.Offset)
	}
	epoch := func() string {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.channelLocked("room").epoch
	}
	// b shares a's history, as the nodes of a cluster share their broker's.
	a.mu.Lock()
	ach := a.channelLocked("room")
	b.mu.Lock()
	bch := b.channelLocked("room")
	bch.epoch, bch.offset, bch.history = ach.epoch, ach.offset, ach.history
	b.mu.Unlock()
	a.mu.Unlock()
	b.publish("room", `2`)

	// a dies: its listener is gone and its connections cut.
	a.hs.Listener.Close()
	a.dropAll()
	eventually(t, "reconnected to the second URL", func() bool {
		return cl.URL() == b.url && cl.State() == StateConnected
	})
	if p := recv(t, s); p.Offset != 2 || p.Epoch != epoch() {
		t.Fatalf("after the move got %s/%d, want %s/2", p.Epoch, p.Offset, epoch())
	}
	subs := b.commands(codec.OpSubscribe)
	if len(subs) != 1 || !subs[0].hasRecover || subs[0].recover.Offset != 1 {
		t.Fatalf("second server got subscribes %+v, want one recovering from offset 1", subs)
	}
	b.publish("room", `3`)
	if p := recv(t, s); p.Offset != 3 {
		t.Fatalf("live after the move: offset %d", p.Offset)
	}
}

// A resubscribe refused with a transient error (a cluster node that cannot
// reach its broker answers unavailable) is retried on the same connection,
// and the subscription recovers what it missed; other refusals end it
// (TestResubscribeRefused).
func TestResubscribeRetriesTransientErrors(t *testing.T) {
	for _, code := range []string{codec.CodeUnavailable, codec.CodeRateLimited, codec.CodeInternal} {
		t.Run(code, func(t *testing.T) {
			srv := newFakeServer(t)
			refused := 0
			srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
				if fc.n == 2 && cmd.Op == codec.OpSubscribe && refused < 2 {
					refused++
					fc.write(codec.AppendError(nil, fc.enc, cmd.ID, cmd.HasID, code, "try later"))
					return true
				}
				return false
			})
			cl := dial(t, srv.url, fastOptions(codec.JSON))
			s := subscribe(t, cl, "r", SubscribeOptions{})
			srv.publish("r", `1`)
			recv(t, s)
			srv.dropAll()
			srv.publish("r", `2`)
			if p := recv(t, s); p.Offset != 2 {
				t.Fatalf("after the retried resubscribe got offset %d, want 2", p.Offset)
			}
			if subs := srv.commands(codec.OpSubscribe); len(subs) != 4 {
				t.Fatalf("%d subscribes, want 1 + 2 refused + 1", len(subs))
			}
			if err := s.Err(); err != nil {
				t.Fatalf("Err() = %v", err)
			}
		})
	}
}
