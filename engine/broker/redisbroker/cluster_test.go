package redisbroker

// Cluster tests: three real fanout nodes (package engine) on one real
// redis-server, real clients (package client) over WebSockets.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/client"
	"github.com/fanout-dev/fanout/engine"
)

type node struct {
	srv    *engine.Server
	broker *Broker
}

func (n *node) url() string { return "ws://" + n.srv.Addr().String() + "/ws" }

func startNode(t *testing.T, redisURL string) *node {
	t.Helper()
	return startNodeWith(t, Config{URL: redisURL}, engine.Config{})
}

// startNodeWith starts a node with bc and ec (the test's timings and
// addresses filled in).
func startNodeWith(t *testing.T, bc Config, ec engine.Config) *node {
	t.Helper()
	bc.Timeout, bc.PingInterval, bc.Logger = 500*time.Millisecond, 200*time.Millisecond, quietLogger()
	b, err := New(bc)
	if err != nil {
		t.Fatal(err)
	}
	ec.Addr, ec.Broker, ec.IdleTimeout, ec.CommandRate, ec.Logger = "127.0.0.1:0", b, 30*time.Second, -1, quietLogger()
	srv, err := engine.New(ec)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &node{srv: srv, broker: b}
}

// proxy forwards TCP connections to the current backend, as a load
// balancer in front of the nodes would: when a node dies, its clients
// reconnect through the proxy and land on another node.
type proxy struct {
	ln      net.Listener
	backend atomic.Value // string
	mu      sync.Mutex
	conns   []net.Conn
}

func startProxy(t *testing.T, backend string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	p.backend.Store(backend)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *proxy) serve(c net.Conn) {
	u, err := net.Dial("tcp", p.backend.Load().(string))
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, u)
	p.mu.Unlock()
	go func() { io.Copy(u, c); u.Close() }()
	io.Copy(c, u)
	c.Close()
}

func (p *proxy) url() string { return "ws://" + p.ln.Addr().String() + "/ws" }

func clientOpts() client.Options {
	return client.Options{Reconnect: client.ReconnectOptions{MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}}
}

func dial(t *testing.T, url string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, url, clientOpts())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// collector is a subscription's deliveries.
type collector struct {
	mu   sync.Mutex
	pubs []client.Publication
	gaps []*client.GapError
}

func subscribe(t *testing.T, cl *client.Client, ch string) *collector {
	t.Helper()
	c := &collector{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := cl.Subscribe(ctx, ch, client.SubscribeOptions{
		OnPublication: func(p client.Publication) { c.mu.Lock(); c.pubs = append(c.pubs, p); c.mu.Unlock() },
		OnGap:         func(g *client.GapError) { c.mu.Lock(); c.gaps = append(c.gaps, g); c.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// check waits until c has n publications and checks they are offsets 1..n
// of one epoch, in order, with no gap reported.
func (c *collector) check(t *testing.T, name string, n int) string {
	t.Helper()
	waitFor(t, 15*time.Second, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if len(c.pubs) < n {
			return fmt.Errorf("%s: %d of %d publications", name, len(c.pubs), n)
		}
		return nil
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.gaps) > 0 {
		t.Errorf("%s: gaps %v", name, c.gaps)
	}
	for i, p := range c.pubs {
		if p.Offset != uint64(i+1) || p.Epoch != c.pubs[0].Epoch {
			t.Fatalf("%s: delivery %d is %s/%d", name, i, p.Epoch, p.Offset)
		}
	}
	return c.pubs[0].Epoch
}

// Publications entering by any of three nodes reach subscribers on every
// node in one order with one offset sequence; a node killed while
// publications flow loses nothing for its clients, which reconnect (through
// the proxy) to another node and recover without a gap.
func TestClusterOrderAndNodeFailure(t *testing.T) {
	r := startRedis(t)
	nodes := []*node{startNode(t, r.URL), startNode(t, r.URL), startNode(t, r.URL)}
	px := startProxy(t, nodes[2].srv.Addr().String())

	// Subscribers: one on each node directly, and one on node 2 through
	// the proxy (it will lose node 2).
	var subs []*collector
	for _, n := range nodes {
		subs = append(subs, subscribe(t, dial(t, n.url()), "room"))
	}
	moved := subscribe(t, dial(t, px.url()), "room")

	// Publishers on nodes 0 and 1 (node 2's is killed with it).
	const per = 150
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		acked = map[uint64]bool{}
	)
	publish := func(cl *client.Client, n int) {
		defer wg.Done()
		for i := range n {
			off, err := cl.Publish(context.Background(), "room", map[string]int{"i": i})
			if err != nil {
				t.Errorf("publish: %v", err)
				return
			}
			mu.Lock()
			if acked[off] {
				t.Errorf("offset %d acknowledged twice", off)
			}
			acked[off] = true
			mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}
	wg.Add(2)
	go publish(dial(t, nodes[0].url()), per)
	go publish(dial(t, nodes[1].url()), per)

	// Kill node 2 mid-stream, once the moved subscriber has some of the
	// publications and the publishers have not finished: its sockets drop
	// without a close frame.
	waitFor(t, 30*time.Second, func() error {
		moved.mu.Lock()
		defer moved.mu.Unlock()
		if len(moved.pubs) < 10 {
			return fmt.Errorf("moved subscriber has %d publications", len(moved.pubs))
		}
		return nil
	})
	px.backend.Store(nodes[0].srv.Addr().String())
	nodes[2].srv.Close()
	mu.Lock()
	atKill := len(acked)
	mu.Unlock()
	if atKill >= 2*per {
		t.Fatalf("all %d publications acknowledged before node 2 was killed: not mid-stream", atKill)
	}
	t.Logf("node 2 killed after %d of %d publications were acknowledged", atKill, 2*per)
	wg.Wait()
	if len(acked) != 2*per {
		t.Fatalf("%d acknowledged", len(acked))
	}
	for off := uint64(1); off <= 2*per; off++ {
		if !acked[off] {
			t.Fatalf("offset %d not acknowledged: offsets are not one sequence", off)
		}
	}
	epoch := subs[0].check(t, "node 0", 2*per)
	if subs[1].check(t, "node 1", 2*per) != epoch {
		t.Error("node 1 saw another epoch")
	}
	if moved.check(t, "moved from node 2", 2*per) != epoch {
		t.Error("moved subscriber saw another epoch")
	}
	subs[2].mu.Lock()
	t.Logf("node 2's direct subscriber got %d before the kill; the proxied one recovered all %d", len(subs[2].pubs), 2*per)
	subs[2].mu.Unlock()
}

func readyz(n *node) (int, string) {
	resp, err := http.Get("http://" + n.srv.Addr().String() + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Redis killed (SIGKILL) and restarted under three nodes: /readyz says
// "broker unavailable", publishes fail with the unavailable code (not
// internal), subscriptions stay open, the nodes heal by themselves, and
// nothing acknowledged before the outage is lost.
func TestClusterEngineRestart(t *testing.T) {
	r := startRedis(t)
	nodes := []*node{startNode(t, r.URL), startNode(t, r.URL), startNode(t, r.URL)}
	var subs []*collector
	var pubs []*client.Client
	for _, n := range nodes {
		cl := dial(t, n.url())
		pubs = append(pubs, cl)
		subs = append(subs, subscribe(t, cl, "feed"))
	}
	ctx := context.Background()
	for i := range 20 {
		if _, err := pubs[i%3].Publish(ctx, "feed", i); err != nil {
			t.Fatal(err)
		}
	}
	for i, n := range nodes {
		if code, body := readyz(n); code != 200 {
			t.Fatalf("node %d readyz %d %q before the outage", i, code, body)
		}
	}

	r.stop(true)
	for i, n := range nodes {
		waitFor(t, 5*time.Second, func() error {
			if code, body := readyz(n); code != 503 || !strings.Contains(body, "broker unavailable") {
				return fmt.Errorf("node %d readyz %d %q during the outage", i, code, body)
			}
			return nil
		})
	}
	for i, cl := range pubs {
		_, err := cl.Publish(ctx, "feed", "lost")
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Code != "unavailable" {
			t.Fatalf("node %d publish during the outage: %v, want code unavailable", i, err)
		}
	}
	// A subscribe to a channel new to the node fails the same way.
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := pubs[0].Subscribe(ctx2, "other", client.SubscribeOptions{})
	cancel()
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != "unavailable" {
		t.Fatalf("subscribe during the outage: %v, want code unavailable", err)
	}

	r.start()
	for i, n := range nodes {
		waitFor(t, 10*time.Second, func() error {
			if code, body := readyz(n); code != 200 {
				return fmt.Errorf("node %d readyz %d %q after the outage", i, code, body)
			}
			return nil
		})
	}
	for i := 20; i < 40; i++ {
		off, err := pubs[i%3].Publish(ctx, "feed", i)
		if err != nil {
			t.Fatal(err)
		}
		if off != uint64(i+1) {
			t.Fatalf("publish %d after the outage got offset %d", i, off)
		}
	}
	epoch := subs[0].check(t, "node 0", 40)
	for i := 1; i < 3; i++ {
		if subs[i].check(t, fmt.Sprintf("node %d", i), 40) != epoch {
			t.Errorf("node %d saw another epoch", i)
		}
	}
	pos, hist, err := pubs[1].History(ctx, "feed", 0)
	if err != nil || len(hist) != 40 || pos.Epoch != epoch || pos.Offset != 40 {
		t.Fatalf("history after the outage: %v, %d publications, %v", pos, len(hist), err)
	}
}
