package hub

import (
	"hash/maphash"
	"sync"
	"sync/atomic"

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
// Locks (in this order): subMu, then the broker's Subscribe and
// Unsubscribe (the channel's interest changes under subMu; History and
// Publish are called with no hub lock), then mu, then a shard queue's
// lock. The registry bucket lock is never held together with any of them.
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
	formCount    [numForms]int // members per frame form (form.go)
	shardCount   []int         // members per shard
	activeShards int           // shards with shardCount > 0
	present      int           // members whose subscribe completed
	listenForm   [numForms]int // presence listeners per frame form
	listenShard  []int         // presence listeners per shard
	listenShards int           // shards with listenShard > 0
	// newest is the channel's position as this node knows it while it is
	// interested without a break (known set): the newest publication
	// broadcast, or a position read from the broker since the interest
	// began (interestGen). A subscribe needs no broker read when it is
	// known (Subscribe, step 2): everything broadcast before its add op is
	// at or below it, everything after is buffered for it.
	newest      codec.StreamPosition
	known       bool
	interestGen uint64

	// locals[i] is this channel's state on shard i, owned by shard i's
	// worker alone (nil when the shard holds none of its subscribers).
	locals []*local

	// Backpressure (see maxPendingPubs). inflight counts publications
	// queued by broadcast and not yet handed out by every shard they were
	// queued to. A publisher that waits for room registers in roomWaiting
	// and waits for room to close; the worker that brings inflight down to
	// half the bound closes it.
	inflight    atomic.Int64
	roomWaiting atomic.Bool
	roomMu      sync.Mutex
	room        chan struct{} // nil while nobody waits
}

// member is one subscriber of a channel.
type member struct {
	info     codec.ClientInfo
	form     form
	shard    int
	active   bool // reply sent and activate queued; counts in presence
	listener bool // asked for presence pushes (set once active)
}

func (c *channel) addCounts(m *member, delta int) {
	c.formCount[m.form] += delta
	before := c.shardCount[m.shard]
	c.shardCount[m.shard] += delta
	switch after := c.shardCount[m.shard]; {
	case before == 0 && after > 0:
		c.activeShards++
	case before > 0 && after == 0:
		c.activeShards--
	}
}

// addListener and removeListener count m as a presence listener or not.
// Called with c.mu held; the shard worker keeps the listeners themselves.
func (c *channel) addListener(m *member) {
	m.listener = true
	c.listenForm[m.form]++
	if c.listenShard[m.shard]++; c.listenShard[m.shard] == 1 {
		c.listenShards++
	}
}

func (c *channel) removeListener(m *member) {
	m.listener = false
	c.listenForm[m.form]--
	if c.listenShard[m.shard]--; c.listenShard[m.shard] == 0 {
		c.listenShards--
	}
}

// backlogged reports whether c's fan-out is over maxPendingPubs.
func (c *channel) backlogged() bool { return c.inflight.Load() > maxPendingPubs }

// waitRoom registers a publisher waiting for c's fan-out to drain and
// returns the channel that closes when it has.
func (c *channel) waitRoom() <-chan struct{} {
	c.roomMu.Lock()
	defer c.roomMu.Unlock()
	if c.room == nil {
		c.room = make(chan struct{})
	}
	c.roomWaiting.Store(true)
	return c.room
}

// handedOut is called by a shard worker when a publication of c has been
// handed out by every shard it was queued to.
func (c *channel) handedOut() {
	if c.inflight.Add(-1) <= maxPendingPubs/2 && c.roomWaiting.Load() {
		c.roomMu.Lock()
		if c.room != nil {
			close(c.room)
			c.room = nil
		}
		c.roomWaiting.Store(false)
		c.roomMu.Unlock()
	}
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
			name:        name,
			members:     make(map[Subscriber]*member),
			shardCount:  make([]int, len(h.shards)),
			listenShard: make([]int, len(h.shards)),
			locals:      make([]*local, len(h.shards)),
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
