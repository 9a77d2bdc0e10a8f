package redisbroker

// Cost per publish (docs/CLUSTER.md):
//
//	go test -p 1 -run XXX -bench . -benchtime 5000x ./engine/broker/redisbroker
//
// REDISBROKER_FSYNC=everysec measures the default Redis durability instead
// of appendfsync always.

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
)

func benchPub() *codec.Publication {
	return &codec.Publication{
		Info:    codec.ClientInfo{Client: "abcdefghijklmnop", User: "alice"},
		JSON:    []byte(`{"text":"hello world, this is a chat message of typical size","n":12345}`),
		Msgpack: []byte("\x82\xa4text\xd9\x3bhello world, this is a chat message of typical size\xa1n\xcd\x30\x39"),
	}
}

type nopHandler struct{}

func (nopHandler) HandlePublication(string, *codec.Publication) {}

// latencyHandler records publish-to-delivery latency on another node.
type latencyHandler struct {
	mu    sync.Mutex
	sent  map[uint64]time.Time
	lat   []time.Duration
	count atomic.Int64
}

func (h *latencyHandler) HandlePublication(_ string, p *codec.Publication) {
	h.mu.Lock()
	if t, ok := h.sent[p.Offset]; ok {
		h.lat = append(h.lat, time.Since(t))
	}
	h.mu.Unlock()
	h.count.Add(1)
}

// BenchmarkPublish: one publisher, one round trip per publish, with a
// subscribed second node receiving every publication; reports the
// publish-to-delivery latency on that node.
func BenchmarkPublish(b *testing.B) {
	r := startRedis(b)
	pubNode := newTestBroker(b, r.URL, newRecorder(b), Config{})
	lh := &latencyHandler{sent: make(map[uint64]time.Time, b.N)}
	sub, err := New(Config{URL: r.URL, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	sub.Run(lh)
	defer sub.Close()
	if err := sub.Subscribe("bench"); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now := time.Now()
		lh.mu.Lock()
		lh.sent[uint64(i+1)] = now
		lh.mu.Unlock()
		if _, err := pubNode.Publish(ctx, "bench", benchPub()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	waitFor(b, 10*time.Second, func() error {
		if lh.count.Load() < int64(b.N) {
			return context.DeadlineExceeded
		}
		return nil
	})
	reportLatency(b, lh.lat)
	b.ReportMetric(1, "RT/op")
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-deliver-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-deliver-µs")
}

// BenchmarkPublishAlone: one publisher, no node subscribed (the script
// without fan-out).
func BenchmarkPublishAlone(b *testing.B) {
	r := startRedis(b)
	n := newTestBroker(b, r.URL, newRecorder(b), Config{})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := n.Publish(ctx, "alone", benchPub()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublishParallel: 64 publishers on one node, 64 channels, as a
// busy node publishes (Redis pipelines nothing: each publish is its own
// round trip, but they overlap).
func BenchmarkPublishParallel(b *testing.B) {
	r := startRedis(b)
	n := newTestBroker(b, r.URL, newRecorder(b), Config{})
	var ch atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		name := "p" + string(rune('a'+ch.Add(1)%26)) + string(rune('a'+ch.Load()/26))
		for pb.Next() {
			if _, err := n.Publish(context.Background(), name, benchPub()); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHistory100: reading a channel's whole history (100
// publications), as a recovery after a reconnect does.
func BenchmarkHistory100(b *testing.B) {
	r := startRedis(b)
	n := newTestBroker(b, r.URL, newRecorder(b), Config{})
	ctx := context.Background()
	for range 100 {
		if _, err := n.Publish(ctx, "h", benchPub()); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pubs, _, err := n.History(ctx, "h", &codec.StreamPosition{}, -1)
		if err != nil || len(pubs) != 100 {
			b.Fatal(len(pubs), err)
		}
	}
}

// BenchmarkMemoryBrokerPublish is the single-node default, for comparison.
func BenchmarkMemoryBrokerPublish(b *testing.B) {
	m := hub.NewMemoryBroker(hub.MemoryBrokerConfig{})
	m.Run(nopHandler{})
	defer m.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Publish(ctx, "bench", benchPub()); err != nil {
			b.Fatal(err)
		}
	}
}

// presenceCounter counts the joins and leaves another node delivers.
type presenceCounter struct {
	joins, leaves atomic.Int64
	wake          chan struct{}
}

func newPresenceCounter() *presenceCounter { return &presenceCounter{wake: make(chan struct{}, 1)} }

func (*presenceCounter) HandlePublication(string, *codec.Publication) {}

func (c *presenceCounter) HandlePresence(_ string, join bool, _ codec.ClientInfo) {
	if join {
		c.joins.Add(1)
	} else {
		c.leaves.Add(1)
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// wait blocks until f holds, woken by each delivery.
func (c *presenceCounter) wait(b *testing.B, f func() bool) {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for !f() {
		select {
		case <-c.wake:
		case <-t.C:
			b.Fatalf("presence not delivered: %d joins, %d leaves", c.joins.Load(), c.leaves.Load())
		}
	}
}

// presencePair is a node that joins and leaves, and another subscribed to
// the channel that counts what it receives.
func presencePair(b *testing.B) (*Broker, *Broker, *presenceCounter) {
	r := startRedis(b)
	writer := newTestBroker(b, r.URL, newRecorder(b), Config{})
	pc := newPresenceCounter()
	listener, err := New(Config{URL: r.URL, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	if err := listener.Run(pc); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { listener.Close() })
	if err := listener.Subscribe("pbench"); err != nil {
		b.Fatal(err)
	}
	return writer, listener, pc
}

func benchInfo(i int) codec.ClientInfo {
	return codec.ClientInfo{Client: "c" + strconv.Itoa(i) + "abcdefghijklmnop", User: "user-" + strconv.Itoa(i), Name: "A Display Name"}
}

// BenchmarkPresenceJoinLeave: one join, then one leave, each waited for on
// the other node: a round trip to Redis (one script) plus the pub/sub
// delivery, per op.
func BenchmarkPresenceJoinLeave(b *testing.B) {
	writer, _, pc := presencePair(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		info := benchInfo(i)
		writer.Join("pbench", info)
		pc.wait(b, func() bool { return pc.joins.Load() == int64(i+1) })
		writer.Leave("pbench", info)
		pc.wait(b, func() bool { return pc.leaves.Load() == int64(i+1) })
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(2*b.N), "µs/join-or-leave")
}

// BenchmarkPresenceJoinLeaveBurst: b.N clients join at once, then leave at
// once, as when many subscribe together: the writes are pipelined.
func BenchmarkPresenceJoinLeaveBurst(b *testing.B) {
	writer, _, pc := presencePair(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		writer.Join("pbench", benchInfo(i))
	}
	pc.wait(b, func() bool { return pc.joins.Load() == int64(b.N) })
	for i := 0; i < b.N; i++ {
		writer.Leave("pbench", benchInfo(i))
	}
	pc.wait(b, func() bool { return pc.leaves.Load() == int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(2*b.N), "µs/join-or-leave")
}

// BenchmarkPresence100: a presence request for a channel with 100 clients
// on another node (one HGETALL).
func BenchmarkPresence100(b *testing.B) {
	writer, listener, pc := presencePair(b)
	for i := range 100 {
		writer.Join("pbench", benchInfo(i))
	}
	pc.wait(b, func() bool { return pc.joins.Load() == 100 })
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		infos, err := listener.Presence(ctx, "pbench")
		if err != nil || len(infos) != 100 {
			b.Fatal(len(infos), err)
		}
	}
}
