package engine

// TestAbuse is the abuse test of issue 9 ("Done when"): a server configured
// as a public deployment (tokens required, --allow-anonymous with narrow
// globs, a public URL, a trusted proxy in front, default limits except a
// per-address limit low enough to reach quickly) serves normal clients (an
// authenticated publisher with a numbered sequence at a steady rate, and
// authenticated subscribers in both encodings) while an anonymous and an
// authenticated attacker, each from one address, run every attack the
// controls are for, at the same time:
//
//	connection flood  upgrades past --max-conns-per-ip from 8 workers at
//	                  once: exactly the limit upgraded, the rest 429 with
//	                  Retry-After, forged X-Forwarded-For hops (a loopback
//	                  one included) changing nothing; the flood leaves by
//	                  FIN and RST, then upgrade requests reset as soon as
//	                  sent: the address's count goes back to what it
//	                  holds; sockets that never finish their handshake are
//	                  dropped after --handshake-timeout
//	command flood     pings (anonymous) or publishes (authenticated) sent
//	                  without reading: the burst served, then rate_limited,
//	                  then close 1008 "rate limit exceeded"
//	channel flood     subscribe to as many channels as allowed: exactly
//	                  --max-subscriptions-per-conn accepted, then too_large
//	oversized         a frame over --max-message-bytes: close 1009; a
//	                  publish that grows past it as JSON: too_large; 1 MB
//	                  publishes in a row: rate_limited past the publish
//	                  byte budget
//	forbidden         subscribe/history/presence/publish outside the globs,
//	                  refresh with another user's token: forbidden
//	tokens            expired, forged, tampered, alg none, over-long: 401
//	                  with WWW-Authenticate; the same in connect:
//	                  unauthorized; a browser that never connects and a
//	                  token that expires on a live socket: close 1008;
//	                  cross-site Origin 403, repeated Origin 400, bad key
//	                  400, a 20 KiB head 431
//	garbage frames    bad framing 1002, bad UTF-8 or undecodable 1007,
//	                  wrong frame kind 1003, a frame never finished 1002
//
// Every attacker action must get the status or code docs/PROTOCOL.md
// gives it; every normal subscriber must receive every publication, in
// order, with no gap or duplicate, and none may be closed; the publisher's
// every publish must succeed. Every close frame the server sent must be
// one an attack asked for, and every refusal counted under its cause.
// Once the attackers are gone the server must hold exactly the normal
// clients again (/metrics: connections, sockets, client addresses,
// subscriptions, channels), with no goroutine or descriptor left behind
// (polled against a baseline taken before, with deadlines), serve a
// newcomer, and have logged no panic.
//
//	go test -race -p 1 -run TestAbuse -v ./engine/
//
// It runs for about 15 s (most of it the channel flood, paced by the
// command rate, and the frame timeout), under a minute on a busy machine
// with -race.

import (
	"bufio"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine/auth"
	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

const (
	abPerIP       = 50 // --max-conns-per-ip
	abSubscribers = 6  // normal subscribers, alternating JSON and msgpack
	abChannel     = "chat:main"
	abPublicURL   = "https://chat.example"
	abPublishGap  = 20 * time.Millisecond // the publisher's pace: 50/s
	abFloodExtra  = 20                    // upgrades tried past the per-address limit
)

func TestAbuse(t *testing.T) {
	start := time.Now()
	s, _ := wpStartServer(t, Config{
		PublicURL:         abPublicURL,
		TrustedProxies:    []string{"127.0.0.1"},
		MaxConnsPerIP:     abPerIP,
		TokenSecret:       testSecret,
		AllowAnonymous:    true,
		AnonymousChannels: []string{"public:*"},
		AnonymousPublish:  []string{"public:chat"},
	})
	addr := s.Addr().String()
	base := takeBaseline(t, s)
	mintT := func(secret, sub string, channels, publish []string, ttl time.Duration) string {
		t.Helper()
		tok, err := auth.Mint([]byte(secret), auth.Claims{Subject: sub, Channels: channels, Publish: publish}, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	// ---- Normal clients. Each comes through the proxy from an address of
	// its own, so the per-address table holds them too.
	var stopping atomic.Bool // set before the test closes the normal clients
	subs := make([]*abSubscriber, abSubscribers)
	for i := range subs {
		tok := mintT(testSecret, fmt.Sprint("reader", i), []string{"chat:*"}, nil, time.Hour)
		subs[i] = newABSubscriber(t, s, fmt.Sprint("reader", i), fmt.Sprintf("198.51.100.%d", 10+i), tok, i%2 == 1, &stopping, start)
	}
	pubTok := mintT(testSecret, "newsroom", nil, []string{abChannel}, time.Hour)
	publisher, err := abOpen(s, abDialOpts{xff: "198.51.100.9", bearer: pubTok})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	t.Cleanup(func() { publisher.c.Close() })
	var published atomic.Int64
	stopPub, pubDone := make(chan struct{}), make(chan struct{})
	stopPublisher := sync.OnceFunc(func() { close(stopPub) })
	t.Cleanup(func() { stopPublisher(); <-pubDone })
	go func() {
		defer close(pubDone)
		tick := time.NewTicker(abPublishGap)
		defer tick.Stop()
		for n := 1; ; n++ {
			select {
			case <-stopPub:
				return
			case <-tick.C:
			}
			at := time.Since(start).Microseconds()
			r, err := publisher.call(map[string]any{"op": "publish", "channel": abChannel, "data": map[string]any{"n": n, "t": at}})
			if err != nil {
				t.Errorf("normal publisher: publish %d: %v", n, err)
				return
			}
			if r["ok"] != true || r["offset"] != float64(n) {
				t.Errorf("normal publisher: publish %d answered %.300v, want ok with offset %d", n, r, n)
				return
			}
			published.Store(int64(n))
		}
	}()
	// Deliveries are flowing before the attack starts.
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		for _, sub := range subs {
			if sub.last.Load() < 3 {
				return fmt.Errorf("%s received %d publications", sub.name, sub.last.Load())
			}
		}
		return nil
	})

	// ---- The attack.
	stolen := mintT(testSecret, "alice", []string{"*"}, []string{"*"}, -time.Minute) // expired
	attackers := []*abAttacker{
		{name: "anonymous", ip: "203.0.113.66", ownChannels: "public:flood.", pubChannel: "public:chat",
			expired: stolen, otherUser: mintT(testSecret, "alice", []string{"*"}, []string{"*"}, time.Hour)},
		{name: "authenticated", ip: "203.0.113.77", ownChannels: "mallory:flood.", pubChannel: "mallory:big",
			token:     mintT(testSecret, "mallory", []string{"chat:*", "mallory:*"}, []string{"mallory:*"}, time.Hour),
			expired:   mintT(testSecret, "mallory", []string{"chat:*", "mallory:*"}, []string{"mallory:*"}, -time.Minute),
			shortLife: mintT(testSecret, "mallory", []string{"chat:*"}, nil, 2*time.Second),
			otherUser: mintT(testSecret, "alice", []string{"*"}, []string{"*"}, time.Hour)},
	}
	var wg sync.WaitGroup
	attackStart := time.Now()
	for _, a := range attackers {
		a.t, a.s = t, s
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.run()
		}()
	}
	if !waitGroupFor(&wg, 3*time.Minute) {
		var running []string
		for _, a := range attackers {
			running = append(running, a.running()...)
		}
		t.Fatalf("the attack has not ended after 3 min; still running: %v", running)
	}
	attackTime := time.Since(attackStart)
	for _, a := range attackers {
		for _, n := range a.notes {
			t.Logf("%s attacker: %s", a.name, n)
		}
	}

	// ---- The server holds exactly the normal clients again.
	normal := abSubscribers + 1
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		for _, g := range []struct {
			name string
			want int
		}{
			{"fanout_connections", normal},
			{"fanout_sockets", normal},
			{"fanout_client_addresses", normal},
			{"fanout_hub_subscriptions", abSubscribers},
			{"fanout_hub_channels", 1},
		} {
			v, err := wpMetric(s, g.name)
			if err != nil {
				return err
			}
			if v != float64(g.want) {
				return fmt.Errorf("%s %v, want %d (the normal clients)", g.name, v, g.want)
			}
		}
		for _, a := range attackers {
			if n := s.adm.ips.count(netip.MustParseAddr(a.ip)); n != 0 {
				return fmt.Errorf("%s attacker's address still counts %d connections", a.name, n)
			}
		}
		return nil
	})
	// Every refusal was counted under its cause, and only those.
	for cause, want := range map[string]float64{
		"per_ip": 2 * abFloodExtra, "origin": 3, "bad_key": 1, "max_conns": 0, "accept_shed": 0,
	} {
		if got := admMetric(t, addr, refusedMetric(cause)); got != want {
			t.Errorf("%s: %v, want %v", refusedMetric(cause), got, want)
		}
	}
	if got := admMetric(t, addr, "fanout_hub_too_large_total"); got != 2 {
		t.Errorf("fanout_hub_too_large_total %v, want 2 (one amplified publish per attacker)", got)
	}
	budgetRefusals := 0
	for _, a := range attackers {
		budgetRefusals += a.budgetRefusals
	}
	for name, want := range map[string]float64{
		"fanout_publish_bytes_limited_total": float64(budgetRefusals),
		"fanout_auth_refused_total":          abTokenRefusals,
		"fanout_handshake_timeouts_total":    abSlowloris,
	} {
		if got := admMetric(t, addr, name); got != want {
			t.Errorf("%s %v, want %v", name, got, want)
		}
	}
	if got := admMetric(t, addr, "fanout_commands_rate_limited_total"); got < 2*(rateLimitStrikes-1) {
		t.Errorf("fanout_commands_rate_limited_total %v, want at least %v", got, 2*(rateLimitStrikes-1))
	}
	// Every close frame the server sent went to an attacker: exactly those
	// its attacks asked for, none of another code (a normal client closed
	// for any reason would add one).
	wantCloses := map[uint16]float64{
		CloseProtocolError: 1, // the stalled frame
		ClosePolicy:        4, // two command floods, the silent browser, the expired token
		CloseTooBig:        2, // two oversized frames
	}
	for _, g := range abGarbage {
		wantCloses[g.code] += 2
	}
	var closes []string
	for _, code := range []uint16{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1012} {
		got := admMetric(t, addr, fmt.Sprintf(`fanout_closes_sent_total{code="%d"}`, code))
		closes = append(closes, fmt.Sprintf("%d=%v", code, got))
		if got != wantCloses[code] {
			t.Errorf("close frames of code %d sent: %v, want %v", code, got, wantCloses[code])
		}
	}
	t.Logf("close frames sent: %s; auth refusals %v; handshake timeouts %v; commands rate limited %v; publishes over the byte budget %v",
		strings.Join(closes, " "), admMetric(t, addr, "fanout_auth_refused_total"), admMetric(t, addr, "fanout_handshake_timeouts_total"),
		admMetric(t, addr, "fanout_commands_rate_limited_total"), admMetric(t, addr, "fanout_publish_bytes_limited_total"))
	// Nothing left behind but the normal clients: each holds two
	// descriptors (its socket and the server's) and one goroutine here (its
	// reader), the publisher one.
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if n := openFDs(t); n > base.fds+2*normal {
			return fmt.Errorf("%d open descriptors, %d before the clients came, %d clients", n, base.fds, normal)
		}
		if n := runtime.NumGoroutine(); n > base.goroutines+normal+5 {
			return fmt.Errorf("%d goroutines, %d before the clients came, %d clients", n, base.goroutines, normal)
		}
		return nil
	})

	// ---- A newcomer is served: it subscribes and gets every publication
	// after its subscribe reply's offset.
	lateTok := mintT(testSecret, "latecomer", []string{"chat:*"}, nil, time.Hour)
	late := newABSubscriber(t, s, "latecomer", "198.51.100.99", lateTok, false, &stopping, start)
	subs = append(subs, late)
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if late.received.Load() < 3 {
			return fmt.Errorf("the latecomer received %d publications", late.received.Load())
		}
		return nil
	})

	// ---- Stop publishing: every subscriber has every publication.
	stopPublisher()
	select {
	case <-pubDone:
	case <-time.After(30 * time.Second):
		t.Fatal("the publisher did not stop")
	}
	total := published.Load()
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		for _, sub := range subs {
			if n := sub.last.Load(); n != total {
				return fmt.Errorf("%s at offset %d of %d", sub.name, n, total)
			}
		}
		return nil
	})
	stopping.Store(true)
	publisher.c.Close()
	var maxLatency time.Duration
	for _, sub := range subs {
		sub.c.c.Close()
		select {
		case <-sub.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s's reader did not end", sub.name)
		}
		maxLatency = max(maxLatency, time.Duration(sub.maxLatency.Load())*time.Microsecond)
	}
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := s.adm.held.Load(); n != 0 {
			return fmt.Errorf("%d sockets held after every client left", n)
		}
		return nil
	})
	base.checkNoGrowth(t)
	t.Logf("%d publications at %v intervals reached %d subscribers in order, without gap or duplicate; slowest delivery %v; attack %v; test %v",
		total, abPublishGap, len(subs), maxLatency.Round(time.Millisecond), attackTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// ---- Normal subscribers.

// abSubscriber is a normal subscriber of abChannel; its reader checks the
// order of what it receives and that its connection stays open.
type abSubscriber struct {
	name       string
	c          *abConn
	last       atomic.Int64 // offset of the newest publication received
	received   atomic.Int64
	maxLatency atomic.Int64 // microseconds
	done       chan struct{}
}

func newABSubscriber(t *testing.T, s *Server, name, xff, token string, useMsgpack bool, stopping *atomic.Bool, start time.Time) *abSubscriber {
	t.Helper()
	c, err := abOpen(s, abDialOpts{xff: xff, bearer: token, msgpack: useMsgpack})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	r, err := c.call(map[string]any{"op": "subscribe", "channel": abChannel})
	if err != nil || r["ok"] != true {
		t.Fatalf("%s: subscribe: %v %v", name, r, err)
	}
	off, _ := r["offset"].(float64)
	sub := &abSubscriber{name: name, c: c, done: make(chan struct{})}
	sub.last.Store(int64(off))
	// However the test ends, the reader has ended before it does.
	t.Cleanup(func() {
		stopping.Store(true)
		c.c.Close()
		<-sub.done
	})
	go func() {
		defer close(sub.done)
		for {
			m, err := c.read()
			if err != nil {
				if !stopping.Load() {
					t.Errorf("normal subscriber %s: connection ended during the test after offset %d: %v", name, sub.last.Load(), err)
				}
				return
			}
			if m["push"] != "pub" || m["channel"] != abChannel {
				t.Errorf("normal subscriber %s: unexpected message %.300v", name, m)
				continue
			}
			offset, _ := m["offset"].(float64)
			data, _ := m["data"].(map[string]any)
			n, _ := data["n"].(float64)
			at, _ := data["t"].(float64)
			want := sub.last.Load() + 1
			if int64(offset) != want || int64(n) != want {
				t.Errorf("normal subscriber %s: publication offset %v with n %v, want %d (gap, duplicate or reorder)", name, offset, n, want)
				return
			}
			if lat := time.Since(start).Microseconds() - int64(at); lat > sub.maxLatency.Load() {
				sub.maxLatency.Store(lat)
			}
			sub.received.Add(1)
			sub.last.Store(want)
		}
	}()
	return sub
}

// ---- Attackers.

const (
	// abSlowloris: sockets the anonymous attacker opens and never finishes
	// the handshake of.
	abSlowloris = 20
	// abTokenRefusals: the bad tokens the attackers present, as
	// fanout_auth_refused_total counts them: the anonymous attacker's 6
	// refused upgrades and 3 refused connects, the authenticated one's 7
	// upgrades, 3 connects and 2 refreshes (a refresh with another user's
	// valid token is forbidden, not a bad token).
	abTokenRefusals = 21
	// abHitAndRun: upgrade requests each attacker resets at once.
	abHitAndRun = 30
)

// abAttacker is one attacker, all of whose connections come from ip (the
// trusted proxy's X-Forwarded-For). token is empty for the anonymous one.
type abAttacker struct {
	t *testing.T
	s *Server

	name        string
	ip          string
	token       string // its valid token, "" for the anonymous attacker
	expired     string // an expired token
	shortLife   string // a token that expires while connected ("" for none)
	otherUser   string // a valid token of another user
	ownChannels string // prefix of channels it may subscribe to
	pubChannel  string // a channel it may publish to

	mu             sync.Mutex
	budgetRefusals int // 1 MB publishes refused by the publish byte budget
	notes          []string
	steps          map[string]bool // running
	holding        []*abConn       // kept open through the connection flood
}

func (a *abAttacker) note(format string, args ...any) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notes = append(a.notes, fmt.Sprintf(format, args...))
}

func (a *abAttacker) running() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var r []string
	for s, on := range a.steps {
		if on {
			r = append(r, a.name+"/"+s)
		}
	}
	sort.Strings(r)
	return r
}

// step runs f as the named step, reporting its error as the test's.
func (a *abAttacker) step(name string, f func() error) {
	a.mu.Lock()
	if a.steps == nil {
		a.steps = map[string]bool{}
	}
	a.steps[name] = true
	a.mu.Unlock()
	start := time.Now()
	err := f()
	a.mu.Lock()
	a.steps[name] = false
	a.mu.Unlock()
	if err != nil {
		a.t.Errorf("%s attacker, %s: %v", a.name, name, err)
		return
	}
	a.note("%-18s ok in %v", name, time.Since(start).Round(time.Millisecond))
}

// opts are the dial options of its ordinary connections.
func (a *abAttacker) opts(useMsgpack bool) abDialOpts {
	return abDialOpts{xff: a.ip, bearer: a.token, msgpack: useMsgpack}
}

// lines are the request lines of its raw upgrades.
func (a *abAttacker) lines(useMsgpack bool) []string {
	l := []string{"X-Forwarded-For: " + a.ip}
	if a.token != "" {
		l = append(l, "Authorization: Bearer "+a.token)
	}
	if useMsgpack {
		l = append(l, "Sec-WebSocket-Protocol: fanout.v1.msgpack")
	}
	return l
}

// run is the attack: first everything that stays under the per-address
// limit, at once; then, keeping two connections open (one of them holding
// its channel flood's subscriptions), the connection flood.
func (a *abAttacker) run() {
	steps := map[string]func() error{
		"forbidden":      a.forbidden,
		"channel flood":  a.channelFlood,
		"command flood":  a.commandFlood,
		"oversized":      a.oversized,
		"garbage frames": a.garbage,
		"tokens":         a.tokens,
	}
	if a.token == "" {
		steps["slow handshakes"] = a.slowHandshakes
	} else {
		steps["stalled frame"] = a.stalledFrame
	}
	var wg sync.WaitGroup
	for name, f := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.step(name, f)
		}()
	}
	wg.Wait()
	a.step("connection flood", a.connectionFlood)
	for _, c := range a.holding {
		c.c.Close()
	}
}

// forbidden tries what its globs do not allow, and a few commands that are
// not valid; each gets its error and the connection stays. The connection
// is kept for the connection flood.
func (a *abAttacker) forbidden() error {
	c, err := abOpen(a.s, a.opts(false))
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.holding = append(a.holding, c)
	a.mu.Unlock()
	type cmd = map[string]any
	steps := []struct {
		cmd  cmd
		code string // "" for ok
	}{
		{cmd{"op": "subscribe", "channel": "private:alice"}, "forbidden"},
		{cmd{"op": "history", "channel": "private:alice"}, "forbidden"},
		{cmd{"op": "presence", "channel": "private:alice"}, "forbidden"},
		{cmd{"op": "publish", "channel": "private:alice", "data": "x"}, "forbidden"},
		{cmd{"op": "publish", "channel": abChannel, "data": map[string]any{"n": -1}, "user": "newsroom"}, "forbidden"},
		{cmd{"op": "dance"}, "unknown_op"},
		{cmd{"op": "subscribe", "channel": "bad channel!"}, "bad_request"},
		{cmd{"op": "connect", "token": a.otherUser}, "bad_request"}, // already connected
	}
	if a.token == "" {
		steps = append(steps, []struct {
			cmd  cmd
			code string
		}{
			{cmd{"op": "subscribe", "channel": abChannel}, "forbidden"},
			{cmd{"op": "history", "channel": abChannel}, "forbidden"},
			{cmd{"op": "presence", "channel": abChannel}, "forbidden"},
			{cmd{"op": "publish", "channel": "public:news", "data": "x"}, "forbidden"},
			{cmd{"op": "refresh", "token": a.otherUser}, "bad_request"}, // anonymous: nothing to refresh
			{cmd{"op": "subscribe", "channel": "public:lobby", "name": "alice"}, ""},
			{cmd{"op": "publish", "channel": "public:chat", "data": "hi"}, ""},
		}...)
	} else {
		steps = append(steps, []struct {
			cmd  cmd
			code string
		}{
			{cmd{"op": "refresh", "token": a.otherUser}, "forbidden"}, // another sub
			{cmd{"op": "refresh", "token": a.expired}, "unauthorized"},
			{cmd{"op": "refresh", "token": abTamper(a.token)}, "unauthorized"},
			{cmd{"op": "publish", "channel": abChannel, "data": "x"}, "forbidden"}, // after the refreshes too
			{cmd{"op": "history", "channel": abChannel}, ""},                       // reading is allowed
			{cmd{"op": "presence", "channel": abChannel}, ""},
			{cmd{"op": "publish", "channel": "mallory:own", "data": "hi"}, ""},
		}...)
	}
	for _, st := range steps {
		if err := c.expect(st.cmd, st.code); err != nil {
			return err
		}
	}
	a.note("forbidden: %d commands answered as documented", len(steps))
	return nil
}

// channelFlood subscribes to as many channels as it may: exactly
// MaxSubscriptionsPerConn (default 1024) are accepted, then too_large. It
// goes as fast as the command rate allows (retrying a rate_limited
// subscribe after a token's time), and keeps the connection, with its
// subscriptions, for the connection flood.
func (a *abAttacker) channelFlood() error {
	c, err := abOpen(a.s, a.opts(a.token == ""))
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.holding = append(a.holding, c)
	a.mu.Unlock()
	limit := a.s.cfg.MaxSubscriptionsPerConn
	accepted, limited, tooLarge := 0, 0, 0
	for i := 0; i < limit+5; {
		r, err := c.call(map[string]any{"op": "subscribe", "channel": fmt.Sprint(a.ownChannels, i)})
		if err != nil {
			return fmt.Errorf("subscribe %d: %v", i, err)
		}
		switch code := errorCode(r); {
		case code == "rate_limited":
			limited++
			time.Sleep(11 * time.Millisecond) // a token comes back every 10 ms
			continue
		case code == "" && r["ok"] == true && i < limit:
			accepted++
		case code == "too_large" && i >= limit:
			tooLarge++
		default:
			return fmt.Errorf("subscribe %d (limit %d): %.300v", i, limit, r)
		}
		i++
	}
	// The connection is still served (once the command rate allows).
	if err := c.expectPatiently(map[string]any{"op": "ping"}, ""); err != nil {
		return err
	}
	a.note("channel flood: %d subscribes accepted, %d too_large, %d rate_limited on the way", accepted, tooLarge, limited)
	return nil
}

// commandFlood writes commands without reading (pings, or for the
// authenticated attacker publishes to its own channel): the burst is
// served, then rate_limited, then close 1008 "rate limit exceeded".
func (a *abAttacker) commandFlood() error {
	r, err := abRawOpen(a.s, a.lines(false)...)
	if err != nil {
		return err
	}
	defer r.nc.Close()
	const n = 3000
	var b []byte
	for i := 1; i <= n; i++ {
		cmd := fmt.Sprintf(`{"op":"ping","id":%d}`, i)
		if a.token != "" {
			cmd = fmt.Sprintf(`{"op":"publish","id":%d,"channel":"mallory:spam","data":%d}`, i, i)
		}
		b = append(b, frame(true, ws.OpText, []byte(cmd))...)
	}
	go func() { _, _ = r.nc.Write(b) }() // fails once the server has closed
	oks, limited := 0, 0
	for {
		h, p, err := r.readFrame()
		if err != nil {
			return fmt.Errorf("after %d ok and %d rate_limited: %v, want close 1008", oks, limited, err)
		}
		if h.OpCode == ws.OpClose {
			if code := binary.BigEndian.Uint16(p); code != ClosePolicy || string(p[2:]) != "rate limit exceeded" {
				return fmt.Errorf("close %d %q, want 1008 \"rate limit exceeded\"", code, p[2:])
			}
			break
		}
		var rep reply
		if err := json.Unmarshal(p, &rep); err != nil {
			return fmt.Errorf("reply %q: %v", p, err)
		}
		switch {
		case rep.OK:
			oks++
		case rep.Error.Code == "rate_limited":
			limited++
		default:
			return fmt.Errorf("reply %s", p)
		}
	}
	burst := a.s.cfg.CommandBurst
	// The strike that closes the connection gets no reply of its own.
	if oks < burst || limited < rateLimitStrikes-1 {
		return fmt.Errorf("%d commands served and %d rate_limited before the close, want at least the burst (%d) and %d", oks, limited, burst, rateLimitStrikes-1)
	}
	a.note("command flood: %d served, %d rate_limited, then close 1008 \"rate limit exceeded\"", oks, limited)
	return nil
}

// oversized sends a frame over MaxMessageBytes (close 1009), a publish
// whose control characters grow six-fold as JSON (too_large, connection
// kept), and 1 MB publishes in a row past the publish byte budget
// (rate_limited).
func (a *abAttacker) oversized() error {
	// A frame over the maximum, in the encoding of the other attacker's
	// choice, written while the close is read.
	useMsgpack := a.token != ""
	r, err := abRawOpen(a.s, a.lines(useMsgpack)...)
	if err != nil {
		return err
	}
	maxMsg := a.s.cfg.MaxMessageBytes
	payload := make([]byte, maxMsg+1)
	op := ws.OpText
	if useMsgpack {
		op = ws.OpBinary
	}
	big := clientFrame(nopTB{}, true, 0, op, true, 8, payload)
	go func() { _, _ = r.nc.Write(big) }()
	reason, _, err := r.expectClose(CloseTooBig)
	r.nc.Close()
	if err != nil {
		return fmt.Errorf("frame of %d bytes: %v", maxMsg+1, err)
	}
	a.note("oversized: a %d-byte frame closed 1009 %q", maxMsg+1, reason)

	// Amplification: under the maximum as msgpack, over it as JSON.
	c, err := abOpen(a.s, a.opts(true))
	if err != nil {
		return err
	}
	defer c.c.Close()
	amp := strings.Repeat("\x01", 200_000)
	if err := c.expect(map[string]any{"op": "publish", "channel": a.pubChannel, "data": amp}, "too_large"); err != nil {
		return err
	}
	if err := c.expect(map[string]any{"op": "ping"}, ""); err != nil {
		return err
	}

	// 1 MB publishes in a row: the publish byte budget (4 MiB of burst,
	// then 1 MiB/s; per user, per connection for anonymous ones). The
	// frames are built first, so that the time measured is the server's.
	j, err := abRawOpen(a.s, a.lines(false)...)
	if err != nil {
		return err
	}
	defer j.nc.Close()
	const count = 10
	data := strings.Repeat("x", 1_000_000)
	var frames []byte
	for id := 1; id <= count; id++ {
		frames = append(frames, frame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"publish","id":%d,"channel":%q,"data":%q}`, id, a.pubChannel, data)))...)
	}
	began := time.Now()
	go func() { _, _ = j.nc.Write(frames) }()
	oks, limited := 0, 0
	for id := 1; id <= count; id++ {
		h, p, err := j.readFrame()
		if err != nil || h.OpCode != ws.OpText {
			return fmt.Errorf("big publish %d: %v %.200q %v", id, h.OpCode, p, err)
		}
		var rep reply
		if err := json.Unmarshal(p, &rep); err != nil || rep.ID != uint64(id) {
			return fmt.Errorf("big publish %d: reply %.200q %v", id, p, err)
		}
		switch {
		case rep.OK:
			oks++
		case rep.Error.Code == "rate_limited":
			limited++
		default:
			return fmt.Errorf("big publish %d: reply %.300q", id, p)
		}
	}
	// The budget can have let through no more than its burst and what it
	// earned back while they were sent and processed: however slow the
	// machine, never more. (On a machine processing less than the rate,
	// 1 MiB/s, that is all of them; the note says so.)
	elapsed := time.Since(began)
	size := len(data) + 2 // as JSON
	budget := float64(a.s.cfg.PublishBurstBytes) + float64(a.s.cfg.PublishBytesPerSecond)*elapsed.Seconds()
	if oks < 1 || float64(oks*size) > budget {
		return fmt.Errorf("%d of %d publishes of 1 MB accepted in %v, over the budget of %.0f bytes (%d burst, %d/s)",
			oks, count, elapsed, budget, a.s.cfg.PublishBurstBytes, a.s.cfg.PublishBytesPerSecond)
	}
	j.nc.Write(pingCommands(count+1, 1))
	if h, p, err := j.readFrame(); err != nil || !strings.Contains(string(p), `"ok":true`) {
		return fmt.Errorf("ping after the big publishes: %v %q %v", h.OpCode, p, err)
	}
	a.mu.Lock()
	a.budgetRefusals = limited
	a.mu.Unlock()
	forced := float64(count*size) > budget
	a.note("oversized: amplified publish too_large; %d MB publishes in %v: %d ok, %d rate_limited (refusals forced by the budget: %v)",
		count, elapsed.Round(time.Millisecond), oks, limited, forced)
	return nil
}

// abGarbage are frames no client may send, with the close code each gets.
var abGarbage = []struct {
	name    string
	msgpack bool
	frames  [][]byte
	code    uint16
}{
	{"unmasked", false, [][]byte{clientFrame(nopTB{}, true, 0, ws.OpText, false, 0, []byte(`{"op":"ping"}`))}, CloseProtocolError},
	{"reserved bits", false, [][]byte{clientFrame(nopTB{}, true, 4, ws.OpText, true, 0, []byte(`{}`))}, CloseProtocolError},
	{"reserved opcode", false, [][]byte{clientFrame(nopTB{}, true, 0, 5, true, 0, nil)}, CloseProtocolError},
	{"random bytes", false, [][]byte{[]byte("GARBAGE\x00\xff\xfe\r\n\r\n")}, CloseProtocolError},
	{"fragmented control", true, [][]byte{clientFrame(nopTB{}, false, 0, ws.OpPing, true, 0, nil)}, CloseProtocolError},
	{"data frame inside fragments", false, [][]byte{frame(false, ws.OpText, []byte("{")), frame(true, ws.OpText, []byte("}"))}, CloseProtocolError},
	{"invalid utf-8", false, [][]byte{frame(true, ws.OpText, []byte{'{', 0xff, 0xfe, '}'})}, CloseInvalidPayload},
	{"not an object", false, [][]byte{frame(true, ws.OpText, []byte(`[1,2]`))}, CloseInvalidPayload},
	{"truncated json", false, [][]byte{frame(true, ws.OpText, []byte(`{"op":"publish","channel":`))}, CloseInvalidPayload},
	{"undecodable msgpack", true, [][]byte{frame(true, ws.OpBinary, []byte{0xc1})}, CloseInvalidPayload},
	{"msgpack array", true, [][]byte{frame(true, ws.OpBinary, []byte{0x92, 0x01, 0x02})}, CloseInvalidPayload},
	{"binary on json", false, [][]byte{frame(true, ws.OpBinary, []byte{0x80})}, CloseUnsupported},
	{"text on msgpack", true, [][]byte{frame(true, ws.OpText, []byte(`{"op":"ping"}`))}, CloseUnsupported},
}

// garbage opens a connection per kind of bad frame and checks its close.
func (a *abAttacker) garbage() error {
	for _, g := range abGarbage {
		r, err := abRawOpen(a.s, a.lines(g.msgpack)...)
		if err != nil {
			return fmt.Errorf("%s: %v", g.name, err)
		}
		for _, f := range g.frames {
			if _, err := r.nc.Write(f); err != nil {
				r.nc.Close()
				return fmt.Errorf("%s: %v", g.name, err)
			}
		}
		_, _, err = r.expectClose(g.code)
		r.nc.Close()
		if err != nil {
			return fmt.Errorf("%s: %v", g.name, err)
		}
	}
	a.note("garbage frames: %d kinds, each closed with its code", len(abGarbage))
	return nil
}

// stalledFrame starts a frame and never finishes it: close 1002 after
// FrameTimeout (10 s by default; the authenticated attacker only).
func (a *abAttacker) stalledFrame() error {
	r, err := abRawOpen(a.s, a.lines(false)...)
	if err != nil {
		return err
	}
	defer r.nc.Close()
	_ = r.nc.SetDeadline(time.Now().Add(a.s.cfg.FrameTimeout + 20*time.Second))
	f := frame(true, ws.OpText, []byte(`{"op":"ping","id":1}`))
	if _, err := r.nc.Write(f[:len(f)-3]); err != nil {
		return err
	}
	start := time.Now()
	reason, _, err := r.expectClose(CloseProtocolError)
	if err != nil {
		return err
	}
	a.note("stalled frame: close 1002 %q after %v", reason, time.Since(start).Round(time.Millisecond))
	return nil
}

// tokens presents bad tokens every way a client can, and other refused
// upgrades.
func (a *abAttacker) tokens() error {
	forged, err := auth.Mint([]byte("not-the-secret"), auth.Claims{Subject: "alice", Channels: []string{"*"}, Publish: []string{"*"}}, time.Hour)
	if err != nil {
		return err
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"*"}}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		return err
	}
	refusals := []struct {
		name   string
		o      abDialOpts
		status int
		body   string
	}{
		{"expired token in the header", abDialOpts{bearer: a.expired}, 401, "token expired"},
		{"expired token in the query", abDialOpts{query: a.expired, msgpack: true}, 401, "token expired"},
		{"token of another secret", abDialOpts{bearer: forged}, 401, "invalid token"},
		{"alg none", abDialOpts{query: none}, 401, "invalid token"},
		{"not a JWT", abDialOpts{query: "not-a-jwt"}, 401, "invalid token"},
		{"over-long token", abDialOpts{bearer: strings.Repeat("a", maxTokenBytes+1)}, 401, "longer than"},
	}
	if a.token != "" {
		refusals = append(refusals, struct {
			name   string
			o      abDialOpts
			status int
			body   string
		}{"tampered claims", abDialOpts{bearer: abTamper(a.token)}, 401, "invalid token"})
	} else {
		refusals = append(refusals, []struct {
			name   string
			o      abDialOpts
			status int
			body   string
		}{
			{"cross-site page", abDialOpts{origin: "https://evil.example"}, 403, "origin not allowed"},
			{"DNS rebinding", abDialOpts{origin: "http://" + a.s.Addr().String()}, 403, "origin not allowed"},
		}...)
	}
	for _, rf := range refusals {
		rf.o.xff = a.ip
		c, resp, body, err := abDial(a.s, rf.o)
		if err != nil {
			return fmt.Errorf("%s: %v", rf.name, err)
		}
		if c != nil {
			c.c.Close()
			return fmt.Errorf("%s: upgraded, want %d", rf.name, rf.status)
		}
		if resp.StatusCode != rf.status || !strings.Contains(body, rf.body) {
			return fmt.Errorf("%s: %s %q, want %d %q", rf.name, resp.Status, body, rf.status, rf.body)
		}
		if rf.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="fanout", error="invalid_token"`) {
			return fmt.Errorf("%s: WWW-Authenticate %q", rf.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	if a.token == "" {
		// Raw requests: two Origins, a bad key, a head over 16 KiB.
		for _, rq := range []struct {
			name   string
			req    string
			status int
		}{
			{"two Origins", upgradeRequest("GET", "/ws", "X-Forwarded-For: "+a.ip, "Origin: "+abPublicURL, "Origin: https://evil.example"), 400},
			{"bad Sec-WebSocket-Key", upgradeRequest("GET", "/ws", "X-Forwarded-For: "+a.ip, "Sec-WebSocket-Key: not*base64*at*all*!!!!!!"), 400},
			{"20 KiB head", upgradeRequest("GET", "/ws", "X-Forwarded-For: "+a.ip, "X-Padding: "+strings.Repeat("p", 20<<10)), 431},
		} {
			r, resp, err := abRawDial(a.s, []byte(rq.req))
			if err != nil {
				return fmt.Errorf("%s: %v", rq.name, err)
			}
			r.nc.Close()
			if resp.StatusCode != rq.status {
				return fmt.Errorf("%s: %s, want %d", rq.name, resp.Status, rq.status)
			}
		}
	}

	// A browser (Origin, no token) is pending: nothing but connect is
	// served, bad tokens in connect are unauthorized, and it may retry.
	p, err := abOpen(a.s, abDialOpts{xff: a.ip, origin: abPublicURL})
	if err != nil {
		return err
	}
	defer p.c.Close()
	type cmd = map[string]any
	for _, st := range []struct {
		cmd  cmd
		code string
	}{
		{cmd{"op": "ping"}, "unauthorized"},
		{cmd{"op": "subscribe", "channel": abChannel}, "unauthorized"},
		{cmd{"op": "publish", "channel": abChannel, "data": 1}, "unauthorized"},
		{cmd{"op": "connect", "token": a.expired}, "unauthorized"},
		{cmd{"op": "connect", "token": forged}, "unauthorized"},
		{cmd{"op": "connect", "token": abTamper(a.otherUser)}, "unauthorized"},
	} {
		if err := p.expect(st.cmd, st.code); err != nil {
			return fmt.Errorf("pending connection: %v", err)
		}
	}
	if a.token == "" {
		// It connects anonymously, and is anonymous.
		if err := p.expect(cmd{"op": "connect", "name": "alice"}, ""); err != nil {
			return err
		}
		if m, err := p.read(); err != nil || m["push"] != "connected" || m["user"] != "" {
			return fmt.Errorf("after connect: %v %v", m, err)
		}
		if err := p.expect(cmd{"op": "subscribe", "channel": abChannel}, "forbidden"); err != nil {
			return err
		}
		// A browser that never connects is closed 1008.
		silent, err := abOpen(a.s, abDialOpts{xff: a.ip, origin: abPublicURL, msgpack: true})
		if err != nil {
			return err
		}
		defer silent.c.Close()
		if err := silent.expectClose(1008, "authentication required"); err != nil {
			return fmt.Errorf("silent browser: %v", err)
		}
	} else {
		// It connects with its own token; a token that expires while
		// connected gets the refresh push, then close 1008.
		if err := p.expect(cmd{"op": "connect", "token": a.token}, ""); err != nil {
			return err
		}
		short, err := abOpen(a.s, abDialOpts{xff: a.ip, bearer: a.shortLife})
		if err != nil {
			return err
		}
		defer short.c.Close()
		if err := short.expect(cmd{"op": "subscribe", "channel": abChannel}, ""); err != nil {
			return err
		}
		if err := short.expectClose(1008, "token expired"); err != nil {
			return fmt.Errorf("short-lived token: %v", err)
		}
	}
	a.note("tokens: %d upgrades refused as documented; pending connection served only connect", len(refusals))
	return nil
}

// slowHandshakes opens sockets that never complete their upgrade request
// (half of them send nothing, half a partial head): each is dropped after
// HandshakeTimeout without an upgrade (the anonymous attacker only).
func (a *abAttacker) slowHandshakes() error {
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for i := range abSlowloris {
		nc, err := net.DialTimeout("tcp", a.s.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		conns = append(conns, nc)
		if i%2 == 1 {
			if _, err := nc.Write([]byte("GET /ws HTTP/1.1\r\nHost: chat.example\r\nX-Forwarded-For: " + a.ip + "\r\n")); err != nil {
				return err
			}
		}
	}
	start := time.Now()
	limit := a.s.cfg.HandshakeTimeout + 10*time.Second
	for i, nc := range conns {
		_ = nc.SetReadDeadline(start.Add(limit))
		b, err := io.ReadAll(nc)
		if err != nil && !isReset(err) {
			return fmt.Errorf("socket %d: %v after %v, want the server to drop it", i, err, time.Since(start))
		}
		if strings.Contains(string(b), " 101 ") {
			return fmt.Errorf("socket %d upgraded: %q", i, b)
		}
	}
	a.note("slow handshakes: %d sockets dropped within %v", len(conns), time.Since(start).Round(time.Millisecond))
	return nil
}

// connectionFlood upgrades from 8 workers at once past the per-address
// limit while holding the connections of forbidden and channelFlood:
// exactly the limit's worth are upgraded, every other attempt gets 429 with
// Retry-After, however the X-Forwarded-For is forged in front of the hop
// the proxy added. The held connections are still served at the limit;
// once the flood leaves, the address may connect again.
func (a *abAttacker) connectionFlood() error {
	ip := netip.MustParseAddr(a.ip)
	a.mu.Lock()
	held := a.holding
	a.mu.Unlock()
	if len(held) != 2 {
		return fmt.Errorf("%d connections held, want 2", len(held))
	}
	// The server has released the address's other connections.
	if err := wpPoll(20*time.Second, 10*time.Millisecond, func() error {
		if n := a.s.adm.ips.count(ip); n != len(held) {
			return fmt.Errorf("address counts %d connections, want the %d held", n, len(held))
		}
		return nil
	}); err != nil {
		return err
	}
	attempts := abPerIP - len(held) + abFloodExtra
	var (
		mu      sync.Mutex
		open    []*abRaw
		refused int
		errs    []error
	)
	// They leave half by FIN, half by RST.
	leave := func() {
		for i, r := range open {
			if i%2 == 1 {
				wpSetLinger0(r.nc)
			}
			r.nc.Close()
		}
		open = nil
	}
	defer leave()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				xff := a.ip
				switch i % 3 {
				case 1:
					xff = "127.0.0.1, " + a.ip // a forged loopback hop
				case 2:
					xff = fmt.Sprintf("192.0.2.%d, %s", i, a.ip) // a forged client
				}
				lines := a.lines(i%2 == 1)
				lines[0] = "X-Forwarded-For: " + xff
				r, resp, err := abRawDial(a.s, []byte(upgradeRequest("GET", "/ws", lines...)))
				if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
					if h, p, ferr := r.readFrame(); ferr != nil || h.OpCode == ws.OpClose || !strings.Contains(string(p), "connected") {
						err = fmt.Errorf("upgraded, then %v %q %v", h.OpCode, p, ferr)
					}
				} else if err == nil {
					body, _ := io.ReadAll(resp.Body)
					r.nc.Close()
					if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "too many connections") || resp.Header.Get("Retry-After") == "" {
						err = fmt.Errorf("attempt %d: %s %q (Retry-After %q), want 101 or 429", i, resp.Status, body, resp.Header.Get("Retry-After"))
					}
				}
				mu.Lock()
				switch {
				case err != nil:
					errs = append(errs, err)
					if r != nil {
						r.nc.Close()
					}
				case resp.StatusCode == http.StatusSwitchingProtocols:
					open = append(open, r)
				default:
					refused++
				}
				mu.Unlock()
			}
		}()
	}
	for i := range attempts {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%d failed attempts, first: %v", len(errs), errs[0])
	}
	if len(open) != abPerIP-len(held) || refused != abFloodExtra {
		return fmt.Errorf("%d upgraded and %d refused of %d attempts with %d held, want %d and %d",
			len(open), refused, attempts, len(held), abPerIP-len(held), abFloodExtra)
	}
	if n := a.s.adm.ips.count(ip); n != abPerIP {
		return fmt.Errorf("address counts %d connections at the limit, want %d", n, abPerIP)
	}
	// At the limit, what it holds is served.
	for _, c := range held {
		if err := c.expectPatiently(map[string]any{"op": "ping"}, ""); err != nil {
			return fmt.Errorf("held connection at the limit: %v", err)
		}
	}
	if err := held[0].expectPatiently(map[string]any{"op": "publish", "channel": abChannel, "data": "x"}, "forbidden"); err != nil {
		return err
	}
	leave()
	// Once the server has seen them go, the address counts only what it
	// holds; so it does again after upgrade requests whose sockets are
	// reset as soon as they are sent, before the server's answer (each
	// admitted one must be released).
	settled := func(when string) error {
		return wpPoll(20*time.Second, 10*time.Millisecond, func() error {
			if n := a.s.adm.ips.count(ip); n != len(held) {
				return fmt.Errorf("%s the address counts %d connections, want the %d held", when, n, len(held))
			}
			return nil
		})
	}
	if err := settled("after the flood"); err != nil {
		return err
	}
	for i := range abHitAndRun {
		nc, err := net.DialTimeout("tcp", a.s.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		_, _ = nc.Write([]byte(upgradeRequest("GET", "/ws", a.lines(i%2 == 1)...)))
		wpSetLinger0(nc)
		nc.Close()
	}
	if err := settled("after the hit-and-run upgrades"); err != nil {
		return err
	}
	// And it may connect again.
	again, err := abRawOpen(a.s, a.lines(false)...)
	if err != nil {
		return fmt.Errorf("after the flood: %v", err)
	}
	again.nc.Close()
	a.note("connection flood: %d upgraded (%d held before), %d refused 429", abPerIP-len(held), len(held), refused)
	return nil
}

// abTamper widens a token's claims without re-signing it.
func abTamper(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return tok + "x"
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return tok + "x"
	}
	var claims map[string]any
	if json.Unmarshal(b, &claims) != nil {
		return tok + "x"
	}
	claims["channels"], claims["publish"] = []string{"*"}, []string{"*"}
	b, _ = json.Marshal(claims)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

// ---- Clients that report errors instead of failing the test, for use in
// goroutines.

// abConn is a protocol client over gorilla/websocket in either encoding;
// one goroutine reads, one writes.
type abConn struct {
	c       *websocket.Conn
	msgpack bool
	id      uint64
}

type abDialOpts struct {
	xff     string // X-Forwarded-For (the trusted proxy's)
	bearer  string // Authorization: Bearer
	query   string // ?token=
	origin  string // Origin
	msgpack bool
}

// abDial upgrades with o. A refused upgrade returns its response and body,
// and no connection.
func abDial(s *Server, o abDialOpts) (*abConn, *http.Response, string, error) {
	proto := "fanout.v1.json"
	if o.msgpack {
		proto = "fanout.v1.msgpack"
	}
	d := websocket.Dialer{Subprotocols: []string{proto}, HandshakeTimeout: 20 * time.Second}
	h := http.Header{}
	if o.xff != "" {
		h.Set("X-Forwarded-For", o.xff)
	}
	if o.bearer != "" {
		h.Set("Authorization", "Bearer "+o.bearer)
	}
	if o.origin != "" {
		h.Set("Origin", o.origin)
	}
	u := wsURL(s)
	if o.query != "" {
		u += "?token=" + url.QueryEscape(o.query)
	}
	c, resp, err := d.Dial(u, h)
	if err != nil {
		if resp == nil {
			return nil, nil, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		return nil, resp, string(b), nil
	}
	return &abConn{c: c, msgpack: o.msgpack}, resp, "", nil
}

// abOpen upgrades and reads the connected push (none for a browser
// without a token: it is pending).
func abOpen(s *Server, o abDialOpts) (*abConn, error) {
	c, resp, body, err := abDial(s, o)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return nil, fmt.Errorf("upgrade refused: %s %q", resp.Status, body)
	}
	if o.origin != "" && o.bearer == "" && o.query == "" {
		return c, nil
	}
	m, err := c.read()
	if err != nil || m["push"] != "connected" {
		c.c.Close()
		return nil, fmt.Errorf("first message %v %v, want connected", m, err)
	}
	return c, nil
}

func (a *abConn) send(cmd map[string]any) error {
	_ = a.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if a.msgpack {
		b, err := msgpack.Marshal(cmd)
		if err != nil {
			return err
		}
		return a.c.WriteMessage(websocket.BinaryMessage, b)
	}
	return a.c.WriteJSON(cmd)
}

// read returns the next message as a map, numbers as float64 in both
// encodings.
func (a *abConn) read() (map[string]any, error) {
	_ = a.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	typ, b, err := a.c.ReadMessage()
	if err != nil {
		return nil, err
	}
	if a.msgpack {
		if typ != websocket.BinaryMessage {
			return nil, fmt.Errorf("frame type %d on a msgpack connection", typ)
		}
		var raw any
		if err := msgpack.Unmarshal(b, &raw); err != nil {
			return nil, err
		}
		m, ok := normalise(raw).(map[string]any)
		if !ok {
			return nil, fmt.Errorf("message %v is not a map", raw)
		}
		return m, nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%.200q: %v", b, err)
	}
	return m, nil
}

// call sends cmd with a fresh id and returns its reply, skipping pushes.
func (a *abConn) call(cmd map[string]any) (map[string]any, error) {
	a.id++
	cmd["id"] = a.id
	if err := a.send(cmd); err != nil {
		return nil, err
	}
	for {
		m, err := a.read()
		if err != nil {
			return nil, err
		}
		if id, ok := m["id"]; ok && id == float64(a.id) {
			return m, nil
		}
	}
}

// expect calls cmd and checks the reply: ok for code "", else that error.
func (a *abConn) expect(cmd map[string]any, code string) error {
	op, ch := cmd["op"], cmd["channel"]
	r, err := a.call(cmd)
	if err != nil {
		return fmt.Errorf("%v %v: %v", op, ch, err)
	}
	if got := errorCode(r); got != code || (code == "" && r["ok"] != true) {
		want := code
		if want == "" {
			want = "ok"
		}
		return fmt.Errorf("%v %v: reply %.300v, want %s", op, ch, r, want)
	}
	return nil
}

// expectPatiently is expect for a connection that may have spent its
// command rate: a rate_limited reply is retried after a token's time
// (CommandRate 100/s), up to 100 times.
func (a *abConn) expectPatiently(cmd map[string]any, code string) error {
	for range 100 {
		r, err := a.call(cmd)
		if err != nil {
			return fmt.Errorf("%v %v: %v", cmd["op"], cmd["channel"], err)
		}
		got := errorCode(r)
		if got == "rate_limited" && code != "rate_limited" {
			time.Sleep(11 * time.Millisecond)
			continue
		}
		if got != code || (code == "" && r["ok"] != true) {
			return fmt.Errorf("%v %v: reply %.300v, want %q", cmd["op"], cmd["channel"], r, code)
		}
		return nil
	}
	return fmt.Errorf("%v %v: still rate_limited", cmd["op"], cmd["channel"])
}

// expectClose reads until the server's close and checks it.
func (a *abConn) expectClose(code int, reason string) error {
	for {
		_ = a.c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, _, err := a.c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			return fmt.Errorf("connection ended with %v, want close %d", err, code)
		}
		if ce.Code != code || ce.Text != reason {
			return fmt.Errorf("close %d %q, want %d %q", ce.Code, ce.Text, code, reason)
		}
		return nil
	}
}

// abRaw is a client socket driven frame by frame.
type abRaw struct {
	nc net.Conn
	br *bufio.Reader
}

// abRawDial sends req and reads the response; the caller closes r.nc.
func abRawDial(s *Server, req []byte) (*abRaw, *http.Response, error) {
	nc, err := net.DialTimeout("tcp", s.Addr().String(), 10*time.Second)
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	r := &abRaw{nc: nc, br: bufio.NewReader(nc)}
	if _, err := nc.Write(req); err != nil {
		nc.Close()
		return nil, nil, err
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return r, resp, nil
}

// abRawOpen upgrades with the request lines and reads the connected push.
func abRawOpen(s *Server, lines ...string) (*abRaw, error) {
	r, resp, err := abRawDial(s, []byte(upgradeRequest("GET", "/ws", lines...)))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		r.nc.Close()
		return nil, fmt.Errorf("upgrade: %s %q", resp.Status, body)
	}
	if h, p, err := r.readFrame(); err != nil || h.OpCode == ws.OpClose || !strings.Contains(string(p), "connected") {
		r.nc.Close()
		return nil, fmt.Errorf("first frame %v %q %v, want the connected push", h.OpCode, p, err)
	}
	return r, nil
}

func (r *abRaw) readFrame() (ws.Header, []byte, error) {
	h, err := ws.ReadHeader(r.br)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	p := make([]byte, h.Length)
	_, err = io.ReadFull(r.br, p)
	return h, p, err
}

// expectClose reads frames until a close frame and checks its code.
func (r *abRaw) expectClose(code uint16) (reason string, before int, err error) {
	for {
		h, p, err := r.readFrame()
		if err != nil {
			return "", before, fmt.Errorf("after %d frames: %v, want close %d", before, err, code)
		}
		if h.OpCode != ws.OpClose {
			before++
			continue
		}
		if len(p) < 2 {
			return "", before, fmt.Errorf("close frame without a code, want %d", code)
		}
		if got := binary.BigEndian.Uint16(p); got != code {
			return string(p[2:]), before, fmt.Errorf("close %d %q, want %d", got, p[2:], code)
		}
		return string(p[2:]), before, nil
	}
}
