package hub

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/fanout-dev/fanout/codec"
)

// countingBroker counts History calls of a memory broker.
type countingBroker struct {
	*MemoryBroker
	histories atomic.Int64
}

func (b *countingBroker) History(ctx context.Context, ch string, since *codec.StreamPosition, limit int) ([]*codec.Publication, codec.StreamPosition, error) {
	b.histories.Add(1)
	return b.MemoryBroker.History(ctx, ch, since, limit)
}

// TestSubscribeUsesKnownPosition: while the node follows a channel without
// a break, a subscribe (or a recovery from the newest position) needs no
// broker read; a recovery from further back does, and so does the first
// subscribe after the node stopped following the channel.
func TestSubscribeUsesKnownPosition(t *testing.T) {
	b := &countingBroker{MemoryBroker: NewMemoryBroker(MemoryBrokerConfig{})}
	h := newHub(t, Config{Broker: b})
	reads := func() int64 { return b.histories.Load() }

	first := newSub(codec.JSON)
	subscribe(t, h, first, SubscribeRequest{ID: 1, HasID: true, Channel: "c"})
	if reads() != 1 {
		t.Fatalf("first subscribe: %d broker reads, want 1", reads())
	}
	start := reply(t, first)
	var others []*fakeSub
	for i := range 10 {
		s := newSub(codec.Msgpack)
		others = append(others, s)
		subscribe(t, h, s, SubscribeRequest{ID: 1, HasID: true, Channel: "c"})
		if r := reply(t, s); r.Offset != start.Offset || r.Epoch != start.Epoch {
			t.Fatalf("subscriber %d: position %s:%d, want %s:%d", i, r.Epoch, r.Offset, start.Epoch, start.Offset)
		}
	}
	if reads() != 1 {
		t.Fatalf("11 subscribes: %d broker reads, want 1", reads())
	}

	pos := publish(t, h, "c", 1)
	publish(t, h, "c", 2)
	last := publish(t, h, "c", 3)
	h.sync()
	late := newSub(codec.JSON)
	subscribe(t, h, late, SubscribeRequest{ID: 1, HasID: true, Channel: "c"})
	if r := reply(t, late); r.Offset != last.Offset {
		t.Fatalf("after 3 publications: position %d, want %d", r.Offset, last.Offset)
	}
	upToDate := newSub(codec.JSON)
	subscribe(t, h, upToDate, SubscribeRequest{ID: 1, HasID: true, Channel: "c", Recover: &last})
	if r := reply(t, upToDate); !r.Recovered || len(r.Publications) != 0 || r.Offset != last.Offset {
		t.Fatalf("recover from the newest: %+v", r)
	}
	if reads() != 1 {
		t.Fatalf("subscribes at the newest position: %d broker reads, want 1", reads())
	}
	behind := newSub(codec.JSON)
	subscribe(t, h, behind, SubscribeRequest{ID: 1, HasID: true, Channel: "c", Recover: &pos})
	if r := reply(t, behind); !r.Recovered || len(r.Publications) != 2 {
		t.Fatalf("recover from offset %d: %+v", pos.Offset, r)
	}
	if reads() != 2 {
		t.Fatalf("recovery from behind: %d broker reads, want 2", reads())
	}

	// The node stops following the channel: what it knew is forgotten.
	h.sync()
	for _, s := range append(others, first, late, upToDate, behind) {
		unsubscribe(t, h, s, "c")
	}
	again := newSub(codec.JSON)
	subscribe(t, h, again, SubscribeRequest{ID: 1, HasID: true, Channel: "c"})
	if reads() != 3 {
		t.Fatalf("first subscribe after the interest ended: %d broker reads, want 3", reads())
	}
	if got := h.Stats().LocalPositions; got != 12 {
		t.Fatalf("Stats.LocalPositions %d, want 12", got)
	}
}
