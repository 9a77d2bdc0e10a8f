package redisbroker

// Presence across nodes and client failover to a list of URLs: real
// fanout nodes on a real redis-server, real clients over WebSockets.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/client"
	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine"
	"github.com/fanout-dev/fanout/engine/auth"
)

const presenceSecret = "presence-test-secret"

// testNodeTTL is short so that a killed node's clients leave presence
// within about 2 s (NodeTTL + NodeTTL/3).
const testNodeTTL = 1500 * time.Millisecond

func startPresenceNode(t *testing.T, redisURL string) *node {
	t.Helper()
	return startNodeWith(t, Config{URL: redisURL, NodeTTL: testNodeTTL}, engine.Config{TokenSecret: presenceSecret})
}

// dialAs connects as user with a display name (a token's info.name), to
// url and then, when it is lost, to urls.
func dialAs(t *testing.T, user, name, url string, urls ...string) *client.Client {
	t.Helper()
	tok, err := auth.Mint([]byte(presenceSecret), auth.Claims{Subject: user, Name: name, Channels: []string{"*"}, Publish: []string{"*"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	opts := clientOpts()
	opts.Token, opts.URLs = tok, urls
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// presenceLog is a subscription's join and leave events.
type presenceLog struct {
	mu     sync.Mutex
	events []client.PresenceEvent
}

func (l *presenceLog) count(kind client.PresenceKind, user string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Kind == kind && e.Info.User == user {
			n++
		}
	}
	return n
}

// waitEvent waits until l has a kind event of user, with name.
func (l *presenceLog) waitEvent(t *testing.T, who string, kind client.PresenceKind, user, name string) {
	t.Helper()
	waitFor(t, 15*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, e := range l.events {
			if e.Kind == kind && e.Info.User == user {
				if e.Info.Name != name || e.Info.Client == "" {
					return fmt.Errorf("%s: %v of %+v, want name %q", who, kind, e.Info, name)
				}
				return nil
			}
		}
		return fmt.Errorf("%s: no %v of %s in %+v", who, kind, user, l.events)
	})
}

func subscribePresence(t *testing.T, cl *client.Client, ch string) (*client.Subscription, *presenceLog) {
	t.Helper()
	l := &presenceLog{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := cl.Subscribe(ctx, ch, client.SubscribeOptions{
		Presence:      true,
		OnPublication: func(client.Publication) {},
		OnPresence:    func(e client.PresenceEvent) { l.mu.Lock(); l.events = append(l.events, e); l.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, l
}

// waitPresence waits until a presence request by cl lists exactly want
// (user -> name), each with a client id.
func waitPresence(t *testing.T, who string, cl *client.Client, ch string, want map[string]string) {
	t.Helper()
	waitFor(t, 20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		infos, err := cl.Presence(ctx, ch)
		if err != nil {
			return fmt.Errorf("%s: presence: %w", who, err)
		}
		got := map[string]string{}
		for _, in := range infos {
			if _, dup := got[in.User]; dup || in.Client == "" {
				return fmt.Errorf("%s: presence %+v", who, infos)
			}
			got[in.User] = in.Name
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("%s: presence %v, want %v", who, got, want)
		}
		return nil
	})
}

// Presence spans nodes: a presence request on any node lists the clients of
// all three with their names; a join and a leave on one node reach the
// presence listeners of the others; a node killed without a goodbye has its
// clients removed from presence (with one leave each, pushed by the other
// nodes) once its heartbeat has expired; a node closed normally takes its
// clients out at once.
func TestClusterPresence(t *testing.T) {
	r := startRedis(t)
	nodes := []*node{startPresenceNode(t, r.URL), startPresenceNode(t, r.URL), startPresenceNode(t, r.URL)}
	var (
		cls  []*client.Client
		logs []*presenceLog
	)
	all := map[string]string{}
	for i, n := range nodes {
		user, name := fmt.Sprintf("user-%d", i), fmt.Sprintf("Name %d", i)
		cl := dialAs(t, user, name, n.url())
		_, l := subscribePresence(t, cl, "lobby")
		cls, logs = append(cls, cl), append(logs, l)
		all[user] = name
	}
	for i, cl := range cls {
		waitPresence(t, fmt.Sprintf("node %d", i), cl, "lobby", all)
	}

	// A join and a leave on node 1 reach the listeners of nodes 0 and 2.
	late := dialAs(t, "late", "Late Comer", nodes[1].url())
	ctx := context.Background()
	lateSub, err := late.Subscribe(ctx, "lobby", client.SubscribeOptions{OnPublication: func(client.Publication) {}})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range logs {
		l.waitEvent(t, fmt.Sprintf("node %d listener", i), client.Join, "late", "Late Comer")
	}
	withLate := maps.Clone(all)
	withLate["late"] = "Late Comer"
	waitPresence(t, "node 2", cls[2], "lobby", withLate)
	if err := lateSub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	for i, l := range logs {
		l.waitEvent(t, fmt.Sprintf("node %d listener", i), client.Leave, "late", "Late Comer")
	}
	waitPresence(t, "node 0", cls[0], "lobby", all)

	// Node 2 dies (no goodbye, as with a crash): its client leaves the
	// presence of nodes 0 and 1 once its heartbeat has expired.
	nodes[2].broker.crashed.Store(true)
	killed := time.Now()
	nodes[2].srv.Close()
	delete(all, "user-2")
	for i := range 2 {
		logs[i].waitEvent(t, fmt.Sprintf("node %d listener", i), client.Leave, "user-2", "Name 2")
		waitPresence(t, fmt.Sprintf("node %d", i), cls[i], "lobby", all)
	}
	t.Logf("killed node's client left presence after %v (NodeTTL %v: bound about %v after its last heartbeat)",
		time.Since(killed).Round(time.Millisecond), testNodeTTL, testNodeTTL+testNodeTTL/3)
	reaped := nodes[0].broker.Stats().PresenceReaped + nodes[1].broker.Stats().PresenceReaped
	if reaped != 1 {
		t.Errorf("%d entries reaped, want 1 (user-2 in lobby, once)", reaped)
	}
	for i := range 2 {
		if n := logs[i].count(client.Leave, "user-2"); n != 1 {
			t.Errorf("node %d listener got %d leaves of user-2", i, n)
		}
	}

	// Node 1 closes normally: its client leaves at once, nobody reaps it.
	nodes[1].srv.Close()
	delete(all, "user-1")
	logs[0].waitEvent(t, "node 0 listener", client.Leave, "user-1", "Name 1")
	waitPresence(t, "node 0", cls[0], "lobby", all)
	if got := nodes[0].broker.Stats().PresenceReaped; got != reaped-nodes[1].broker.Stats().PresenceReaped {
		t.Errorf("node 0 reaped %d entries, want none more", got)
	}
}

// Redis down: presence requests fail with "unavailable" as publishes do,
// while join and leave pushes among the clients of one node go on; a leave
// made during the outage reaches Redis once it is back.
func TestClusterPresenceRedisOutage(t *testing.T) {
	r := startRedis(t)
	nodes := []*node{startPresenceNode(t, r.URL), startPresenceNode(t, r.URL)}
	l := dialAs(t, "l", "Listener", nodes[0].url())
	_, llog := subscribePresence(t, l, "room")
	m := dialAs(t, "m", "Member", nodes[0].url())
	msub, _ := subscribePresence(t, m, "room")
	x := dialAs(t, "x", "Other", nodes[1].url())
	subscribePresence(t, x, "room")
	waitPresence(t, "node 1", x, "room", map[string]string{"l": "Listener", "m": "Member", "x": "Other"})

	r.stop(true)
	waitFor(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := l.Presence(ctx, "room")
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != codec.CodeUnavailable {
			return fmt.Errorf("presence during the outage: %v, want code unavailable", err)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := msub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	llog.waitEvent(t, "node 0 listener during the outage", client.Leave, "m", "Member")

	r.start()
	waitPresence(t, "node 1 after the outage", x, "room", map[string]string{"l": "Listener", "x": "Other"})
	waitPresence(t, "node 0 after the outage", l, "room", map[string]string{"l": "Listener", "x": "Other"})
}

// A Go client given the three nodes' URLs survives the kill of its node
// during a broadcast: it moves to another node by itself and ends with
// every acknowledged publication, in order, without a gap (issue 11's
// "done when").
func TestClusterClientFailoverURLs(t *testing.T) {
	r := startRedis(t)
	nodes := []*node{startNode(t, r.URL), startNode(t, r.URL), startNode(t, r.URL)}
	opts := clientOpts()
	opts.URLs = []string{nodes[0].url(), nodes[1].url()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := client.Dial(ctx, nodes[2].url(), opts)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	sub := subscribe(t, cl, "room")

	const per = 150
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked []uint64
	)
	publish := func(pc *client.Client) {
		defer wg.Done()
		for i := range per {
			off, err := pc.Publish(context.Background(), "room", map[string]int{"i": i})
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			mu.Lock()
			acked = append(acked, off)
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}
	wg.Add(2)
	go publish(dial(t, nodes[0].url()))
	go publish(dial(t, nodes[1].url()))

	// Kill node 2 mid-broadcast.
	waitFor(t, 15*time.Second, func() error {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		if len(sub.pubs) < 20 {
			return fmt.Errorf("%d publications before the kill", len(sub.pubs))
		}
		return nil
	})
	nodes[2].srv.Close()
	wg.Wait()
	slices.Sort(acked)
	for i, off := range acked {
		if off != uint64(i+1) {
			t.Fatalf("acknowledged offsets %v are not 1..%d", acked, 2*per)
		}
	}
	if len(acked) != 2*per {
		t.Fatalf("%d acknowledged", len(acked))
	}
	sub.check(t, "client moved from node 2", 2*per)
	if u := cl.URL(); u == nodes[2].url() {
		t.Errorf("client still on the killed node's URL")
	}
}

// presenceRecorder is a recorder that also takes presence.
type presenceRecorder struct {
	*recorder
	mu     sync.Mutex
	events []string // "j:<user>" or "l:<user>"
}

func (p *presenceRecorder) HandlePresence(_ string, join bool, info codec.ClientInfo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := "l:"
	if join {
		k = "j:"
	}
	p.events = append(p.events, k+info.User)
}

func (p *presenceRecorder) get() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.events)
}

// brokerPresence waits until b's Presence of ch lists exactly users.
func brokerPresence(t *testing.T, b *Broker, ch string, users ...string) {
	t.Helper()
	waitFor(t, 15*time.Second, func() error {
		infos, err := b.Presence(context.Background(), ch)
		if err != nil {
			return err
		}
		var got []string
		for _, in := range infos {
			got = append(got, in.User)
		}
		slices.Sort(got)
		slices.Sort(users)
		if !slices.Equal(got, users) {
			return fmt.Errorf("presence %v, want %v", got, users)
		}
		return nil
	})
}

// Broker level: every presence key has a TTL; a node lists only the other
// nodes' clients; Redis losing everything (FLUSHALL) makes the node find
// its heartbeat gone and write its entries again, and a join followed by a
// leave of the same client reaches the other node as that (never a stale
// join left behind).
func TestPresenceKeysBoundedAndResync(t *testing.T) {
	r := startRedis(t)
	a := newTestBroker(t, r.URL, newRecorder(t), Config{NodeTTL: testNodeTTL})
	pr := &presenceRecorder{recorder: newRecorder(t)}
	bl, err := New(Config{URL: r.URL, NodeTTL: testNodeTTL, Logger: quietLogger(), Timeout: 500 * time.Millisecond, PingInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := bl.Run(pr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bl.Close() })
	if err := bl.Subscribe("c"); err != nil {
		t.Fatal(err)
	}
	a.Join("c", codec.ClientInfo{Client: "ca", User: "alice", Name: "Alice"})
	bl.Join("c", codec.ClientInfo{Client: "cb", User: "bob"})
	brokerPresence(t, bl, "c", "alice")
	brokerPresence(t, a, "c", "bob")
	waitFor(t, 10*time.Second, func() error {
		if ev := pr.get(); !slices.Equal(ev, []string{"j:alice"}) {
			return fmt.Errorf("listener got %v, want [j:alice] (its own join is the hub's to push)", ev)
		}
		return nil
	})

	rc := r.client()
	ctx := context.Background()
	keys, err := rc.Keys(ctx, "fanout:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if ttl, err := rc.PTTL(ctx, k).Result(); err != nil || ttl <= 0 {
			t.Errorf("key %s has TTL %v (%v): presence state must expire", k, ttl, err)
		}
	}

	if err := rc.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	brokerPresence(t, bl, "c", "alice")
	brokerPresence(t, a, "c", "bob")
	if a.Stats().Resyncs == 0 {
		t.Error("node a did not resync after its heartbeat vanished")
	}

	// Leave, join again with another name, leave: the other node ends
	// with alice gone and saw her last event as a leave.
	a.Leave("c", codec.ClientInfo{Client: "ca", User: "alice"})
	a.Join("c", codec.ClientInfo{Client: "ca", User: "alice", Name: "Alice 2"})
	a.Leave("c", codec.ClientInfo{Client: "ca", User: "alice"})
	brokerPresence(t, bl, "c")
	waitFor(t, 10*time.Second, func() error {
		ev := pr.get()
		if ev[len(ev)-1] != "l:alice" {
			return fmt.Errorf("listener's events %v do not end with alice's leave", ev)
		}
		return nil
	})
}
