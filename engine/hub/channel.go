package hub

import (
	"hash/maphash"
	"sync"

	"github.com/fanout-dev/fanout/codec"
)

const hubBuckets = 256

// hubBucket is one slice of the channel registry. Channels hash to buckets
// so that no lookup takes a lock shared by every channel.
type hubBucket struct {
	mu sync.RWMutex
	m  map[string]*channel
	_  [32]byte // keep neighbouring buckets off one cache line
}

// channel is one channel's subscribers on this hub.
//
// Locks (in this order): subMu, then (without holding either) the broker,
// then mu, then a shard queue's lock. The registry bucket lock is never
// held together with any of them.
type channel struct {
	name string
	refs int // registry references; guarded by the bucket lock

	// subMu serializes membership changes and the broker interest.
	subMu      sync.Mutex
	interested bool // broker.Subscribe done; guarded by subMu

	// mu orders publications queued by broadcast with add, activate and
	// remove ops queued for subscribers; it guards everything below but
	// locals. members is written with both subMu and mu held, so either
	// is enough to read it.
	mu           sync.Mutex
	members      map[Subscriber]*member
	encCount     [2]int          // members per encoding (index enc-1)
	shardCount   []int           // members per shard
	activeShards int             // shards with shardCount > 0
	present      int             // members whose subscribe completed
	listeners    [2][]Subscriber // presence listeners per encoding

	// locals[i] is this channel's state on shard i, owned by shard i's
	// worker alone (nil when the shard holds none of its subscribers).
	locals []*local
}

// member is one subscriber of a channel.
type member struct {
	info     codec.ClientInfo
	enc      codec.Encoding
	shard    int
	active   bool // reply sent and activate queued; counts in presence
	listener int  // index in channel.listeners[enc-1], -1 when not one
}

func (c *channel) addCounts(m *member, delta int) {
	c.encCount[m.enc-1] += delta
	before := c.shardCount[m.shard]
	c.shardCount[m.shard] += delta
	switch after := c.shardCount[m.shard]; {
	case before == 0 && after > 0:
		c.activeShards++
	case before > 0 && after == 0:
		c.activeShards--
	}
}

func (c *channel) addListener(s Subscriber, m *member) {
	ls := &c.listeners[m.enc-1]
	m.listener = len(*ls)
	*ls = append(*ls, s)
}

func (c *channel) removeListener(m *member) {
	ls := &c.listeners[m.enc-1]
	last := len(*ls) - 1
	if m.listener != last {
		moved := (*ls)[last]
		(*ls)[m.listener] = moved
		c.members[moved].listener = m.listener
	}
	(*ls)[last] = nil
	*ls = (*ls)[:last]
	m.listener = -1
}

func (h *Hub) bucket(name string) *hubBucket {
	return &h.chans[maphash.String(h.seed, name)%hubBuckets]
}

// acquire returns the channel named name with a reference taken, creating
// it when create is set (nil when it does not exist and create is not).
// Pair it with release.
func (h *Hub) acquire(name string, create bool) *channel {
	b := h.bucket(name)
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.m[name]
	if c == nil {
		if !create {
			return nil
		}
		c = &channel{
			name:       name,
			members:    make(map[Subscriber]*member),
			shardCount: make([]int, len(h.shards)),
			locals:     make([]*local, len(h.shards)),
		}
		b.m[name] = c
	}
	c.refs++
	return c
}

// release drops a reference taken by acquire and forgets the channel when
// nobody holds one and it has no members. Shard queues may still point at
// it; they only find it empty.
func (h *Hub) release(c *channel) {
	b := h.bucket(c.name)
	b.mu.Lock()
	defer b.mu.Unlock()
	c.refs--
	if c.refs == 0 && len(c.members) == 0 && b.m[c.name] == c {
		delete(b.m, c.name)
	}
}

// lookup returns the channel named name, or nil, without a reference: for
// broadcast, which only reads it under c.mu.
func (h *Hub) lookup(name string) *channel {
	b := h.bucket(name)
	b.mu.RLock()
	c := b.m[name]
	b.mu.RUnlock()
	return c
}

// channelCount is how many channel structs the registry holds.
func (h *Hub) channelCount() int {
	n := 0
	for i := range h.chans {
		b := &h.chans[i]
		b.mu.RLock()
		n += len(b.m)
		b.mu.RUnlock()
	}
	return n
}
