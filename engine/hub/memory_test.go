package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/fanout-dev/fanout/codec"
)

// recorder is a BrokerHandler that records the offsets it is handed.
type recorder struct {
	mu   sync.Mutex
	seen map[string][]uint64
}

func (r *recorder) HandlePublication(ch string, pub *codec.Publication) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = make(map[string][]uint64)
	}
	r.seen[ch] = append(r.seen[ch], pub.Offset)
}

func brokerPublish(t *testing.T, b Broker, ch string, n int) codec.StreamPosition {
	t.Helper()
	pos, err := b.Publish(context.Background(), ch, &codec.Publication{JSON: fmt.Append(nil, n)})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	return pos
}

func TestMemoryBrokerHistory(t *testing.T) {
	b := NewMemoryBroker(MemoryBrokerConfig{HistorySize: 20})
	rec := &recorder{}
	if err := b.Run(rec); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := 1; i <= 35; i++ { // wraps the ring after it grew 8, 16, 20
		if pos := brokerPublish(t, b, "m", i); pos.Offset != uint64(i) {
			t.Fatalf("offset %d, want %d", pos.Offset, i)
		}
	}
	tests := []struct {
		name     string
		since    *codec.StreamPosition
		limit    int
		from, to uint64 // 0, 0: none
	}{
		{"position only", nil, 0, 0, 0},
		{"all", nil, -1, 16, 35},
		{"newest 5", nil, 5, 31, 35},
		{"more than held", nil, 50, 16, 35},
		{"since inside", &codec.StreamPosition{Offset: 30}, -1, 31, 35},
		{"since inside, limited", &codec.StreamPosition{Offset: 20}, 3, 21, 23},
		{"since before history", &codec.StreamPosition{Offset: 2}, -1, 16, 35},
		{"since newest", &codec.StreamPosition{Offset: 35}, -1, 0, 0},
		{"since future", &codec.StreamPosition{Offset: 99}, -1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pubs, pos, err := b.History(context.Background(), "m", tt.since, tt.limit)
			if err != nil || pos.Offset != 35 || pos.Epoch == "" {
				t.Fatalf("History: %+v, %v", pos, err)
			}
			if tt.to == 0 {
				if len(pubs) != 0 {
					t.Fatalf("got %d publications, want none", len(pubs))
				}
				return
			}
			got := make([]codec.ServerMessage, len(pubs))
			for i, p := range pubs {
				got[i] = codec.ServerMessage{Offset: p.Offset}
				if string(p.JSON) != fmt.Sprint(p.Offset) || p.Channel != "m" || p.Epoch != pos.Epoch {
					t.Fatalf("publication %+v", p)
				}
			}
			checkOffsets(t, "history", got, tt.from, tt.to)
		})
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if got := len(rec.seen["m"]); got != 35 {
		t.Fatalf("handler saw %d publications", got)
	}
}

func TestMemoryBrokerInterestKeepsEpoch(t *testing.T) {
	b := NewMemoryBroker(MemoryBrokerConfig{HistorySize: -1})
	if err := b.Run(&recorder{}); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Subscribe("k"); err != nil {
		t.Fatal(err)
	}
	p1 := brokerPublish(t, b, "k", 1)
	p2 := brokerPublish(t, b, "k", 2)
	if p2.Epoch != p1.Epoch || p2.Offset != 2 {
		t.Fatalf("with interest: %+v then %+v", p1, p2)
	}
	if pubs, pos, _ := b.History(context.Background(), "k", nil, -1); len(pubs) != 0 || pos != p2 {
		t.Fatalf("History without history size: %d pubs at %+v", len(pubs), pos)
	}
	if err := b.Unsubscribe("k"); err != nil {
		t.Fatal(err)
	}
	if n := b.Channels(); n != 0 {
		t.Fatalf("channels after interest ended: %d", n)
	}
	if p3 := brokerPublish(t, b, "k", 3); p3.Epoch == p1.Epoch || p3.Offset != 1 {
		t.Fatalf("after history was lost: %+v", p3)
	}
}

func TestMemoryBrokerLifecycle(t *testing.T) {
	b := NewMemoryBroker(MemoryBrokerConfig{})
	if err := b.Run(&recorder{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Run(&recorder{}); err == nil {
		t.Fatal("second Run succeeded")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := b.Publish(context.Background(), "c", &codec.Publication{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v", err)
	}
	if err := b.Subscribe("c"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}
