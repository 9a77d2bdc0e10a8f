package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
)

// jsonString returns a JSON string value of n bytes in all.
func jsonString(n int) []byte {
	return []byte(`"` + strings.Repeat("x", n-2) + `"`)
}

// publishData publishes data in enc to ch and fails the test on error.
func publishData(t testing.TB, h *Hub, ch string, data []byte, enc codec.Encoding) codec.StreamPosition {
	t.Helper()
	pos, err := h.Publish(context.Background(), ch, data, enc, codec.ClientInfo{Client: "pub"})
	if err != nil {
		t.Fatalf("Publish(%q, %d bytes): %v", ch, len(data), err)
	}
	return pos
}

// historyOffsets returns the offsets of pubs as messages for checkOffsets.
func historyOffsets(pubs []*codec.Publication) []codec.ServerMessage {
	out := make([]codec.ServerMessage, len(pubs))
	for i, p := range pubs {
		out[i] = codec.ServerMessage{Offset: p.Offset}
	}
	return out
}

// TestHistoryBounds publishes to many distinct channels, nobody subscribed,
// and checks that history stays within its byte budget and channel cap,
// evicting the least recently published channels first and forgetting
// them (their memory is freed, not only uncounted).
func TestHistoryBounds(t *testing.T) {
	big := func(int) int { return 1000 }
	tests := []struct {
		name                   string
		bytes                  int64
		channels               int
		size                   func(i int) int // data bytes of the i-th publication
		wantEvictedByBytes     bool
		wantEvictedForChannels bool
	}{
		{"byte budget", 256 << 10, -1, big, true, false},
		{"channel cap", -1, 50, big, false, true},
		// Small publications hit the cap, then big ones the budget.
		{"both", 256 << 10, 50, func(i int) int { return max(10, 8*i-4000) }, true, true},
	}
	const published = 1000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewMemoryBroker(MemoryBrokerConfig{HistoryBytes: tt.bytes, HistoryChannels: tt.channels})
			h := newHub(t, Config{Broker: b})
			for i := range published {
				publishData(t, h, fmt.Sprint("c", i), jsonString(tt.size(i)), codec.JSON)
			}
			st := h.Stats()
			if tt.bytes > 0 && (st.HistoryBytes > tt.bytes || st.HistoryBytes <= 0) {
				t.Errorf("HistoryBytes = %d, budget %d", st.HistoryBytes, tt.bytes)
			}
			if tt.channels > 0 && st.HistoryChannels > tt.channels {
				t.Errorf("HistoryChannels = %d, cap %d", st.HistoryChannels, tt.channels)
			}
			if st.HistoryChannels == 0 || st.HistoryChannels >= published {
				t.Errorf("HistoryChannels = %d of %d published", st.HistoryChannels, published)
			}
			// Without interest, a channel that lost its history is forgotten.
			if got := b.Channels(); got != st.HistoryChannels {
				t.Errorf("broker holds %d channels, %d with history", got, st.HistoryChannels)
			}
			if (st.HistoryEvictedBytes > 0) != tt.wantEvictedByBytes || (st.HistoryEvictedChannels > 0) != tt.wantEvictedForChannels {
				t.Errorf("evicted by bytes %d, for channels %d", st.HistoryEvictedBytes, st.HistoryEvictedChannels)
			}
			if got := st.HistoryEvictedBytes + st.HistoryEvictedChannels; got != uint64(published-st.HistoryChannels) {
				t.Errorf("evicted %d publications, want %d", got, published-st.HistoryChannels)
			}
			// The least recently published lost their history first.
			if _, pubs, _ := h.History("c0", 0); len(pubs) != 0 {
				t.Errorf("oldest channel still holds %d publications", len(pubs))
			}
			last := fmt.Sprint("c", published-1)
			if _, pubs, _ := h.History(last, 0); len(pubs) != 1 {
				t.Errorf("newest channel holds %d publications, want 1", len(pubs))
			}
		})
	}
}

// TestHistoryBudgetOneChannel: one channel over the budget loses its
// oldest publications and keeps a run of consecutive offsets ending at its
// newest.
func TestHistoryBudgetOneChannel(t *testing.T) {
	h := newHub(t, Config{HistorySize: 1000, HistoryBytes: 64 << 10})
	data := jsonString(1000)
	for range 200 {
		publishData(t, h, "big", data, codec.JSON)
	}
	st := h.Stats()
	if st.HistoryBytes > 64<<10 || st.HistoryChannels != 1 || st.HistoryEvictedBytes == 0 {
		t.Fatalf("stats %+v", st)
	}
	pos, pubs, err := h.History("big", 0)
	if err != nil || pos.Offset != 200 || len(pubs) == 0 {
		t.Fatalf("History = %+v, %d pubs, %v", pos, len(pubs), err)
	}
	checkOffsets(t, "history", historyOffsets(pubs), 200-uint64(len(pubs))+1, 200)
	if got := uint64(len(pubs)) + st.HistoryEvictedBytes; got != 200 {
		t.Fatalf("%d held + %d evicted, want 200", len(pubs), st.HistoryEvictedBytes)
	}
}

// TestHistoryTTLFreesByItself: with no publish, subscribe or history call
// after them, expired channels are freed by the broker's janitor.
func TestHistoryTTLFreesByItself(t *testing.T) {
	b := NewMemoryBroker(MemoryBrokerConfig{HistoryTTL: 20 * time.Millisecond})
	h := newHub(t, Config{Broker: b})
	for i := range 100 {
		publishData(t, h, fmt.Sprint("t", i), jsonString(100), codec.JSON)
	}
	checkFor(t, wait, func() error {
		st := h.Stats()
		if st.HistoryChannels != 0 || st.HistoryBytes != 0 || b.Channels() != 0 {
			return fmt.Errorf("history holds %d bytes in %d channels; broker %d channels", st.HistoryBytes, st.HistoryChannels, b.Channels())
		}
		if st.HistoryExpired != 100 {
			return fmt.Errorf("expired %d, want 100", st.HistoryExpired)
		}
		return nil
	})
}

// TestHistoryDefaults: the zero Config bounds history.
func TestHistoryDefaults(t *testing.T) {
	b := NewMemoryBroker(MemoryBrokerConfig{})
	if b.ttl != DefaultHistoryTTL || b.maxBytes != DefaultHistoryBytes || b.maxChannels != DefaultHistoryChannels || b.size != DefaultHistorySize {
		t.Fatalf("defaults: ttl %v, bytes %d, channels %d, size %d", b.ttl, b.maxBytes, b.maxChannels, b.size)
	}
	b = NewMemoryBroker(MemoryBrokerConfig{HistoryTTL: -1, HistoryBytes: -1, HistoryChannels: -1})
	if b.ttl != 0 || b.maxBytes != 0 || b.maxChannels != 0 {
		t.Fatalf("negative: ttl %v, bytes %d, channels %d", b.ttl, b.maxBytes, b.maxChannels)
	}
}

// TestRecoveryAfterEviction: a recovery reaching into evicted history
// answers recovered:false with what is held (never a silent gap); one that
// missed nothing still recovers.
func TestRecoveryAfterEviction(t *testing.T) {
	tests := []struct {
		name     string
		cfg      MemoryBrokerConfig
		evict    func(t *testing.T, h *Hub) // runs after offsets 1..10 of "r"
		from     uint64
		want     bool
		wantPubs int // -1: a consecutive run ending at the newest, shorter than the gap
	}{
		{"channel cap evicts all", MemoryBrokerConfig{HistoryChannels: 1}, func(t *testing.T, h *Hub) {
			publishData(t, h, "other", jsonString(10), codec.JSON)
		}, 5, false, 0},
		{"channel cap, nothing missed", MemoryBrokerConfig{HistoryChannels: 1}, func(t *testing.T, h *Hub) {
			publishData(t, h, "other", jsonString(10), codec.JSON)
		}, 10, true, 0},
		{"byte budget evicts the front", MemoryBrokerConfig{HistoryBytes: 8 << 10}, func(t *testing.T, h *Hub) {
			for range 10 {
				publishData(t, h, "r", jsonString(1000), codec.JSON)
			}
		}, 2, false, -1},
		{"byte budget, recent gap held", MemoryBrokerConfig{HistoryBytes: 8 << 10}, func(t *testing.T, h *Hub) {
			for range 10 {
				publishData(t, h, "r", jsonString(1000), codec.JSON)
			}
		}, 19, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHub(t, Config{Broker: NewMemoryBroker(tt.cfg)})
			keeper := newSub(codec.JSON) // keeps the epoch alive
			subscribe(t, h, keeper, SubscribeRequest{Channel: "r"})
			var pos codec.StreamPosition
			for i := 1; i <= 10; i++ {
				pos = publish(t, h, "r", i)
			}
			tt.evict(t, h)
			newest, _, err := h.History("r", 0)
			if err != nil || newest.Epoch != pos.Epoch {
				t.Fatalf("History: %+v, %v (epoch was %q)", newest, err, pos.Epoch)
			}
			s := newSub(codec.JSON)
			subscribe(t, h, s, SubscribeRequest{ID: 1, HasID: true, Channel: "r", Recover: &codec.StreamPosition{Epoch: pos.Epoch, Offset: tt.from}})
			r := reply(t, s)
			if r.Recovered != tt.want || r.Offset != newest.Offset || r.Epoch != pos.Epoch {
				t.Fatalf("reply recovered=%v offset=%d, want %v %d", r.Recovered, r.Offset, tt.want, newest.Offset)
			}
			switch {
			case tt.wantPubs >= 0 && len(r.Publications) != tt.wantPubs:
				t.Fatalf("reply has %d publications, want %d", len(r.Publications), tt.wantPubs)
			case tt.wantPubs < 0:
				n := uint64(len(r.Publications))
				if n == 0 || n >= newest.Offset-tt.from {
					t.Fatalf("reply has %d publications for a gap of %d", n, newest.Offset-tt.from)
				}
				got := make([]codec.ServerMessage, n)
				for i, p := range r.Publications {
					got[i] = codec.ServerMessage{Offset: p.Offset}
				}
				checkOffsets(t, "recovered", got, newest.Offset-n+1, newest.Offset)
			}
			publish(t, h, "r", 99)
			h.sync()
			checkOffsets(t, "live", s.pubs(), newest.Offset+1, newest.Offset+1)
		})
	}
}

func TestPublishTooLarge(t *testing.T) {
	const limit = 1000
	h := newHub(t, Config{MaxPublicationBytes: limit})
	controls := []byte(`"` + strings.Repeat(`\u0001`, 200) + `"`) // 202 bytes of msgpack
	mpControls := mustTranscode(t, controls)
	tests := []struct {
		name string
		data []byte
		enc  codec.Encoding
		want error
	}{
		{"json under the limit", jsonString(limit - 10), codec.JSON, nil},
		{"json over the limit", jsonString(limit + 1), codec.JSON, ErrTooLarge},
		{"msgpack growing past the limit in json", mpControls, codec.Msgpack, ErrTooLarge},
		{"small msgpack", mustTranscode(t, jsonString(100)), codec.Msgpack, nil},
	}
	refused := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.Publish(context.Background(), "big", tt.data, tt.enc, codec.ClientInfo{})
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.want != nil {
				refused++
			}
			if _, err := h.TryPublish(context.Background(), "big", tt.data, tt.enc, codec.ClientInfo{}); !errors.Is(err, tt.want) {
				t.Fatalf("TryPublish err = %v, want %v", err, tt.want)
			}
			if tt.want != nil {
				refused++
			}
		})
	}
	if st := h.Stats(); st.TooLarge != uint64(refused) || st.Published != uint64(2*len(tests)-refused) {
		t.Fatalf("stats: too large %d, published %d (refused %d)", st.TooLarge, st.Published, refused)
	}
	if len(mpControls) > limit {
		t.Fatalf("test data: msgpack is %d bytes", len(mpControls))
	}
}

// TestHistoryReplyBound: a history reply keeps the newest publications
// that fit in MaxReplyBytes, oldest first, and says it was cut.
func TestHistoryReplyBound(t *testing.T) {
	const limit = 8 << 10
	h := newHub(t, Config{MaxReplyBytes: limit})
	for range 30 {
		publishData(t, h, "h", jsonString(1000), codec.JSON)
	}
	publishData(t, h, "small", jsonString(10), codec.JSON)
	tests := []struct {
		channel       string
		limit         int
		enc           codec.Encoding
		wantTruncated bool
	}{
		{"h", 0, codec.JSON, true},
		{"h", 0, codec.Msgpack, true},
		{"h", 3, codec.JSON, false},
		{"small", 0, codec.JSON, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/limit=%d/%v", tt.channel, tt.limit, tt.enc), func(t *testing.T) {
			r, err := h.HistoryFor(tt.channel, tt.limit, tt.enc)
			if err != nil {
				t.Fatal(err)
			}
			if r.Truncated != tt.wantTruncated || len(r.Publications) == 0 {
				t.Fatalf("truncated %v with %d publications", r.Truncated, len(r.Publications))
			}
			checkOffsets(t, "history", historyOffsets(r.Publications), r.Position.Offset-uint64(len(r.Publications))+1, r.Position.Offset)
			msg := codec.AppendHistoryReply(nil, tt.enc, 1<<63, r.Position, r.Publications, r.Truncated)
			if len(msg) > limit {
				t.Fatalf("reply of %d bytes, limit %d", len(msg), limit)
			}
			var m codec.ServerMessage
			if err := codec.DecodeServerMessage(tt.enc, msg, &m); err != nil || m.Truncated != tt.wantTruncated {
				t.Fatalf("decoded reply: truncated %v, %v", m.Truncated, err)
			}
		})
	}
	// History without an encoding fits either.
	_, pubs, err := h.History("h", 0)
	if err != nil || len(pubs) == 0 {
		t.Fatalf("History: %d pubs, %v", len(pubs), err)
	}
	for _, enc := range []codec.Encoding{codec.JSON, codec.Msgpack} {
		if n := len(codec.AppendHistoryOK(nil, enc, 1, codec.StreamPosition{}, pubs)); n > limit {
			t.Fatalf("History reply in %v: %d bytes", enc, n)
		}
	}
	if st := h.Stats(); st.Truncated != 3 {
		t.Fatalf("Stats.Truncated = %d, want 3", st.Truncated)
	}
}

// TestRecoverReplyBound: a recovery whose publications would not fit in
// MaxReplyBytes answers recovered:false with none and the newest position;
// live delivery continues after it.
func TestRecoverReplyBound(t *testing.T) {
	const limit = 8 << 10
	for _, enc := range []codec.Encoding{codec.JSON, codec.Msgpack} {
		t.Run(enc.String(), func(t *testing.T) {
			h := newHub(t, Config{MaxReplyBytes: limit})
			first := publishData(t, h, "r", jsonString(10), codec.JSON)
			var last codec.StreamPosition
			for range 20 {
				last = publishData(t, h, "r", jsonString(1000), codec.JSON)
			}
			s := &sizeSub{fakeSub: newSub(enc)}
			subscribe(t, h, s, SubscribeRequest{ID: 1, HasID: true, Channel: "r", Recover: &first})
			r := reply(t, s.fakeSub)
			if r.Recovered || len(r.Publications) != 0 || r.Offset != last.Offset || r.Epoch != last.Epoch {
				t.Fatalf("reply recovered=%v, %d publications, offset %d (newest %d)", r.Recovered, len(r.Publications), r.Offset, last.Offset)
			}
			if s.largest > limit {
				t.Fatalf("reply frame of %d bytes", s.largest)
			}
			// A small gap still recovers.
			s2 := newSub(enc)
			from := codec.StreamPosition{Epoch: last.Epoch, Offset: last.Offset - 2}
			subscribe(t, h, s2, SubscribeRequest{ID: 1, HasID: true, Channel: "r", Recover: &from})
			if r := reply(t, s2); !r.Recovered || len(r.Publications) != 2 {
				t.Fatalf("small gap: recovered=%v, %d publications", r.Recovered, len(r.Publications))
			}
			publish(t, h, "r", 7)
			h.sync()
			checkOffsets(t, "live", s.pubs(), last.Offset+1, last.Offset+1)
			if st := h.Stats(); st.Truncated != 1 || st.NotRecovered != 1 || st.Recovered != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// sizeSub records the largest frame it was sent.
type sizeSub struct {
	*fakeSub
	mu      sync.Mutex
	largest int
}

func (s *sizeSub) Send(f *wsframe.Frame) {
	s.mu.Lock()
	s.largest = max(s.largest, len(f.Bytes()))
	s.mu.Unlock()
	s.fakeSub.Send(f)
}

// TestBackpressurePerChannel holds the only shard worker inside a
// subscriber of "hot" until hot is backlogged, then checks that publishing
// to "cold" (whose subscriber shares that worker) neither waits nor is
// refused, while TryPublish to hot is refused and Publish to hot waits.
func TestBackpressurePerChannel(t *testing.T) {
	h := newHub(t, Config{Shards: 1})
	blocker := newSub(codec.JSON)
	blocker.block, blocker.entered = make(chan struct{}), make(chan struct{})
	subscribe(t, h, blocker, SubscribeRequest{Channel: "hot"})
	cold := newSub(codec.JSON)
	subscribe(t, h, cold, SubscribeRequest{Channel: "cold"})
	ctx := context.Background()
	info := codec.ClientInfo{Client: "p"}

	publish(t, h, "hot", 1)
	<-blocker.entered // the worker is stuck until block is closed
	hotN := 1
	for {
		_, err := h.TryPublish(ctx, "hot", []byte("1"), codec.JSON, info)
		if errors.Is(err, ErrBackpressure) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hotN++; hotN > 10*maxPendingPubs {
			t.Fatalf("hot accepted %d publications with its worker stuck", hotN)
		}
	}
	if hotN < maxPendingPubs {
		t.Fatalf("hot refused after %d publications, bound %d", hotN, maxPendingPubs)
	}

	// Cold: TryPublish succeeds; Publish completes while hot is still
	// backlogged (the worker is still stuck).
	for i := 1; i <= 5; i++ {
		if _, err := h.TryPublish(ctx, "cold", []byte("1"), codec.JSON, info); err != nil {
			t.Fatalf("TryPublish to cold: %v", err)
		}
	}
	coldDone := make(chan error, 1)
	go func() {
		_, err := h.Publish(ctx, "cold", []byte("1"), codec.JSON, info)
		coldDone <- err
	}()
	if err := <-coldDone; err != nil {
		t.Fatalf("Publish to cold: %v", err)
	}

	// Hot: Publish waits until its context ends.
	wctx, cancel := context.WithCancel(ctx)
	hotDone := make(chan error, 1)
	go func() {
		_, err := h.Publish(wctx, "hot", []byte("1"), codec.JSON, info)
		hotDone <- err
	}()
	checkFor(t, wait, func() error {
		if st := h.Stats(); st.Throttled != 1 {
			return fmt.Errorf("throttled %d", st.Throttled)
		}
		return nil
	})
	cancel()
	if err := <-hotDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting Publish to hot: %v", err)
	}
	if st := h.Stats(); st.Refused != 1 || st.Throttled != 1 {
		t.Fatalf("stats: refused %d, throttled %d", st.Refused, st.Throttled)
	}

	// A publisher waiting on hot gets through once the worker drains.
	hotWait := make(chan error, 1)
	go func() {
		_, err := h.Publish(ctx, "hot", []byte("1"), codec.JSON, info)
		hotWait <- err
	}()
	checkFor(t, wait, func() error {
		if st := h.Stats(); st.Throttled != 2 {
			return fmt.Errorf("throttled %d", st.Throttled)
		}
		return nil
	})
	close(blocker.block)
	if err := <-hotWait; err != nil {
		t.Fatalf("Publish to hot after the drain: %v", err)
	}
	hotN++
	h.sync()
	checkOffsets(t, "hot", blocker.pubs(), 1, uint64(hotN))
	checkOffsets(t, "cold", cold.pubs(), 1, 6)
	if _, err := h.TryPublish(ctx, "hot", []byte("1"), codec.JSON, info); err != nil {
		t.Fatalf("TryPublish to hot after the drain: %v", err)
	}
}

// TestBackpressureClose: a publisher waiting for room returns ErrClosed
// when the hub closes.
func TestBackpressureClose(t *testing.T) {
	h, err := New(Config{Shards: 1})
	if err != nil {
		t.Fatal(err)
	}
	blocker := newSub(codec.JSON)
	blocker.block, blocker.entered = make(chan struct{}), make(chan struct{})
	subscribe(t, h, blocker, SubscribeRequest{Channel: "hot"})
	publish(t, h, "hot", 1)
	<-blocker.entered
	for range maxPendingPubs { // the last one makes it backlogged
		publish(t, h, "hot", 1)
	}
	done := make(chan error, 1)
	go func() {
		_, err := h.Publish(context.Background(), "hot", []byte("1"), codec.JSON, codec.ClientInfo{})
		done <- err
	}()
	checkFor(t, wait, func() error {
		if st := h.Stats(); st.Throttled != 1 {
			return fmt.Errorf("throttled %d", st.Throttled)
		}
		return nil
	})
	closed := make(chan error, 1)
	go func() { closed <- h.Close() }()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiting Publish: %v", err)
	}
	close(blocker.block)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

// TestPresenceOrderedWithPublications: a listener gets joins, leaves and
// publications in the order they happened, its reply first.
func TestPresenceOrderedWithPublications(t *testing.T) {
	h := newHub(t, Config{Shards: 4})
	l := newSub(codec.Msgpack)
	subscribe(t, h, l, SubscribeRequest{ID: 1, HasID: true, Channel: "o", Presence: true})
	x := newSub(codec.JSON)
	publish(t, h, "o", 1)
	subscribe(t, h, x, SubscribeRequest{Channel: "o"})
	publish(t, h, "o", 2)
	unsubscribe(t, h, x, "o")
	publish(t, h, "o", 3)
	h.sync()
	var got []string
	for _, m := range l.messages() {
		switch m.Push {
		case codec.PushNone:
			got = append(got, "reply")
		case codec.PushPub:
			got = append(got, fmt.Sprint("pub", m.Offset))
		case codec.PushJoin:
			got = append(got, "join "+m.Info.Client)
		case codec.PushLeave:
			got = append(got, "leave "+m.Info.Client)
		}
	}
	want := []string{"reply", "join " + l.info.Client, "pub1", "join " + x.info.Client, "pub2", "leave " + x.info.Client, "pub3"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("listener got %v, want %v", got, want)
	}
	l.checkErrs(t)
}

// TestPresenceStorm: many listeners joining at once each get their reply
// first, then the join of every listener that subscribed after them, and
// the pushes are coalesced into fewer calls than pushes.
func TestPresenceStorm(t *testing.T) {
	const n = 200
	h := newHub(t, Config{Shards: 2})
	subs := make([]*fakeSub, n)
	for i := range subs {
		subs[i] = newSub(codec.JSON)
	}
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Go(func() {
			if err := h.Subscribe(s, SubscribeRequest{ID: 1, HasID: true, Channel: "storm", Presence: true}); err != nil {
				t.Errorf("Subscribe: %v", err)
			}
		})
	}
	wg.Wait()
	h.sync()
	total := 0
	for _, s := range subs {
		ms := s.messages()
		if len(ms) == 0 || ms[0].Push != codec.PushNone {
			t.Fatalf("%s: first message is not its reply", s.info.Client)
		}
		seen := map[string]bool{}
		for _, m := range ms[1:] {
			if m.Push != codec.PushJoin || seen[m.Info.Client] {
				t.Fatalf("%s: unexpected %+v", s.info.Client, m)
			}
			seen[m.Info.Client] = true
		}
		if !seen[s.info.Client] {
			t.Fatalf("%s: no own join", s.info.Client)
		}
		total += len(ms) - 1
		s.checkErrs(t)
	}
	// Each listener gets at least the joins of everyone who became present
	// after it (n(n+1)/2 in all), and also those of subscribers that
	// became present between its subscribe and its reply.
	if want := n * (n + 1) / 2; total < want || total > n*n {
		t.Fatalf("%d joins delivered, want %d to %d", total, want, n*n)
	}
	if st := h.Stats(); st.Presence != uint64(total) {
		t.Fatalf("Stats.Presence = %d, want %d", st.Presence, total)
	}
	// Leaving: every remaining listener gets every later leave.
	for _, s := range subs {
		unsubscribe(t, h, s, "storm")
	}
	h.sync()
	leaves := 0
	for _, s := range subs {
		leaves += s.count(codec.PushLeave)
	}
	if want := n * (n - 1) / 2; leaves != want {
		t.Fatalf("%d leaves delivered, want %d", leaves, want)
	}
}

// lockProbe checks, when its subscribe reply is sent, that the channel's
// lock is free: replies are encoded and sent outside it.
type lockProbe struct {
	*fakeSub
	h       *Hub
	channel string
	held    bool
}

func (p *lockProbe) Send(f *wsframe.Frame) {
	if c := p.h.lookup(p.channel); c != nil && bytes.Contains(f.Payload(), []byte(`"ok"`)) {
		if c.mu.TryLock() {
			c.mu.Unlock()
		} else {
			p.held = true
		}
	}
	p.fakeSub.Send(f)
}

func TestReplyOutsideChannelLock(t *testing.T) {
	h := newHub(t, Config{})
	for i := 1; i <= 3; i++ {
		publish(t, h, "l", i)
	}
	p := &lockProbe{fakeSub: newSub(codec.JSON), h: h, channel: "l"}
	subscribe(t, h, p, SubscribeRequest{ID: 1, HasID: true, Channel: "l", Presence: true, Recover: &codec.StreamPosition{}})
	if p.held {
		t.Fatal("subscribe reply sent with the channel lock held")
	}
	if r := reply(t, p.fakeSub); r.Offset != 3 {
		t.Fatalf("reply %+v", r)
	}
}

// TestHistoryEvictsLeastRecentlyPublished: a publish moves its channel to
// the back of the eviction order.
func TestHistoryEvictsLeastRecentlyPublished(t *testing.T) {
	h := newHub(t, Config{HistoryChannels: 2})
	for _, ch := range []string{"a", "b", "a", "c"} { // c pushes out b, not a
		publishData(t, h, ch, jsonString(10), codec.JSON)
	}
	tests := []struct {
		channel string
		held    int
	}{
		{"a", 2}, {"b", 0}, {"c", 1},
	}
	for _, tt := range tests {
		if _, pubs, err := h.History(tt.channel, 0); err != nil || len(pubs) != tt.held {
			t.Errorf("History(%q): %d publications, %v; want %d", tt.channel, len(pubs), err, tt.held)
		}
	}
	if st := h.Stats(); st.HistoryChannels != 2 || st.HistoryEvictedChannels != 1 {
		t.Fatalf("stats: %d channels, %d evicted", st.HistoryChannels, st.HistoryEvictedChannels)
	}
}

// TestPresenceJoinAfterReply: a presence subscriber gets the join of anyone
// who subscribes after it has seen its own reply. The reply goes out before
// the subscriber's activation; a listener registered only at activation
// missed a join that came in between (TestAuthNoSpoofing, once in CI).
func TestPresenceJoinAfterReply(t *testing.T) {
	h := newHub(t, Config{Shards: 2})
	bob, alice := newSub(codec.JSON), newSub(codec.JSON)
	bob.block, bob.entered = make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- h.Subscribe(bob, SubscribeRequest{ID: 1, HasID: true, Channel: "room", Presence: true})
	}()
	<-bob.entered // bob's reply is being sent: bob could read it now
	if err := h.Subscribe(alice, SubscribeRequest{ID: 1, HasID: true, Channel: "room"}); err != nil {
		t.Fatal(err)
	}
	close(bob.block)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.sync()
	ms := bob.messages()
	if len(ms) == 0 || ms[0].Push != codec.PushNone {
		t.Fatalf("bob's first message %+v, want its reply", ms)
	}
	for _, m := range ms[1:] {
		if m.Push == codec.PushJoin && m.Info.Client == alice.info.Client {
			return
		}
	}
	t.Fatalf("bob missed alice's join: %+v", ms)
}
