package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

var encodings = []codec.Encoding{codec.JSON, codec.Msgpack}

type chatMsg struct {
	Text string `json:"text"`
	N    int    `json:"n"`
}

func TestDialNegotiatesAndIdentifies(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			srv := newFakeServer(t)
			opts := fastOptions(enc)
			opts.Token = "alice"
			opts.Header = http.Header{"X-Test": {"yes"}}
			cl := dial(t, srv.url, opts)

			if got := cl.ID(); got != "fake-1" {
				t.Errorf("ID() = %q, want fake-1", got)
			}
			if got := cl.User(); got != "alice" {
				t.Errorf("User() = %q, want alice", got)
			}
			if got := cl.State(); got != StateConnected {
				t.Errorf("State() = %v, want connected", got)
			}
			if got := cl.Encoding(); got != enc {
				t.Errorf("Encoding() = %v, want %v", got, enc)
			}
			srv.mu.Lock()
			h, proto := srv.headers[0], srv.protocols[0]
			srv.mu.Unlock()
			if got := h.Get("Authorization"); got != "Bearer alice" {
				t.Errorf("Authorization = %q", got)
			}
			if got := h.Get("X-Test"); got != "yes" {
				t.Errorf("X-Test = %q", got)
			}
			if proto != enc.Subprotocol() {
				t.Errorf("negotiated %q, want %q", proto, enc.Subprotocol())
			}
		})
	}
}

func TestZeroOptionsWork(t *testing.T) {
	srv := newFakeServer(t)
	cl := dial(t, srv.url, Options{})
	if cl.Encoding() != codec.JSON {
		t.Fatalf("default encoding %v, want json", cl.Encoding())
	}
	if err := cl.Ping(testCtx(t)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if got := cl.User(); got != "" {
		t.Fatalf("anonymous User() = %q", got)
	}
}

func TestPublishSubscribeAcrossEncodings(t *testing.T) {
	for _, pubEnc := range encodings {
		for _, subEnc := range encodings {
			t.Run(pubEnc.String()+"->"+subEnc.String(), func(t *testing.T) {
				srv := newFakeServer(t)
				pub := dial(t, srv.url, fastOptions(pubEnc))
				sub := dial(t, srv.url, fastOptions(subEnc))
				s := subscribe(t, sub, "chat", SubscribeOptions{})
				ctx := testCtx(t)
				for n := 1; n <= 5; n++ {
					off, err := pub.Publish(ctx, "chat", chatMsg{Text: "hi", N: n})
					if err != nil {
						t.Fatalf("Publish: %v", err)
					}
					if off != uint64(n) {
						t.Fatalf("Publish offset %d, want %d", off, n)
					}
				}
				for n := 1; n <= 5; n++ {
					p := recv(t, s)
					var m chatMsg
					if err := p.Decode(&m); err != nil {
						t.Fatalf("Decode(%q): %v", p.Data, err)
					}
					if p.Offset != uint64(n) || m.N != n || m.Text != "hi" {
						t.Fatalf("publication %d: offset %d, %+v", n, p.Offset, m)
					}
					if p.Channel != "chat" || p.Epoch == "" || p.Encoding != subEnc || p.Info.Client != pub.ID() {
						t.Fatalf("publication %d: %+v", n, p)
					}
				}
				if pos := s.Position(); pos.Offset != 5 {
					t.Fatalf("Position() = %+v, want offset 5", pos)
				}
			})
		}
	}
}

func TestErrorRepliesAreTyped(t *testing.T) {
	tests := []struct {
		code string
		want error
	}{
		{code: codec.CodeBadRequest, want: ErrBadRequest},
		{code: codec.CodeUnknownOp, want: ErrUnknownOp},
		{code: codec.CodeUnauthorized, want: ErrUnauthorized},
		{code: codec.CodeForbidden, want: ErrForbidden},
		{code: codec.CodeRateLimited, want: ErrRateLimited},
		{code: codec.CodeTooLarge, want: ErrTooLarge},
		{code: codec.CodeInternal, want: ErrInternal},
	}
	srv := newFakeServer(t)
	// Commands on channel "err.<code>" get that error reply.
	srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
		code, ok := strings.CutPrefix(string(cmd.Channel), "err.")
		if ok {
			fc.write(codec.AppendError(nil, fc.enc, cmd.ID, cmd.HasID, code, "boom"))
		}
		return ok
	})
	cl := dial(t, srv.url, fastOptions(codec.JSON))
	ctx := testCtx(t)
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			ch := "err." + tt.code
			_, pubErr := cl.Publish(ctx, ch, 1)
			_, presErr := cl.Presence(ctx, ch)
			_, _, histErr := cl.History(ctx, ch, 0)
			_, subErr := cl.Subscribe(ctx, ch, SubscribeOptions{})
			for name, err := range map[string]error{"Publish": pubErr, "Presence": presErr, "History": histErr, "Subscribe": subErr} {
				if !errors.Is(err, tt.want) {
					t.Errorf("%s: %v, want errors.Is %v", name, err, tt.want)
				}
				var e *Error
				if !errors.As(err, &e) || e.Code != tt.code || e.Message != "boom" {
					t.Errorf("%s: %#v, want *Error{%s, boom}", name, err, tt.code)
				}
				for _, other := range tests {
					if other.code != tt.code && errors.Is(err, other.want) {
						t.Errorf("%s: %v also matches %v", name, err, other.want)
					}
				}
			}
			// A refused subscribe leaves nothing behind.
			if s := cl.subscription(ch); s != nil {
				t.Errorf("refused subscription still registered")
			}
		})
	}
	t.Run("bad channel name", func(t *testing.T) {
		_, err := cl.Subscribe(ctx, "no spaces allowed", SubscribeOptions{})
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("Subscribe(bad name): %v, want ErrBadRequest", err)
		}
	})
}

func TestReconnectRecoversWithoutGap(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			srv := newFakeServer(t)
			rec := &stateRecorder{}
			opts := fastOptions(enc)
			opts.OnStateChange = rec.record
			cl := dial(t, srv.url, opts)
			s := subscribe(t, cl, "news", SubscribeOptions{})
			for i := 1; i <= 3; i++ {
				srv.publish("news", fmt.Sprintf(`{"i":%d}`, i))
			}
			if got := recvOffsets(t, s, 3); !slices.Equal(got, []uint64{1, 2, 3}) {
				t.Fatalf("before drop: offsets %v", got)
			}
			epoch := s.Position().Epoch
			firstID := cl.ID()

			// Keep the client out while 4..6 are published.
			srv.setReject(http.StatusServiceUnavailable, "restarting")
			srv.dropAll()
			eventually(t, "a refused reconnection attempt", func() bool {
				srv.mu.Lock()
				defer srv.mu.Unlock()
				return len(srv.headers) >= 2
			})
			for i := 4; i <= 6; i++ {
				srv.publish("news", fmt.Sprintf(`{"i":%d}`, i))
			}
			srv.setReject(0, "")

			if got := recvOffsets(t, s, 3); !slices.Equal(got, []uint64{4, 5, 6}) {
				t.Fatalf("after reconnect: offsets %v, want [4 5 6]", got)
			}
			srv.publish("news", `{"i":7}`)
			if p := recv(t, s); p.Offset != 7 {
				t.Fatalf("live after reconnect: offset %d, want 7", p.Offset)
			}
			select {
			case g := <-s.Gaps():
				t.Fatalf("unexpected gap %v", g)
			default:
			}

			subs := srv.commands(codec.OpSubscribe)
			last := subs[len(subs)-1]
			if last.conn != 2 || !last.hasRecover || last.recover != (codec.StreamPosition{Epoch: epoch, Offset: 3}) {
				t.Fatalf("resubscribe %+v, want recover {%s 3} on connection 2", last, epoch)
			}
			if cl.ID() == firstID {
				t.Fatalf("ID() unchanged after reconnect: %q", firstID)
			}
			ev := rec.wait(t, StateDisconnected)
			var ce *CloseError
			if !errors.As(ev.Err, &ce) || ce.Code != CloseAbnormal {
				t.Fatalf("disconnect event %+v, want *CloseError 1006", ev)
			}
			rec.wait(t, StateConnecting)
			eventually(t, "connected event", func() bool {
				evs := rec.events()
				return evs[len(evs)-1].To == StateConnected
			})
		})
	}
}

func TestRecoveryGapIsReported(t *testing.T) {
	tests := []struct {
		name     string
		lose     func(srv *fakeServer)
		want     GapError // Channel, From and To.Epoch filled in by the test
		wantNext []uint64 // offsets delivered after the gap
	}{
		{
			name: "history trimmed",
			lose: func(srv *fakeServer) {
				for i := 4; i <= 8; i++ {
					srv.publish("g", `"x"`)
				}
				srv.loseHistory("g", 2, false) // keeps 7, 8
			},
			want:     GapError{Missing: 3, Known: true, To: codec.StreamPosition{Offset: 6}},
			wantNext: []uint64{7, 8, 9},
		},
		{
			name: "epoch changed",
			lose: func(srv *fakeServer) {
				srv.loseHistory("g", 0, true)
				srv.publish("g", `"x"`)
				srv.publish("g", `"x"`)
			},
			want:     GapError{Known: false, To: codec.StreamPosition{Offset: 2}},
			wantNext: []uint64{3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t)
			cl := dial(t, srv.url, fastOptions(codec.JSON))
			s := subscribe(t, cl, "g", SubscribeOptions{})
			for range 3 {
				srv.publish("g", `"x"`)
			}
			recvOffsets(t, s, 3)
			from := s.Position()

			srv.setReject(http.StatusServiceUnavailable, "")
			srv.dropAll()
			eventually(t, "client disconnected", func() bool { return cl.State() != StateConnected })
			tt.lose(srv)
			srv.setReject(0, "")

			var g *GapError
			select {
			case g = <-s.Gaps():
			case <-time.After(10 * time.Second):
				t.Fatal("no gap reported")
			}
			if !errors.Is(g, ErrHistoryLost) {
				t.Fatalf("gap %v does not match ErrHistoryLost", g)
			}
			want := tt.want
			want.Channel, want.From = "g", from
			srv.mu.Lock()
			want.To.Epoch = srv.channels["g"].epoch
			srv.mu.Unlock()
			if *g != want {
				t.Fatalf("gap %+v, want %+v", *g, want)
			}
			srv.publish("g", `"x"`)
			if got := recvOffsets(t, s, len(tt.wantNext)); !slices.Equal(got, tt.wantNext) {
				t.Fatalf("after gap: offsets %v, want %v", got, tt.wantNext)
			}
		})
	}
}

func TestCallbacksDeliverGapInOrder(t *testing.T) {
	srv := newFakeServer(t)
	cl := dial(t, srv.url, fastOptions(codec.Msgpack))
	var mu sync.Mutex
	var log []string
	add := func(s string) {
		mu.Lock()
		log = append(log, s)
		mu.Unlock()
	}
	s := subscribe(t, cl, "cb", SubscribeOptions{
		OnPublication: func(p Publication) { add(fmt.Sprintf("pub %d", p.Offset)) },
		OnGap:         func(g *GapError) { add(fmt.Sprintf("gap %d", g.Missing)) },
	})
	if s.C() != nil {
		t.Fatalf("C() is not nil with OnPublication")
	}
	srv.publish("cb", `1`)
	eventually(t, "pub 1", func() bool { mu.Lock(); defer mu.Unlock(); return len(log) == 1 })

	srv.setReject(http.StatusServiceUnavailable, "")
	srv.dropAll()
	eventually(t, "client disconnected", func() bool { return cl.State() != StateConnected })
	for range 4 {
		srv.publish("cb", `1`)
	}
	srv.loseHistory("cb", 1, false) // keeps 5
	srv.setReject(0, "")

	want := []string{"pub 1", "gap 3", "pub 5"}
	eventually(t, "recovery", func() bool { mu.Lock(); defer mu.Unlock(); return len(log) >= len(want) })
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(log, want) {
		t.Fatalf("callbacks %q, want %q", log, want)
	}
}

// mkPub builds a publication of channel with data {"n":off}.
func mkPub(t *testing.T, channel, epoch string, off uint64) *codec.Publication {
	t.Helper()
	js := fmt.Appendf(nil, `{"n":%d}`, off)
	mp, err := codec.Transcode(nil, codec.JSON, codec.Msgpack, js)
	if err != nil {
		t.Fatal(err)
	}
	return &codec.Publication{Channel: channel, Epoch: epoch, Offset: off, Info: codec.ClientInfo{Client: "server"}, JSON: js, Msgpack: mp}
}

func TestDuplicatesDroppedAndOrderKept(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			srv := newFakeServer(t)
			cl := dial(t, srv.url, fastOptions(enc))
			const epoch = "E"
			// The server sends pushes around the subscribe reply: 5 and 6
			// before it (6 is newer than the reply's publications), then the
			// reply recovering 3..5, then 6 again and 7.
			srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
				if cmd.Op != codec.OpSubscribe {
					return false
				}
				fc.write(codec.AppendPub(nil, fc.enc, mkPub(t, "d", epoch, 5)))
				fc.write(codec.AppendPub(nil, fc.enc, mkPub(t, "d", epoch, 6)))
				reply := []*codec.Publication{mkPub(t, "d", epoch, 3), mkPub(t, "d", epoch, 4), mkPub(t, "d", epoch, 5)}
				fc.write(codec.AppendSubscribeOK(nil, fc.enc, cmd.ID, codec.StreamPosition{Epoch: epoch, Offset: 5}, true, reply))
				fc.write(codec.AppendPub(nil, fc.enc, mkPub(t, "d", epoch, 6)))
				fc.write(codec.AppendPub(nil, fc.enc, mkPub(t, "d", epoch, 4)))
				fc.write(codec.AppendPub(nil, fc.enc, mkPub(t, "d", epoch, 7)))
				return true
			})
			s := subscribe(t, cl, "d", SubscribeOptions{Recover: &codec.StreamPosition{Epoch: epoch, Offset: 2}})
			got := recvOffsets(t, s, 5)
			if !slices.Equal(got, []uint64{3, 4, 5, 6, 7}) {
				t.Fatalf("offsets %v, want [3 4 5 6 7]", got)
			}
			if err := cl.Ping(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			noPublication(t, s)
			sub := srv.commands(codec.OpSubscribe)[0]
			if !sub.hasRecover || sub.recover != (codec.StreamPosition{Epoch: epoch, Offset: 2}) {
				t.Fatalf("subscribe %+v, want recover {E 2}", sub)
			}
		})
	}
}

func TestServerCloseCodes(t *testing.T) {
	tests := []struct {
		code       int
		reason     string
		retryAfter time.Duration
	}{
		{code: CloseServiceRestart, reason: "retry_after_ms=300", retryAfter: 300 * time.Millisecond},
		{code: ClosePolicy, reason: "slow consumer"},
		{code: CloseGoingAway, reason: "idle timeout"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			srv := newFakeServer(t)
			rec := &stateRecorder{}
			opts := fastOptions(codec.JSON)
			opts.OnStateChange = rec.record
			cl := dial(t, srv.url, opts)
			s := subscribe(t, cl, "c", SubscribeOptions{})

			start := time.Now()
			srv.closeAll(tt.code, tt.reason)
			eventually(t, "reconnection", func() bool { return srv.connections() == 2 })
			elapsed := time.Since(start)

			ev := rec.wait(t, StateDisconnected)
			var ce *CloseError
			if !errors.As(ev.Err, &ce) || ce.Code != tt.code || ce.Reason != tt.reason || ce.RetryAfter != tt.retryAfter {
				t.Fatalf("disconnect error %#v, want code %d reason %q retry %v", ev.Err, tt.code, tt.reason, tt.retryAfter)
			}
			if elapsed < tt.retryAfter || ev.Delay < tt.retryAfter {
				t.Fatalf("reconnected after %v (delay %v), want >= %v", elapsed, ev.Delay, tt.retryAfter)
			}
			if maxDelay := tt.retryAfter + max(opts.Reconnect.MaxBackoff, tt.retryAfter/2); ev.Delay > maxDelay {
				t.Fatalf("delay %v, want <= %v", ev.Delay, maxDelay)
			}
			// The client answered the close frame with the same code.
			eventually(t, "close echo", func() bool { return slices.Contains(srv.receivedCloseCodes(), tt.code) })
			// And resubscribed.
			eventually(t, "resubscribe", func() bool { return len(srv.commands(codec.OpSubscribe)) == 2 })
			eventually(t, "connected", func() bool { return cl.State() == StateConnected })
			srv.publish("c", `1`)
			if p := recv(t, s); p.Offset != 1 {
				t.Fatalf("offset %d", p.Offset)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 250 * time.Millisecond, max: 30 * time.Second}
	ceilings := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second,
		4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for attempt, want := range ceilings {
		if got := b.ceiling(attempt); got != want {
			t.Errorf("ceiling(%d) = %v, want %v", attempt, got, want)
		}
	}
	if got := b.ceiling(1000); got != 30*time.Second {
		t.Errorf("ceiling(1000) = %v", got)
	}

	t.Run("full jitter", func(t *testing.T) {
		for attempt := range 5 {
			c := b.ceiling(attempt)
			low := false
			for range 1000 {
				d := b.delay(attempt, nil)
				if d < 0 || d > c {
					t.Fatalf("delay(%d) = %v outside [0, %v]", attempt, d, c)
				}
				low = low || d < c/2
			}
			if !low {
				t.Fatalf("delay(%d) never below half the ceiling: not full jitter", attempt)
			}
		}
	})

	t.Run("retry after", func(t *testing.T) {
		tests := []struct {
			name   string
			cause  error
			rnd    func(time.Duration) time.Duration
			want   time.Duration
			attemp int
		}{
			{name: "no jitter", cause: newCloseError(1012, "retry_after_ms=300"), rnd: func(time.Duration) time.Duration { return 0 }, want: 300 * time.Millisecond},
			{name: "max jitter is min backoff", cause: newCloseError(1012, "retry_after_ms=300"), rnd: func(n time.Duration) time.Duration { return n }, want: 550 * time.Millisecond},
			{name: "max jitter is half", cause: newCloseError(1012, "retry_after_ms=4000"), rnd: func(n time.Duration) time.Duration { return n }, want: 6 * time.Second},
			{name: "1012 without hint", cause: newCloseError(1012, "restart"), rnd: func(n time.Duration) time.Duration { return n }, want: 250 * time.Millisecond},
			{name: "other code ignores hint", cause: newCloseError(1008, "retry_after_ms=300"), rnd: func(n time.Duration) time.Duration { return n }, want: 250 * time.Millisecond},
			{name: "wrapped", cause: fmt.Errorf("x: %w", newCloseError(1012, "retry_after_ms=10")), rnd: func(time.Duration) time.Duration { return 0 }, want: 10 * time.Millisecond},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				b := b
				b.rnd = tt.rnd
				if got := b.delay(0, tt.cause); got != tt.want {
					t.Fatalf("delay = %v, want %v", got, tt.want)
				}
			})
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	tests := []struct {
		reason string
		want   time.Duration
		ok     bool
	}{
		{reason: "retry_after_ms=1500", want: 1500 * time.Millisecond, ok: true},
		{reason: "draining; retry_after_ms=20", want: 20 * time.Millisecond, ok: true},
		{reason: "retry_after_ms=0", want: 0, ok: true},
		{reason: "retry_after_ms=x", ok: false},
		{reason: "retry_after_ms=-5", ok: false},
		{reason: "", ok: false},
		{reason: "restart", ok: false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.reason)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.reason, got, ok, tt.want, tt.ok)
		}
	}
}

func TestContextCancellation(t *testing.T) {
	srv := newFakeServer(t)
	held := make(chan func(), 2)
	var once sync.Once
	srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
		id := cmd.ID
		switch {
		case cmd.Op == codec.OpPublish && string(cmd.Channel) == "slow":
			held <- func() { fc.write(codec.AppendPublishOK(nil, fc.enc, id, 999)) }
			return true
		case cmd.Op == codec.OpSubscribe && string(cmd.Channel) == "slowsub":
			hold := false
			once.Do(func() { hold = true })
			if hold {
				held <- func() {
					fc.write(codec.AppendSubscribeOK(nil, fc.enc, id, codec.StreamPosition{Epoch: "x", Offset: 0}, false, nil))
				}
			}
			return hold
		}
		return false
	})
	cl := dial(t, srv.url, fastOptions(codec.JSON))

	t.Run("publish", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := cl.Publish(ctx, "slow", 1)
			errc <- err
		}()
		eventually(t, "publish at the server", func() bool { return len(srv.commands(codec.OpPublish)) == 1 })
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Publish: %v, want context.Canceled", err)
		}
		(<-held)() // the late reply is discarded
		off, err := cl.Publish(testCtx(t), "fast", 1)
		if err != nil || off != 1 {
			t.Fatalf("next Publish = %d, %v; want 1, nil", off, err)
		}
	})

	t.Run("subscribe", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := cl.Subscribe(ctx, "slowsub", SubscribeOptions{})
			errc <- err
		}()
		eventually(t, "subscribe at the server", func() bool { return len(srv.commands(codec.OpSubscribe)) == 1 })
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Subscribe: %v, want context.Canceled", err)
		}
		eventually(t, "unsubscribe of the abandoned subscription", func() bool {
			return len(srv.commands(codec.OpUnsubscribe)) == 1
		})
		(<-held)() // the late reply is discarded
		s := subscribe(t, cl, "slowsub", SubscribeOptions{})
		srv.publish("slowsub", `1`)
		if p := recv(t, s); p.Offset != 1 {
			t.Fatalf("offset %d", p.Offset)
		}
	})

	t.Run("deadline while disconnected", func(t *testing.T) {
		srv.setReject(http.StatusServiceUnavailable, "")
		srv.dropAll()
		eventually(t, "client disconnected", func() bool { return cl.State() != StateConnected })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := cl.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Ping while disconnected: %v, want DeadlineExceeded", err)
		}
		srv.setReject(0, "")
	})
}

func TestCommandsWaitForReconnection(t *testing.T) {
	srv := newFakeServer(t)
	cl := dial(t, srv.url, fastOptions(codec.JSON))
	srv.setReject(http.StatusServiceUnavailable, "")
	srv.dropAll()
	eventually(t, "client disconnected", func() bool { return cl.State() != StateConnected })

	type result struct {
		off uint64
		err error
	}
	done := make(chan result, 1)
	go func() {
		off, err := cl.Publish(testCtx(t), "q", "queued")
		done <- result{off, err}
	}()
	srv.setReject(0, "")
	r := <-done
	if r.err != nil || r.off != 1 {
		t.Fatalf("Publish = %d, %v; want 1, nil", r.off, r.err)
	}
	if c := srv.commands(codec.OpPublish); len(c) != 1 || c[0].conn != 2 {
		t.Fatalf("publish commands %+v, want one on connection 2", c)
	}
}

func TestInflightCommandsWhenConnectionDrops(t *testing.T) {
	srv := newFakeServer(t)
	// The first publish and the first presence kill their connection
	// instead of answering.
	srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
		if fc.n == 1 && (cmd.Op == codec.OpPublish || cmd.Op == codec.OpPresence) {
			fc.ws.NetConn().Close()
			return true
		}
		return false
	})

	t.Run("publish is not resent", func(t *testing.T) {
		cl := dial(t, srv.url, fastOptions(codec.JSON))
		_, err := cl.Publish(testCtx(t), "p", 1)
		var ce *CloseError
		if !errors.Is(err, ErrConnectionLost) || !errors.As(err, &ce) {
			t.Fatalf("Publish: %v, want ErrConnectionLost wrapping a *CloseError", err)
		}
		if n := len(srv.commands(codec.OpPublish)); n != 1 {
			t.Fatalf("%d publish commands, want 1", n)
		}
	})

	t.Run("presence is resent", func(t *testing.T) {
		srv := newFakeServer(t)
		srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
			if fc.n == 1 && cmd.Op == codec.OpPresence {
				fc.ws.NetConn().Close()
				return true
			}
			return false
		})
		cl := dial(t, srv.url, fastOptions(codec.JSON))
		if _, err := cl.Presence(testCtx(t), "p"); err != nil {
			t.Fatalf("Presence: %v", err)
		}
		if c := srv.commands(codec.OpPresence); len(c) != 2 || c[1].conn != 2 {
			t.Fatalf("presence commands %+v, want the second on connection 2", c)
		}
	})
}

func TestCloseIsIdempotent(t *testing.T) {
	srv := newFakeServer(t)
	rec := &stateRecorder{}
	opts := fastOptions(codec.JSON)
	opts.OnStateChange = rec.record
	cl, err := Dial(testCtx(t), srv.url, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := subscribe(t, cl, "c", SubscribeOptions{Presence: true})
	for range 2 {
		if err := cl.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	if codes := srv.receivedCloseCodes(); !slices.Equal(codes, []int{CloseNormal}) {
		t.Fatalf("server received close codes %v, want [1000]", codes)
	}
	ctx := testCtx(t)
	if _, err := cl.Publish(ctx, "c", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if _, err := cl.Subscribe(ctx, "d", SubscribeOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
	if err := cl.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ping after Close: %v", err)
	}
	for range s.C() {
	}
	for range s.Presence() {
	}
	if !errors.Is(s.Err(), ErrClosed) {
		t.Fatalf("sub.Err() = %v, want ErrClosed", s.Err())
	}
	if err := s.Unsubscribe(ctx); err != nil {
		t.Fatalf("Unsubscribe after Close: %v", err)
	}
	if cl.State() != StateClosed {
		t.Fatalf("State() = %v", cl.State())
	}
	eventually(t, "closed event", func() bool {
		evs := rec.events()
		return len(evs) > 0 && evs[len(evs)-1].To == StateClosed && evs[len(evs)-1].Err == nil
	})
	if n := srv.connections(); n != 1 {
		t.Fatalf("%d connections, want 1 (no reconnect after Close)", n)
	}
}

func TestPresence(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			srv := newFakeServer(t)
			a := dial(t, srv.url, fastOptions(enc))
			b := dial(t, srv.url, fastOptions(enc))
			sa := subscribe(t, a, "room", SubscribeOptions{Presence: true})
			if sa.Presence() == nil {
				t.Fatal("Presence() is nil with Presence: true")
			}
			sb := subscribe(t, b, "room", SubscribeOptions{})
			if sb.Presence() != nil {
				t.Fatal("Presence() is not nil without Presence: true")
			}
			want := PresenceEvent{Channel: "room", Kind: Join, Info: codec.ClientInfo{Client: b.ID()}}
			if ev := <-sa.Presence(); ev != want {
				t.Fatalf("presence event %+v, want %+v", ev, want)
			}
			clients, err := a.Presence(testCtx(t), "room")
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, c := range clients {
				ids = append(ids, c.Client)
			}
			slices.Sort(ids)
			if wantIDs := []string{a.ID(), b.ID()}; !slices.Equal(ids, wantIDs) {
				t.Fatalf("Presence() = %v, want %v", ids, wantIDs)
			}
			if err := sb.Unsubscribe(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			want.Kind = Leave
			if ev := <-sa.Presence(); ev != want {
				t.Fatalf("presence event %+v, want %+v", ev, want)
			}
		})
	}
}

func TestHistoryAndRecoverFromIt(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			srv := newFakeServer(t)
			cl := dial(t, srv.url, fastOptions(enc))
			ctx := testCtx(t)
			for n := 1; n <= 5; n++ {
				if _, err := cl.Publish(ctx, "h", chatMsg{N: n}); err != nil {
					t.Fatal(err)
				}
			}
			tests := []struct {
				limit int
				want  []int
			}{
				{limit: 3, want: []int{3, 4, 5}},
				{limit: 0, want: []int{1, 2, 3, 4, 5}},
				{limit: 50, want: []int{1, 2, 3, 4, 5}},
			}
			var pos codec.StreamPosition
			for _, tt := range tests {
				var pubs []Publication
				var err error
				pos, pubs, err = cl.History(ctx, "h", tt.limit)
				if err != nil {
					t.Fatal(err)
				}
				var got []int
				for _, p := range pubs {
					var m chatMsg
					if err := p.Decode(&m); err != nil {
						t.Fatal(err)
					}
					if p.Offset != uint64(m.N) || p.Channel != "h" || p.Epoch != pos.Epoch {
						t.Fatalf("history publication %+v", p)
					}
					got = append(got, m.N)
				}
				if !slices.Equal(got, tt.want) || pos.Offset != 5 || pos.Epoch == "" {
					t.Fatalf("History(limit %d) = %v at %+v, want %v at offset 5", tt.limit, got, pos, tt.want)
				}
			}
			// Continue exactly after what History returned.
			for n := 6; n <= 7; n++ {
				if _, err := cl.Publish(ctx, "h", chatMsg{N: n}); err != nil {
					t.Fatal(err)
				}
			}
			s := subscribe(t, cl, "h", SubscribeOptions{Recover: &pos})
			if got := recvOffsets(t, s, 2); !slices.Equal(got, []uint64{6, 7}) {
				t.Fatalf("recovered %v, want [6 7]", got)
			}
		})
	}
}

func TestPings(t *testing.T) {
	t.Run("sent every interval", func(t *testing.T) {
		srv := newFakeServer(t)
		opts := fastOptions(codec.JSON)
		opts.PingInterval = 5 * time.Millisecond
		dial(t, srv.url, opts)
		eventually(t, "3 pings", func() bool { return len(srv.commands(codec.OpPing)) >= 3 })
	})
	t.Run("unanswered ping reconnects", func(t *testing.T) {
		srv := newFakeServer(t)
		srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
			return fc.n == 1 && cmd.Op == codec.OpPing
		})
		rec := &stateRecorder{}
		opts := fastOptions(codec.JSON)
		opts.PingInterval = 10 * time.Millisecond
		opts.PingTimeout = 50 * time.Millisecond
		opts.OnStateChange = rec.record
		dial(t, srv.url, opts)
		eventually(t, "reconnection", func() bool { return srv.connections() == 2 })
		ev := rec.wait(t, StateDisconnected)
		if ev.Err == nil || !strings.Contains(ev.Err.Error(), "ping") {
			t.Fatalf("disconnect error %v, want a ping timeout", ev.Err)
		}
	})
	t.Run("server ping frames answered", func(t *testing.T) {
		srv := newFakeServer(t)
		dial(t, srv.url, fastOptions(codec.JSON))
		fc := srv.liveConns()[0]
		got := make(chan string, 1)
		fc.ws.SetPongHandler(func(data string) error { got <- data; return nil })
		fc.wmu.Lock()
		err := fc.ws.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(time.Second))
		fc.wmu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		select {
		case data := <-got:
			if data != "hello" {
				t.Fatalf("pong %q, want hello", data)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no pong")
		}
	})
}

func TestReconnectDisabled(t *testing.T) {
	srv := newFakeServer(t)
	rec := &stateRecorder{}
	opts := fastOptions(codec.JSON)
	opts.Reconnect.Disabled = true
	opts.OnStateChange = rec.record
	cl := dial(t, srv.url, opts)
	s := subscribe(t, cl, "c", SubscribeOptions{})
	srv.publish("c", `1`)
	srv.closeAll(ClosePolicy, "slow consumer")
	// Publications received before the loss are still delivered.
	if p := recv(t, s); p.Offset != 1 {
		t.Fatalf("offset %d", p.Offset)
	}
	if _, ok := <-s.C(); ok {
		t.Fatal("C() not closed")
	}
	var ce *CloseError
	if err := s.Err(); !errors.Is(err, ErrClosed) || !errors.As(err, &ce) || ce.Code != ClosePolicy {
		t.Fatalf("sub.Err() = %v, want ErrClosed wrapping close 1008", err)
	}
	if _, err := cl.Publish(testCtx(t), "c", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish: %v, want ErrClosed", err)
	}
	if cl.State() != StateClosed {
		t.Fatalf("State() = %v", cl.State())
	}
	ev := rec.wait(t, StateClosed)
	if !errors.As(ev.Err, &ce) || ce.Reason != "slow consumer" {
		t.Fatalf("closed event %+v", ev)
	}
	if n := srv.connections(); n != 1 {
		t.Fatalf("%d connections, want 1", n)
	}
}

func TestHandshakeRefused(t *testing.T) {
	tests := []struct {
		status int
		want   error
	}{
		{status: http.StatusUnauthorized, want: ErrUnauthorized},
		{status: http.StatusForbidden, want: ErrForbidden},
		{status: http.StatusBadRequest, want: ErrBadRequest},
		{status: http.StatusServiceUnavailable},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			srv := newFakeServer(t)
			srv.setReject(tt.status, "nope")
			_, err := Dial(testCtx(t), srv.url, fastOptions(codec.JSON))
			var he *HandshakeError
			if !errors.As(err, &he) || he.StatusCode != tt.status || he.Body != "nope" {
				t.Fatalf("Dial: %#v, want *HandshakeError %d with body", err, tt.status)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("Dial: %v, want errors.Is %v", err, tt.want)
			}
		})
	}

	t.Run("on reconnect 401 closes the client", func(t *testing.T) {
		srv := newFakeServer(t)
		rec := &stateRecorder{}
		opts := fastOptions(codec.JSON)
		opts.OnStateChange = rec.record
		cl := dial(t, srv.url, opts)
		srv.setReject(http.StatusUnauthorized, "token expired")
		srv.dropAll()
		ev := rec.wait(t, StateClosed)
		if !errors.Is(ev.Err, ErrUnauthorized) {
			t.Fatalf("closed because %v, want ErrUnauthorized", ev.Err)
		}
		if err := cl.Ping(testCtx(t)); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("Ping: %v, want ErrClosed wrapping ErrUnauthorized", err)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		srv := newFakeServer(t)
		url := srv.url
		srv.hs.Close()
		if _, err := Dial(testCtx(t), url, fastOptions(codec.JSON)); err == nil {
			t.Fatal("Dial to a closed port succeeded")
		}
	})
}

func TestUnsubscribe(t *testing.T) {
	srv := newFakeServer(t)
	cl := dial(t, srv.url, fastOptions(codec.JSON))
	ctx := testCtx(t)
	s := subscribe(t, cl, "u", SubscribeOptions{})
	if _, err := cl.Subscribe(ctx, "u", SubscribeOptions{}); !errors.Is(err, ErrAlreadySubscribed) {
		t.Fatalf("second Subscribe: %v, want ErrAlreadySubscribed", err)
	}
	srv.publish("u", `1`)
	recv(t, s)
	if err := s.Unsubscribe(ctx); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	if c := srv.commands(codec.OpUnsubscribe); len(c) != 1 || c[0].channel != "u" {
		t.Fatalf("unsubscribe commands %+v", c)
	}
	srv.publish("u", `2`)
	for p := range s.C() {
		t.Fatalf("publication %d after Unsubscribe", p.Offset)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("Err() after Unsubscribe = %v", err)
	}
	if err := s.Unsubscribe(ctx); err != nil {
		t.Fatalf("second Unsubscribe: %v", err)
	}
	s2 := subscribe(t, cl, "u", SubscribeOptions{})
	srv.publish("u", `3`)
	if p := recv(t, s2); p.Offset != 3 {
		t.Fatalf("offset %d, want 3", p.Offset)
	}
}

func TestResubscribeRefused(t *testing.T) {
	srv := newFakeServer(t)
	srv.setIntercept(func(fc *fakeConn, cmd *codec.Command) bool {
		if fc.n == 2 && cmd.Op == codec.OpSubscribe {
			fc.write(codec.AppendError(nil, fc.enc, cmd.ID, cmd.HasID, codec.CodeForbidden, "not any more"))
			return true
		}
		return false
	})
	cl := dial(t, srv.url, fastOptions(codec.JSON))
	s := subscribe(t, cl, "r", SubscribeOptions{})
	srv.dropAll()
	for range s.C() {
	}
	if err := s.Err(); !errors.Is(err, ErrForbidden) {
		t.Fatalf("Err() = %v, want ErrForbidden", err)
	}
	if err := cl.Ping(testCtx(t)); err != nil {
		t.Fatalf("client unusable after a refused resubscribe: %v", err)
	}
	if cl.subscription("r") != nil {
		t.Fatal("refused subscription still registered")
	}
}

func TestPublishRaw(t *testing.T) {
	mp, err := msgpack.Marshal(map[string]int{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		enc  codec.Encoding
		raw  []byte
		ok   bool
	}{
		{name: "json object", enc: codec.JSON, raw: []byte(`{"a":1}`), ok: true},
		{name: "json string", enc: codec.JSON, raw: []byte(`"s"`), ok: true},
		{name: "json truncated", enc: codec.JSON, raw: []byte(`{"a":`)},
		{name: "json two values", enc: codec.JSON, raw: []byte(`1 2`)},
		{name: "json empty", enc: codec.JSON, raw: nil},
		{name: "msgpack map", enc: codec.Msgpack, raw: mp, ok: true},
		{name: "msgpack never-used byte", enc: codec.Msgpack, raw: []byte{0xc1}},
		{name: "msgpack two values", enc: codec.Msgpack, raw: []byte{0x01, 0x02}},
		{name: "msgpack empty", enc: codec.Msgpack, raw: nil},
	}
	srv := newFakeServer(t)
	clients := map[codec.Encoding]*Client{}
	subs := map[codec.Encoding]*Subscription{}
	for _, enc := range encodings {
		clients[enc] = dial(t, srv.url, fastOptions(enc))
		subs[enc] = subscribe(t, clients[enc], "raw."+enc.String(), SubscribeOptions{})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := clients[tt.enc].PublishRaw(testCtx(t), "raw."+tt.enc.String(), tt.raw)
			if !tt.ok {
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("PublishRaw(%x): %v, want ErrBadRequest", tt.raw, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PublishRaw: %v", err)
			}
			if p := recv(t, subs[tt.enc]); string(p.Data) != string(tt.raw) {
				t.Fatalf("received %x, want %x", p.Data, tt.raw)
			}
		})
	}
}

func TestProtocolViolationsReconnect(t *testing.T) {
	tests := []struct {
		name string
		typ  int
		msg  []byte
		code int // close code the client sends
	}{
		{name: "binary frame on json", typ: websocket.BinaryMessage, msg: []byte{0x80}, code: 1003},
		{name: "not an object", typ: websocket.TextMessage, msg: []byte(`[1]`), code: 1007},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newFakeServer(t)
			cl := dial(t, srv.url, fastOptions(codec.JSON))
			fc := srv.liveConns()[0]
			fc.wmu.Lock()
			fc.ws.WriteMessage(tt.typ, tt.msg)
			fc.wmu.Unlock()
			eventually(t, "reconnection", func() bool { return srv.connections() == 2 })
			eventually(t, "close code", func() bool { return slices.Contains(srv.receivedCloseCodes(), tt.code) })
			if err := cl.Ping(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestStateStrings(t *testing.T) {
	for s, want := range map[State]string{StateConnecting: "connecting", StateConnected: "connected", StateDisconnected: "disconnected", StateClosed: "closed"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
	if Join.String() != "join" || Leave.String() != "leave" {
		t.Errorf("presence kinds: %v %v", Join, Leave)
	}
}

// TestDropsDeliverEverythingOnce publishes while the connection is dropped
// over and over: the subscription must deliver every offset exactly once,
// in order, without a gap (the history is large enough to recover).
func TestDropsDeliverEverythingOnce(t *testing.T) {
	for _, enc := range encodings {
		t.Run(enc.String(), func(t *testing.T) {
			const total = 600
			srv := newFakeServer(t)
			srv.historySize = total
			opts := fastOptions(enc)
			opts.Reconnect.MaxBackoff = 5 * time.Millisecond
			cl := dial(t, srv.url, opts)
			s := subscribe(t, cl, "chaos", SubscribeOptions{Buffer: 1})

			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 1; i <= total; i++ {
					srv.publish("chaos", fmt.Sprint(i))
					if i%40 == 0 {
						srv.dropAll()
					}
				}
			}()
			for want := uint64(1); want <= total; want++ {
				p := recv(t, s)
				if p.Offset != want {
					t.Fatalf("offset %d, want %d", p.Offset, want)
				}
				var n uint64
				if err := p.Decode(&n); err != nil || n != want {
					t.Fatalf("data %x (%v), want %d", p.Data, err, want)
				}
			}
			<-done
			select {
			case g := <-s.Gaps():
				t.Fatalf("gap: %v", g)
			default:
			}
			if n := srv.connections(); n < 2 {
				t.Fatalf("only %d connections: the drops did not happen", n)
			}
		})
	}
}
