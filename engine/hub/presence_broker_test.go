package hub

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// presenceBroker is a MemoryBroker that is a PresenceBroker: it records
// Join and Leave, answers Presence with remote (or err), and lets the test
// deliver other nodes' joins and leaves through the handler.
type presenceBroker struct {
	*MemoryBroker
	h PresenceHandler

	mu     sync.Mutex
	calls  []string // "j:<client>" or "l:<client>"
	remote []codec.ClientInfo
	err    error
}

func (b *presenceBroker) Run(h BrokerHandler) error {
	b.h = h.(PresenceHandler)
	return b.MemoryBroker.Run(h)
}

func (b *presenceBroker) Join(ch string, info codec.ClientInfo) {
	b.mu.Lock()
	b.calls = append(b.calls, "j:"+info.Client)
	b.mu.Unlock()
}

func (b *presenceBroker) Leave(ch string, info codec.ClientInfo) {
	b.mu.Lock()
	b.calls = append(b.calls, "l:"+info.Client)
	b.mu.Unlock()
}

func (b *presenceBroker) Presence(context.Context, string) ([]codec.ClientInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.remote), b.err
}

func (b *presenceBroker) getCalls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.calls)
}

func clients(infos []codec.ClientInfo) []string {
	var out []string
	for _, in := range infos {
		out = append(out, in.Client)
	}
	slices.Sort(out)
	return out
}

// With a PresenceBroker the hub tells it every join and leave of its own
// subscribers in order, lists its own and the broker's (other nodes')
// clients, fails presence as the broker does, and pushes other nodes'
// joins and leaves to its presence listeners only.
func TestPresenceBroker(t *testing.T) {
	pb := &presenceBroker{MemoryBroker: NewMemoryBroker(MemoryBrokerConfig{})}
	h := newHub(t, Config{Broker: pb})
	listener, member := newSub(codec.JSON), newSub(codec.Msgpack)
	subscribe(t, h, listener, SubscribeRequest{Channel: "c", Presence: true})
	subscribe(t, h, member, SubscribeRequest{Channel: "c"})
	unsubscribe(t, h, member, "c")
	subscribe(t, h, member, SubscribeRequest{Channel: "c"})
	a, m := listener.info.Client, member.info.Client
	if got, want := pb.getCalls(), []string{"j:" + a, "j:" + m, "l:" + m, "j:" + m}; !slices.Equal(got, want) {
		t.Fatalf("broker got %v, want %v", got, want)
	}

	remote := codec.ClientInfo{Client: "r1", User: "ru", Name: "Remote"}
	pb.mu.Lock()
	pb.remote = []codec.ClientInfo{remote}
	pb.mu.Unlock()
	got, err := h.Presence("c")
	if want := []string{a, m, "r1"}; err != nil || !slices.Equal(clients(got), want) {
		t.Fatalf("Presence = %v, %v; want %v", clients(got), err, want)
	}
	if n, err := h.PresenceCount("c"); err != nil || n != 3 {
		t.Fatalf("PresenceCount = %d, %v", n, err)
	}
	// A channel without subscribers here lists the other nodes' only.
	if got, err := h.Presence("elsewhere"); err != nil || !slices.Equal(clients(got), []string{"r1"}) {
		t.Fatalf("Presence(elsewhere) = %v, %v", clients(got), err)
	}

	// Another node's join and leave reach the listener, not the member.
	pb.h.HandlePresence("c", true, remote)
	pb.h.HandlePresence("c", false, remote)
	pb.h.HandlePresence("nobody-here", true, remote) // no channel: nothing
	checkFor(t, 5*time.Second, func() error {
		var seen []string
		for _, msg := range listener.messages() {
			if (msg.Push == codec.PushJoin || msg.Push == codec.PushLeave) && msg.Info.Client == "r1" {
				if msg.Info.Name != "Remote" || msg.Channel != "c" {
					return fmt.Errorf("push %+v", msg)
				}
				seen = append(seen, fmt.Sprint(msg.Push))
			}
		}
		if len(seen) != 2 || seen[0] != fmt.Sprint(codec.PushJoin) || seen[1] != fmt.Sprint(codec.PushLeave) {
			return fmt.Errorf("listener saw %v of r1, want join then leave", seen)
		}
		return nil
	})
	if n := member.count(codec.PushJoin) + member.count(codec.PushLeave); n != 0 {
		t.Errorf("a subscriber without presence got %d presence pushes", n)
	}

	pb.mu.Lock()
	pb.err = fmt.Errorf("%w: redis: down", ErrUnavailable)
	pb.mu.Unlock()
	if _, err := h.Presence("c"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Presence with the broker down: %v", err)
	}
	listener.checkErrs(t)
	member.checkErrs(t)
}
