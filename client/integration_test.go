package client_test

// Integration tests: the client against the real fanout server (package
// engine) on a random loopback port, through the exported API only.

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/client"
	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine"
)

var allEncodings = []codec.Encoding{codec.JSON, codec.Msgpack}

// startEngine starts a real server on addr ("127.0.0.1:0" for a random port)
// and closes it when the test ends.
func startEngine(t *testing.T, addr string) *engine.Server {
	t.Helper()
	srv, err := engine.New(engine.Config{
		Addr:             addr,
		HistorySize:      100,
		IdleTimeout:      30 * time.Second,
		DrainTimeout:     5 * time.Second,
		RetryAfterMin:    50 * time.Millisecond,
		RetryAfterSpread: time.Millisecond,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func engineURL(srv *engine.Server) string { return "ws://" + srv.Addr().String() + "/ws" }

func itCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func itOptions(enc codec.Encoding) client.Options {
	return client.Options{
		Encoding:  enc,
		Reconnect: client.ReconnectOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 100 * time.Millisecond},
	}
}

func itDial(t *testing.T, url string, opts client.Options) *client.Client {
	t.Helper()
	cl, err := client.Dial(itCtx(t), url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func itSubscribe(t *testing.T, cl *client.Client, channel string, opts client.SubscribeOptions) *client.Subscription {
	t.Helper()
	s, err := cl.Subscribe(itCtx(t), channel, opts)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", channel, err)
	}
	return s
}

func itRecv(t *testing.T, s *client.Subscription) client.Publication {
	t.Helper()
	select {
	case p, ok := <-s.C():
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return p
	case <-time.After(15 * time.Second):
		t.Fatalf("no publication on %q", s.Channel())
	}
	return client.Publication{}
}

func itOffsets(t *testing.T, s *client.Subscription, n int) []uint64 {
	t.Helper()
	var out []uint64
	for range n {
		out = append(out, itRecv(t, s).Offset)
	}
	return out
}

func itPublish(t *testing.T, cl *client.Client, channel string, data any) uint64 {
	t.Helper()
	off, err := cl.Publish(itCtx(t), channel, data)
	if err != nil {
		t.Fatalf("Publish(%q): %v", channel, err)
	}
	return off
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

type note struct {
	Text string `json:"text"`
	N    int    `json:"n"`
}

func TestEnginePublishSubscribe(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	for _, pubEnc := range allEncodings {
		for _, subEnc := range allEncodings {
			t.Run(pubEnc.String()+"->"+subEnc.String(), func(t *testing.T) {
				ch := "it.pubsub." + pubEnc.String() + "." + subEnc.String()
				pub := itDial(t, engineURL(srv), itOptions(pubEnc))
				sub := itDial(t, engineURL(srv), itOptions(subEnc))
				if pub.ID() == "" || pub.ID() == sub.ID() {
					t.Fatalf("client ids %q and %q", pub.ID(), sub.ID())
				}
				s := itSubscribe(t, sub, ch, client.SubscribeOptions{})
				for n := 1; n <= 5; n++ {
					if off := itPublish(t, pub, ch, note{Text: "hi", N: n}); off != uint64(n) {
						t.Fatalf("Publish offset %d, want %d", off, n)
					}
				}
				for n := 1; n <= 5; n++ {
					p := itRecv(t, s)
					var m note
					if err := p.Decode(&m); err != nil {
						t.Fatalf("Decode(%x): %v", p.Data, err)
					}
					if p.Offset != uint64(n) || m != (note{Text: "hi", N: n}) || p.Channel != ch || p.Epoch == "" || p.Info.Client != pub.ID() {
						t.Fatalf("publication %d: %+v %+v", n, p, m)
					}
				}
				// A publisher subscribed to the channel gets its own too.
				ps := itSubscribe(t, pub, ch, client.SubscribeOptions{})
				itPublish(t, pub, ch, note{N: 6})
				if p := itRecv(t, ps); p.Offset != 6 {
					t.Fatalf("own publication offset %d, want 6", p.Offset)
				}
			})
		}
	}
}

func TestEnginePresence(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	for _, enc := range allEncodings {
		t.Run(enc.String(), func(t *testing.T) {
			ch := "it.presence." + enc.String()
			a := itDial(t, engineURL(srv), itOptions(enc))
			b := itDial(t, engineURL(srv), itOptions(enc))
			sa := itSubscribe(t, a, ch, client.SubscribeOptions{Presence: true})
			sb := itSubscribe(t, b, ch, client.SubscribeOptions{})

			nextEvent := func(kind client.PresenceKind) {
				t.Helper()
				for {
					select {
					case ev := <-sa.Presence():
						if ev.Info.Client == b.ID() && ev.Kind == kind && ev.Channel == ch {
							return
						}
					case <-time.After(15 * time.Second):
						t.Fatalf("no %v of %s", kind, b.ID())
					}
				}
			}
			nextEvent(client.Join)
			clients, err := a.Presence(itCtx(t), ch)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, c := range clients {
				ids = append(ids, c.Client)
			}
			if !slices.Contains(ids, a.ID()) || !slices.Contains(ids, b.ID()) || len(ids) != 2 {
				t.Fatalf("Presence = %v, want %s and %s", ids, a.ID(), b.ID())
			}
			if err := sb.Unsubscribe(itCtx(t)); err != nil {
				t.Fatal(err)
			}
			nextEvent(client.Leave)
		})
	}
}

func TestEngineHistory(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	for _, enc := range allEncodings {
		t.Run(enc.String(), func(t *testing.T) {
			ch := "it.history." + enc.String()
			cl := itDial(t, engineURL(srv), itOptions(enc))
			for n := 1; n <= 5; n++ {
				itPublish(t, cl, ch, note{N: n})
			}
			pos, pubs, err := cl.History(itCtx(t), ch, 3)
			if err != nil {
				t.Fatal(err)
			}
			var got []int
			for _, p := range pubs {
				var m note
				if err := p.Decode(&m); err != nil {
					t.Fatal(err)
				}
				got = append(got, m.N)
			}
			if !slices.Equal(got, []int{3, 4, 5}) || pos.Offset != 5 || pos.Epoch == "" {
				t.Fatalf("History(3) = %v at %+v, want [3 4 5] at offset 5", got, pos)
			}
			itPublish(t, cl, ch, note{N: 6})
			s := itSubscribe(t, cl, ch, client.SubscribeOptions{Recover: &pos})
			if p := itRecv(t, s); p.Offset != 6 {
				t.Fatalf("recovered offset %d, want 6", p.Offset)
			}
		})
	}
}

func TestEngineErrorReplies(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	cl := itDial(t, engineURL(srv), itOptions(codec.JSON))
	ctx := itCtx(t)
	tests := []struct {
		name string
		call func() error
	}{
		{name: "subscribe", call: func() error { _, err := cl.Subscribe(ctx, "bad channel!", client.SubscribeOptions{}); return err }},
		{name: "publish", call: func() error { _, err := cl.Publish(ctx, "bad channel!", 1); return err }},
		{name: "presence", call: func() error { _, err := cl.Presence(ctx, ""); return err }},
		{name: "history", call: func() error { _, _, err := cl.History(ctx, "bad channel!", 1); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *client.Error
			if !errors.Is(err, client.ErrBadRequest) || !errors.As(err, &e) || e.Message == "" {
				t.Fatalf("%v, want *client.Error matching ErrBadRequest", err)
			}
		})
	}
	// The connection stays usable.
	if err := cl.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// cutter dials through net.Dialer and can cut every connection it made, or
// refuse new ones, to simulate a network failure on the client's side.
type cutter struct {
	mu     sync.Mutex
	conns  []net.Conn
	refuse bool
	dials  int
}

func (c *cutter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.mu.Lock()
	c.dials++
	refuse := c.refuse
	c.mu.Unlock()
	if refuse {
		return nil, errors.New("test: network down")
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err == nil {
		c.mu.Lock()
		c.conns = append(c.conns, nc)
		c.mu.Unlock()
	}
	return nc, err
}

// down cuts every connection and refuses new ones until up.
func (c *cutter) down() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refuse = true
	for _, nc := range c.conns {
		nc.Close()
	}
	c.conns = nil
}

func (c *cutter) up() {
	c.mu.Lock()
	c.refuse = false
	c.mu.Unlock()
}

func (c *cutter) dialCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dials
}

func TestEngineReconnectRecovers(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	for _, enc := range allEncodings {
		t.Run(enc.String(), func(t *testing.T) {
			ch := "it.recover." + enc.String()
			cut := &cutter{}
			opts := itOptions(enc)
			opts.Dialer.NetDial = cut.dial
			sub := itDial(t, engineURL(srv), opts)
			pub := itDial(t, engineURL(srv), itOptions(enc))
			s := itSubscribe(t, sub, ch, client.SubscribeOptions{})
			for n := 1; n <= 3; n++ {
				itPublish(t, pub, ch, note{N: n})
			}
			if got := itOffsets(t, s, 3); !slices.Equal(got, []uint64{1, 2, 3}) {
				t.Fatalf("offsets %v", got)
			}
			firstID := sub.ID()

			cut.down()
			dials := cut.dialCount()
			waitFor(t, "a refused reconnection attempt", func() bool { return cut.dialCount() > dials })
			// Published while the subscriber is away.
			for n := 4; n <= 6; n++ {
				itPublish(t, pub, ch, note{N: n})
			}
			cut.up()

			if got := itOffsets(t, s, 3); !slices.Equal(got, []uint64{4, 5, 6}) {
				t.Fatalf("after reconnect: offsets %v, want [4 5 6]", got)
			}
			itPublish(t, pub, ch, note{N: 7})
			if p := itRecv(t, s); p.Offset != 7 {
				t.Fatalf("live offset %d, want 7", p.Offset)
			}
			select {
			case g := <-s.Gaps():
				t.Fatalf("unexpected gap: %v", g)
			default:
			}
			if sub.ID() == firstID {
				t.Fatalf("client id unchanged after reconnect")
			}
		})
	}
}

func TestEngineRestartSameAddress(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	addr := srv.Addr().String()
	url := engineURL(srv)

	var mu sync.Mutex
	var changes []client.StateChange
	opts := itOptions(codec.JSON)
	opts.OnStateChange = func(ev client.StateChange) {
		mu.Lock()
		changes = append(changes, ev)
		mu.Unlock()
	}
	sub := itDial(t, url, opts)
	pub := itDial(t, url, itOptions(codec.Msgpack))
	const ch = "it.restart"
	s := itSubscribe(t, sub, ch, client.SubscribeOptions{})
	itPublish(t, pub, ch, note{N: 1})
	first := itRecv(t, s)

	ctx := itCtx(t)
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	srv2 := startEngine(t, addr)

	// The in-memory history died with the first server: the subscription
	// reports the lost epoch and carries on in the new one.
	var g *client.GapError
	select {
	case g = <-s.Gaps():
	case <-time.After(15 * time.Second):
		t.Fatal("no gap after restart")
	}
	if !errors.Is(g, client.ErrHistoryLost) || g.Known || g.From != first.Position() || g.To.Epoch == first.Epoch {
		t.Fatalf("gap %+v after restart", g)
	}
	waitFor(t, "publisher reconnected", func() bool { return pub.State() == client.StateConnected })
	off := itPublish(t, pub, ch, note{N: 2})
	p := itRecv(t, s)
	if p.Offset != off || p.Epoch != g.To.Epoch {
		t.Fatalf("after restart: %+v, want offset %d in epoch %q", p, off, g.To.Epoch)
	}

	// The client honoured the drain's close 1012 and its retry hint.
	mu.Lock()
	defer mu.Unlock()
	var ce *client.CloseError
	for _, ev := range changes {
		if ev.To == client.StateDisconnected && errors.As(ev.Err, &ce) {
			break
		}
	}
	if ce == nil || ce.Code != client.CloseServiceRestart || ce.RetryAfter < 50*time.Millisecond {
		t.Fatalf("disconnect %+v, want close 1012 with retry_after_ms >= 50", ce)
	}
	_ = srv2
}

func TestEngineCloseStopsReconnecting(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	cl, err := client.Dial(itCtx(t), engineURL(srv), itOptions(codec.JSON))
	if err != nil {
		t.Fatal(err)
	}
	s := itSubscribe(t, cl, "it.close", client.SubscribeOptions{})
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-s.C(); ok {
		t.Fatal("C() open after Close")
	}
	if _, err := cl.Publish(itCtx(t), "it.close", 1); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	// The server saw the subscription go.
	other := itDial(t, engineURL(srv), itOptions(codec.JSON))
	waitFor(t, "presence empty", func() bool {
		clients, err := other.Presence(itCtx(t), "it.close")
		return err == nil && len(clients) == 0
	})
}

// TestEngineDropsDeliverEverythingOnce cuts the subscriber's connection over
// and over while another client publishes: every offset arrives exactly
// once, in order, without a gap.
func TestEngineDropsDeliverEverythingOnce(t *testing.T) {
	srv := startEngine(t, "127.0.0.1:0")
	const total = 90 // within HistorySize, so everything is recoverable
	cut := &cutter{}
	opts := itOptions(codec.Msgpack)
	opts.Dialer.NetDial = cut.dial
	sub := itDial(t, engineURL(srv), opts)
	pub := itDial(t, engineURL(srv), itOptions(codec.JSON))
	s := itSubscribe(t, sub, "it.chaos", client.SubscribeOptions{})

	errc := make(chan error, 1)
	go func() {
		for i := 1; i <= total; i++ {
			if _, err := pub.Publish(context.Background(), "it.chaos", i); err != nil {
				errc <- err
				return
			}
			if i%15 == 0 {
				cut.down()
				cut.up()
			}
		}
		errc <- nil
	}()
	for want := uint64(1); want <= total; want++ {
		p := itRecv(t, s)
		var n uint64
		if err := p.Decode(&n); err != nil || p.Offset != want || n != want {
			t.Fatalf("publication %+v (%d, %v), want offset and data %d", p, n, err, want)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-s.Gaps():
		t.Fatalf("gap: %v", g)
	default:
	}
	if cut.dialCount() < 2 {
		t.Fatal("no reconnection happened")
	}
}
