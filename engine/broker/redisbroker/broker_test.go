package redisbroker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
)

func testPub(i int) *codec.Publication {
	return &codec.Publication{
		Info:    codec.ClientInfo{Client: fmt.Sprintf("c%d", i), User: "u", Name: "n"},
		JSON:    []byte(fmt.Sprintf(`{"n":%d}`, i)),
		Msgpack: []byte{0x81, 0xa1, 'n', byte(i & 0x7f)},
	}
}

func offsets(ps []*codec.Publication) []uint64 {
	out := make([]uint64, len(ps))
	for i, p := range ps {
		out[i] = p.Offset
	}
	return out
}

// History answers as the memory broker does, for every since/limit case
// of the Broker contract, with the data as published.
func TestHistoryMatchesMemoryBroker(t *testing.T) {
	r := startRedis(t)
	rb := newTestBroker(t, r.URL, newRecorder(t), Config{HistorySize: 5, HistoryTTL: -1})
	mb := hub.NewMemoryBroker(hub.MemoryBrokerConfig{HistorySize: 5, HistoryTTL: -1})
	if err := mb.Run(newRecorder(t)); err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	ctx := context.Background()
	for _, b := range []hub.Broker{rb, mb} {
		if err := b.Subscribe("c"); err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= 8; i++ {
			pos, err := b.Publish(ctx, "c", testPub(i))
			if err != nil || pos.Offset != uint64(i) || pos.Epoch == "" {
				t.Fatalf("%T publish %d: %v %v", b, i, pos, err)
			}
		}
	}
	since := func(o uint64) *codec.StreamPosition { return &codec.StreamPosition{Offset: o} }
	cases := []struct {
		ch    string
		since *codec.StreamPosition
		limit int
		want  []uint64
	}{
		{"c", nil, 0, nil},
		{"c", nil, -1, []uint64{4, 5, 6, 7, 8}},
		{"c", nil, 2, []uint64{7, 8}},
		{"c", nil, 50, []uint64{4, 5, 6, 7, 8}},
		{"c", since(0), -1, []uint64{4, 5, 6, 7, 8}},
		{"c", since(2), -1, []uint64{4, 5, 6, 7, 8}},
		{"c", since(5), -1, []uint64{6, 7, 8}},
		{"c", since(5), 2, []uint64{6, 7}},
		{"c", since(5), 0, nil},
		{"c", since(8), -1, nil},
		{"c", since(80), -1, nil},
		{"unknown", nil, -1, nil},
		{"unknown", since(3), -1, nil},
	}
	for _, c := range cases {
		for _, b := range []hub.Broker{rb, mb} {
			pubs, pos, err := b.History(ctx, c.ch, c.since, c.limit)
			if err != nil {
				t.Fatalf("%T %+v: %v", b, c, err)
			}
			if got := offsets(pubs); !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
				t.Errorf("%T History(%s, %v, %d) = %v, want %v", b, c.ch, c.since, c.limit, got, c.want)
			}
			wantOff := uint64(8)
			if c.ch == "unknown" {
				wantOff = 0
				if pos.Epoch != "" {
					t.Errorf("%T unknown channel has epoch %q", b, pos.Epoch)
				}
			}
			if pos.Offset != wantOff {
				t.Errorf("%T History(%s) offset %d, want %d", b, c.ch, pos.Offset, wantOff)
			}
			for _, p := range pubs {
				w := testPub(int(p.Offset))
				if p.Channel != "c" || p.Epoch != pos.Epoch || !bytes.Equal(p.JSON, w.JSON) || !bytes.Equal(p.Msgpack, w.Msgpack) || p.Info != w.Info {
					t.Errorf("%T publication %d = %+v, want %+v", b, p.Offset, p, w)
				}
			}
		}
	}
	// The epoch survives the end of interest (the history is still there).
	_, pos1, _ := rb.History(ctx, "c", nil, 0)
	rb.Unsubscribe("c")
	rb.Subscribe("c")
	_, pos2, _ := rb.History(ctx, "c", nil, 0)
	if pos1 != pos2 {
		t.Errorf("position changed across unsubscribe/subscribe: %v -> %v", pos1, pos2)
	}
}

// Without history, offsets are still assigned.
func TestNoHistory(t *testing.T) {
	r := startRedis(t)
	b := newTestBroker(t, r.URL, newRecorder(t), Config{HistorySize: -1})
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		pos, err := b.Publish(ctx, "n", testPub(i))
		if err != nil || pos.Offset != uint64(i) {
			t.Fatal(pos, err)
		}
	}
	pubs, pos, err := b.History(ctx, "n", nil, -1)
	if err != nil || len(pubs) != 0 || pos.Offset != 3 {
		t.Fatal(pubs, pos, err)
	}
}

// Two nodes publishing concurrently to one channel: both receive one
// sequence, 1..N in order, each publication once, never concurrently.
func TestTwoNodesOneSequence(t *testing.T) {
	r := startRedis(t)
	ha, hb := newRecorder(t), newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	b := newTestBroker(t, r.URL, hb, Config{})
	for _, x := range []*Broker{a, b} {
		if err := x.Subscribe("seq"); err != nil {
			t.Fatal(err)
		}
	}
	const per = 150
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[uint64]bool{}
	for _, x := range []*Broker{a, a, b, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				pos, err := x.Publish(context.Background(), "seq", testPub(i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if acked[pos.Offset] {
					t.Errorf("offset %d assigned twice", pos.Offset)
				}
				acked[pos.Offset] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, h := range []*recorder{ha, hb} {
		waitFor(t, 10*time.Second, func() error {
			if n := len(h.get("seq")); n != 4*per {
				return fmt.Errorf("delivered %d of %d", n, 4*per)
			}
			return nil
		})
		for i, p := range h.get("seq") {
			if p.Offset != uint64(i+1) {
				t.Fatalf("delivery %d has offset %d", i, p.Offset)
			}
		}
	}
}

// The pub/sub connection killed twice while another node publishes: the
// node reconnects by itself and delivers every offset once, in order
// (caught up from history).
func TestLinkLossCatchesUp(t *testing.T) {
	r := startRedis(t)
	ha := newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	b := newTestBroker(t, r.URL, newRecorder(t), Config{})
	if err := a.Subscribe("cu"); err != nil {
		t.Fatal(err)
	}
	admin := r.client()
	stop := make(chan struct{})
	var n uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			pos, err := b.Publish(context.Background(), "cu", testPub(int(n)))
			if err != nil {
				t.Error(err)
				return
			}
			n = pos.Offset
			time.Sleep(500 * time.Microsecond)
		}
	}()
	for range 2 {
		time.Sleep(150 * time.Millisecond)
		if err := admin.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, func() error { return a.Healthy() })
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	<-done
	waitFor(t, 10*time.Second, func() error {
		if got := len(ha.get("cu")); uint64(got) != n {
			return fmt.Errorf("delivered %d of %d", got, n)
		}
		return nil
	})
	for i, p := range ha.get("cu") {
		if p.Offset != uint64(i+1) {
			t.Fatalf("delivery %d has offset %d", i, p.Offset)
		}
	}
	st := a.Stats()
	if st.Reconnects < 2 || st.Lost != 0 {
		t.Errorf("stats %+v: want 2 reconnects, nothing lost", st)
	}
	t.Logf("%d publications, stats %+v", n, st)
}

// Redis killed (SIGKILL) and restarted: calls fail at once with
// ErrUnavailable meanwhile, the node heals by itself, and every
// acknowledged publication is still there, in the same epoch.
func TestRedisRestart(t *testing.T) {
	r := startRedis(t)
	ha := newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	if err := a.Subscribe("rs"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var epoch string
	for i := 1; i <= 20; i++ {
		pos, err := a.Publish(ctx, "rs", testPub(i))
		if err != nil {
			t.Fatal(err)
		}
		epoch = pos.Epoch
	}
	r.stop(true)
	waitFor(t, 5*time.Second, func() error {
		if a.Healthy() == nil {
			return errors.New("still healthy with Redis down")
		}
		return nil
	})
	if !errors.Is(a.Healthy(), hub.ErrUnavailable) {
		t.Fatalf("Healthy() = %v, want ErrUnavailable", a.Healthy())
	}
	start := time.Now()
	_, err := a.Publish(ctx, "rs", testPub(0))
	if !errors.Is(err, hub.ErrUnavailable) {
		t.Fatalf("publish during outage: %v", err)
	}
	if _, _, err := a.History(ctx, "rs", nil, -1); !errors.Is(err, hub.ErrUnavailable) {
		t.Fatalf("history during outage: %v", err)
	}
	if err := a.Subscribe("other"); !errors.Is(err, hub.ErrUnavailable) {
		t.Fatalf("subscribe during outage: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("calls during the outage took %v: they should fail at once", d)
	}
	r.start()
	waitFor(t, 10*time.Second, func() error { return a.Healthy() })
	for i := 21; i <= 30; i++ {
		pos, err := a.Publish(ctx, "rs", testPub(i))
		if err != nil {
			t.Fatal(err)
		}
		if pos.Epoch != epoch || pos.Offset != uint64(i) {
			t.Fatalf("after restart: %v, want %s/%d", pos, epoch, i)
		}
	}
	pubs, pos, err := a.History(ctx, "rs", nil, -1)
	if err != nil || len(pubs) != 30 || pos.Epoch != epoch {
		t.Fatalf("history after restart: %d pubs, %v, %v", len(pubs), pos, err)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := len(ha.get("rs")); n != 30 {
			return fmt.Errorf("delivered %d of 30", n)
		}
		return nil
	})
	for i, p := range ha.get("rs") {
		if p.Offset != uint64(i+1) {
			t.Fatalf("delivery %d has offset %d", i, p.Offset)
		}
	}
}

// History lost in Redis (FLUSHALL) while a node is subscribed: the next
// publication starts a new epoch, which the node delivers from offset 1.
func TestEpochChange(t *testing.T) {
	r := startRedis(t)
	ha := newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	if err := a.Subscribe("ep"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p1, _ := a.Publish(ctx, "ep", testPub(1))
	a.Publish(ctx, "ep", testPub(2))
	if err := r.client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	p3, err := a.Publish(ctx, "ep", testPub(3))
	if err != nil || p3.Epoch == p1.Epoch || p3.Offset != 1 {
		t.Fatalf("after flush: %v %v (before: %v)", p3, err, p1)
	}
	waitFor(t, 5*time.Second, func() error {
		if n := len(ha.get("ep")); n != 3 {
			return fmt.Errorf("delivered %d of 3", n)
		}
		return nil
	})
	got := ha.get("ep")
	if got[2].Epoch != p3.Epoch || got[2].Offset != 1 {
		t.Fatalf("third delivery %s/%d", got[2].Epoch, got[2].Offset)
	}
}

func TestConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("no URL accepted")
	}
	if _, err := New(Config{URL: "http://x"}); err == nil {
		t.Error("http URL accepted")
	}
	b, err := New(Config{URL: "redis://127.0.0.1:1/0", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if b.size != hub.DefaultHistorySize || b.ttlMS != hub.DefaultHistoryTTL.Milliseconds() || b.metaMS != DefaultMetaTTL.Milliseconds() {
		t.Errorf("defaults: %d %d %d", b.size, b.ttlMS, b.metaMS)
	}
	// Redis down at start: Run does not fail; Healthy says why.
	b.timeout = 50 * time.Millisecond
	if err := b.Run(newRecorder(t)); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Healthy(); !errors.Is(err, hub.ErrUnavailable) {
		t.Errorf("Healthy() = %v", err)
	}
	if _, err := b.Publish(context.Background(), "x", testPub(1)); !errors.Is(err, hub.ErrUnavailable) {
		t.Errorf("Publish = %v", err)
	}
	b.Close()
	if _, err := b.Publish(context.Background(), "x", testPub(1)); !errors.Is(err, hub.ErrClosed) {
		t.Errorf("Publish after Close = %v", err)
	}
}

// Redis losing acknowledged writes (simulated: the offset set back, as a
// crash under appendfsync everysec can leave it) is found by a subscribed
// node when it reconnects: it starts a new epoch rather than let offsets
// be handed out twice.
func TestOffsetRegressionStartsNewEpoch(t *testing.T) {
	r := startRedis(t)
	ha := newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	if err := a.Subscribe("rg"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var p codec.StreamPosition
	for i := 1; i <= 5; i++ {
		p, _ = a.Publish(ctx, "rg", testPub(i))
	}
	waitFor(t, 5*time.Second, func() error {
		if n := len(ha.get("rg")); n != 5 {
			return fmt.Errorf("delivered %d of 5", n)
		}
		return nil
	})
	admin := r.client()
	admin.HSet(ctx, "fanout:{rg}:m", "o", 2)
	admin.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub")
	waitFor(t, 5*time.Second, func() error {
		if a.Stats().Regressions != 1 {
			return fmt.Errorf("regression not found: %+v", a.Stats())
		}
		return nil
	})
	q, err := a.Publish(ctx, "rg", testPub(6))
	if err != nil || q.Epoch == p.Epoch || q.Offset != 1 {
		t.Fatalf("after regression: %v %v (before %v)", q, err, p)
	}
	waitFor(t, 5*time.Second, func() error {
		got := ha.get("rg")
		if len(got) != 6 || got[5].Epoch != q.Epoch || got[5].Offset != 1 {
			return fmt.Errorf("deliveries %v", offsets(got))
		}
		return nil
	})
}

// Unsubscribe ends the node's interest: nothing published afterwards is
// delivered; a new Subscribe delivers from the newest offset on, without
// redelivering what came before.
func TestUnsubscribeResubscribe(t *testing.T) {
	r := startRedis(t)
	ha := newRecorder(t)
	a := newTestBroker(t, r.URL, ha, Config{})
	b := newTestBroker(t, r.URL, newRecorder(t), Config{})
	ctx := context.Background()
	if err := a.Subscribe("u"); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, "u", testPub(1))
	b.Publish(ctx, "u", testPub(2))
	waitFor(t, 5*time.Second, func() error {
		if n := len(ha.get("u")); n != 2 {
			return fmt.Errorf("delivered %d of 2", n)
		}
		return nil
	})
	if err := a.Unsubscribe("u"); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, "u", testPub(3))
	if err := a.Subscribe("u"); err != nil {
		t.Fatal(err)
	}
	b.Publish(ctx, "u", testPub(4))
	waitFor(t, 5*time.Second, func() error {
		if got := offsets(ha.get("u")); !slices.Equal(got, []uint64{1, 2, 4}) {
			return fmt.Errorf("deliveries %v, want [1 2 4]", got)
		}
		return nil
	})
	time.Sleep(50 * time.Millisecond)
	if got := offsets(ha.get("u")); !slices.Equal(got, []uint64{1, 2, 4}) {
		t.Fatalf("deliveries %v, want [1 2 4]", got)
	}
	if a.Stats().Channels != 1 {
		t.Errorf("stats %+v", a.Stats())
	}
}
