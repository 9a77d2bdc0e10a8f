package engine

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// reply is a command's reply as the JSON encoding has it.
type reply struct {
	ID    uint64 `json:"id"`
	OK    bool   `json:"ok"`
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// pingCommands builds n ping commands with ids first, first+1, ... as one
// run of frames.
func pingCommands(first, n int) []byte {
	var b []byte
	for i := range n {
		b = append(b, frame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"ping","id":%d}`, first+i)))...)
	}
	return b
}

// readReply reads the next frame as a command reply.
func (c *rawConn) readReply() reply {
	c.t.Helper()
	h, p := c.readFrame()
	if h.OpCode != ws.OpText {
		c.t.Fatalf("got %v %q, want a reply", h.OpCode, p)
	}
	var r reply
	if err := json.Unmarshal(p, &r); err != nil {
		c.t.Fatalf("reply %q: %v", p, err)
	}
	return r
}

// TestCommandRateLimit: each connection has a token bucket of commands.
// Past its burst a command is answered rate_limited (with its id) and the
// connection stays; ping frames are not commands; a client that keeps
// sending while limited (rateLimitStrikes more refusals than accepted
// commands) is closed 1008. The rate is set so low that no token comes back
// during the test: what it checks does not depend on the machine's speed.
func TestCommandRateLimit(t *testing.T) {
	const burst = 5
	s := startServer(t, Config{CommandRate: 0.0001, CommandBurst: burst})

	t.Run("burst then rate_limited", func(t *testing.T) {
		c := dialRaw(t, s)
		c.upgrade()
		c.readFrame() // connected
		c.write(pingCommands(1, burst+3))
		for id := 1; id <= burst+3; id++ {
			r := c.readReply()
			if r.ID != uint64(id) {
				t.Fatalf("reply id %d, want %d", r.ID, id)
			}
			if limited := r.Error.Code == "rate_limited"; limited != (id > burst) || (!limited && !r.OK) {
				t.Fatalf("command %d of a burst of %d: %+v", id, burst, r)
			}
		}
		// Control frames are not commands: they are answered whatever the
		// bucket holds, and the connection stays.
		for range 3 * burst {
			c.write(frame(true, ws.OpPing, []byte("p")))
			if h, p := c.readFrame(); h.OpCode != ws.OpPong || string(p) != "p" {
				t.Fatalf("got %v %q, want pong", h.OpCode, p)
			}
		}
	})

	t.Run("ignoring it closes 1008", func(t *testing.T) {
		c := dialRaw(t, s)
		c.upgrade()
		c.readFrame()
		// rateLimitStrikes-1 refusals: still open.
		c.write(pingCommands(1, burst+rateLimitStrikes-1))
		limited := 0
		for range burst + rateLimitStrikes - 1 {
			if r := c.readReply(); r.Error.Code == "rate_limited" {
				limited++
			}
		}
		if limited != rateLimitStrikes-1 {
			t.Fatalf("%d commands rate limited, want %d", limited, rateLimitStrikes-1)
		}
		c.write(frame(true, ws.OpPing, []byte("still")))
		if h, p := c.readFrame(); h.OpCode != ws.OpPong || string(p) != "still" {
			t.Fatalf("got %v %q, want pong", h.OpCode, p)
		}
		// One more: closed.
		c.write(pingCommands(1000, 1))
		if reason := c.expectClose(ClosePolicy); reason != "rate limit exceeded" {
			t.Fatalf("close reason %q", reason)
		}
	})

	t.Run("flood closes 1008", func(t *testing.T) {
		c := dialRaw(t, s)
		c.upgrade()
		c.readFrame()
		go func() { _, _ = c.nc.Write(pingCommands(1, burst+2*rateLimitStrikes)) }()
		oks := 0
		for {
			h, p := c.readFrame()
			if h.OpCode == ws.OpClose {
				if code := uint16(p[0])<<8 | uint16(p[1]); code != ClosePolicy {
					t.Fatalf("close %d %q, want 1008", code, p[2:])
				}
				break
			}
			if strings.Contains(string(p), `"ok":true`) {
				oks++
			}
		}
		if oks > burst {
			t.Fatalf("%d commands accepted, burst %d", oks, burst)
		}
	})
}

// TestCommandRateLimitOff: a negative CommandRate turns the limit off, and
// echo mode (conformance suites) has no commands to limit.
func TestCommandRateLimitOff(t *testing.T) {
	const n = 600 // over the default burst and the strikes together
	tests := []struct {
		name string
		cfg  Config
	}{
		{"negative rate", Config{CommandRate: -1}},
		{"echo", Config{Echo: true, CommandRate: 0.0001, CommandBurst: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, tt.cfg)
			c := dialRaw(t, s)
			c.upgrade()
			if !tt.cfg.Echo {
				c.readFrame()
			}
			go func() { _, _ = c.nc.Write(pingCommands(1, n)) }()
			for i := range n {
				_, p := c.readFrame()
				if strings.Contains(string(p), "rate_limited") {
					t.Fatalf("message %d: %s", i, p)
				}
			}
		})
	}
}

// TestMaxSubscriptionsPerConn: past the limit a subscribe gets too_large
// (waiting would not help, unsubscribing does); a duplicate is still
// "already subscribed", and an unsubscribe makes room.
func TestMaxSubscriptionsPerConn(t *testing.T) {
	s := startServer(t, Config{MaxSubscriptionsPerConn: 3})
	tc := dialClient(t, s, false)
	for _, ch := range []string{"a", "b", "c"} {
		tc.mustOK(map[string]any{"op": "subscribe", "channel": ch})
	}
	steps := []struct {
		op, channel, code string
	}{
		{"subscribe", "d", "too_large"},
		{"subscribe", "a", "bad_request"}, // already subscribed
		{"unsubscribe", "b", ""},
		{"subscribe", "d", ""},
		{"subscribe", "e", "too_large"},
	}
	for _, st := range steps {
		r, _ := tc.call(map[string]any{"op": st.op, "channel": st.channel})
		code := ""
		if e, ok := r["error"].(map[string]any); ok {
			code, _ = e["code"].(string)
		}
		if code != st.code {
			t.Fatalf("%s %s: %v, want code %q", st.op, st.channel, r, st.code)
		}
	}
	// Deliveries follow the subscriptions that were accepted.
	tc.mustOK(map[string]any{"op": "publish", "channel": "e", "data": "not subscribed"})
	r, pushes := tc.call(map[string]any{"op": "publish", "channel": "d", "data": "subscribed"})
	if r["ok"] != true {
		t.Fatalf("publish: %v", r)
	}
	if len(pushes) == 0 {
		pushes = append(pushes, tc.nextPub())
	}
	if m := pushes[0]; m["push"] != "pub" || m["channel"] != "d" {
		t.Fatalf("publication %v", m)
	}
}

// TestUnsubscribeIndex subscribes a connection to many channels and
// unsubscribes them in random order, checking after each step that the
// connection's record of its subscriptions matches the hub's: past
// subIndexMin an index map finds a channel without a scan (0.41 ms per
// unsubscribe at 100k channels before); an idle connection again holds
// neither slice nor map.
func TestUnsubscribeIndex(t *testing.T) {
	s := startServer(t, Config{CommandRate: -1})
	tc := dialClient(t, s, false)
	const n = 200
	var chans []string
	for i := range n {
		ch := fmt.Sprint("ch.", i)
		chans = append(chans, ch)
		tc.mustOK(map[string]any{"op": "subscribe", "channel": ch})
	}
	conns := serverConns(s)
	if len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
	sc := conns[0]
	check := func(want []string) {
		t.Helper()
		sc.rmu.Lock()
		defer sc.rmu.Unlock()
		if len(sc.subs) != len(want) {
			t.Fatalf("%d subscriptions recorded, want %d", len(sc.subs), len(want))
		}
		// Indexed from subIndexMin up; on the way down, until under half.
		if (sc.subIdx != nil) != (len(want) >= subIndexMin/2) {
			t.Fatalf("%d subscriptions, index %v", len(want), sc.subIdx != nil)
		}
		for _, ch := range want {
			i := sc.findSub([]byte(ch))
			if i < 0 || sc.subs[i] != ch {
				t.Fatalf("%s not found (%d)", ch, i)
			}
		}
		if sc.subIdx != nil && len(sc.subIdx) != len(sc.subs) {
			t.Fatalf("index of %d for %d subscriptions", len(sc.subIdx), len(sc.subs))
		}
	}
	check(chans)
	if sc.subIdx == nil {
		t.Fatalf("no index for %d subscriptions", n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(chans), func(i, j int) { chans[i], chans[j] = chans[j], chans[i] })
	for len(chans) > 0 {
		tc.mustOK(map[string]any{"op": "unsubscribe", "channel": chans[0]})
		r, _ := tc.call(map[string]any{"op": "unsubscribe", "channel": chans[0]})
		if e, _ := r["error"].(map[string]any); e == nil || e["code"] != "bad_request" {
			t.Fatalf("second unsubscribe of %s: %v", chans[0], r)
		}
		chans = chans[1:]
		check(chans)
	}
	sc.rmu.Lock()
	defer sc.rmu.Unlock()
	if sc.subs != nil || sc.subIdx != nil {
		t.Fatalf("no subscriptions left, but slice %v, index %v", sc.subs != nil, sc.subIdx != nil)
	}
}
