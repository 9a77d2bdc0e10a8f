package hub

import (
	"context"
	"errors"
	"hash/maphash"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Defaults of the memory broker's history bounds (MemoryBrokerConfig, and
// the history fields of Config).
const (
	// DefaultHistorySize is how many publications a channel keeps.
	DefaultHistorySize = 100
	// DefaultHistoryTTL is how long a publication stays in history: long
	// enough to recover across a reconnect or a deploy, short enough that
	// a channel nobody publishes to any more is forgotten.
	DefaultHistoryTTL = 5 * time.Minute
	// DefaultHistoryBytes is the memory all channels' history may take
	// together (as counted by HistoryStats).
	DefaultHistoryBytes int64 = 128 << 20
	// DefaultHistoryChannels is how many channels may hold history at once.
	DefaultHistoryChannels = 100_000
)

// MemoryBrokerConfig configures NewMemoryBroker. The zero value works.
type MemoryBrokerConfig struct {
	// HistorySize is how many publications are kept per channel. If zero,
	// DefaultHistorySize (100). If negative, none: every epoch and offset
	// is still assigned, but History returns no publications.
	HistorySize int
	// HistoryTTL drops publications older than it; a janitor goroutine
	// frees the history of channels whose newest publication is older than
	// it, so that idle channels are forgotten without anybody touching
	// them. If zero, DefaultHistoryTTL (5 min). If negative, history never
	// expires by age.
	HistoryTTL time.Duration
	// HistoryBytes is the budget of all channels' history together: past
	// it, the oldest publications of the channel published to least
	// recently are evicted first. Publications are counted as their data
	// in both encodings plus a fixed overhead, channels as a fixed overhead
	// plus their ring. If zero, DefaultHistoryBytes (128 MiB). If negative,
	// no budget.
	HistoryBytes int64
	// HistoryChannels caps the channels holding history: past it, the
	// whole history of the channel published to least recently is evicted.
	// If zero, DefaultHistoryChannels (100,000). If negative, no cap.
	HistoryChannels int
	// Now is the clock history ages by. If nil, time.Now. Tests set it.
	Now func() time.Time
}

// HistoryStats describes what the memory broker's history holds and what it
// dropped. Gauges are a snapshot; counters only grow.
type HistoryStats struct {
	Bytes    int64 // history memory as counted against HistoryBytes
	Channels int   // channels holding at least one publication
	// Publications dropped before HistorySize pushed them out:
	Expired         uint64 // older than HistoryTTL
	EvictedBytes    uint64 // evicted to stay within HistoryBytes
	EvictedChannels uint64 // evicted with their channel's whole history to stay within HistoryChannels
}

// MemoryBroker is the in-process Broker: history in a bounded ring per
// channel, delivery by calling the handler synchronously, under the
// channel's lock, from inside Publish. That makes storing and delivering
// one atomic step per channel, which is all the ordering the hub needs.
//
// A channel's history (and its epoch) lives while the hub has an interest
// in the channel or the ring holds publications; once neither is true the
// channel is forgotten, and a later publication starts a new epoch at
// offset 1.
//
// History is bounded three ways besides HistorySize: by age (HistoryTTL),
// by bytes for all channels together (HistoryBytes) and by the number of
// channels holding history (HistoryChannels). The channels holding history
// are kept in one list ordered by their newest publication (least recent
// first; a publish moves its channel to the back in O(1)). Over a bound,
// the publisher that crossed it evicts from the front of that list: the
// oldest publications of the least recently published channel for the
// byte budget, that channel's whole history for the channel cap. Each
// publication is evicted at most once, so a publish costs O(1) amortized.
// The janitor expires channels from the same front, so a tick costs what
// expires; the older entries of channels still being published to expire
// when the channel is next touched (and count in HistoryBytes meanwhile).
// Eviction only ever removes a channel's oldest publications, so what a
// channel holds stays a run of consecutive offsets ending at its newest:
// a recovery from inside an evicted range finds publications missing and
// answers recovered:false.
type MemoryBroker struct {
	size        int
	ttl         time.Duration
	maxBytes    int64
	maxChannels int
	now         func() time.Time
	seed        maphash.Seed
	buckets     [brokerBuckets]brokerBucket

	// lruMu guards the list of channels holding history and the totals
	// below. It is a leaf: taken with at most one memChannel.mu held,
	// never the other way round.
	lruMu           sync.Mutex
	lruHead         *memChannel // least recently published
	lruTail         *memChannel
	bytes           int64
	pressure        int64 // temporary byte budget (TrimHistory); < 0: none
	channels        int
	expired         uint64
	evictedBytes    uint64
	evictedChannels uint64

	handler atomic.Pointer[handlerBox]
	closed  atomic.Bool
	stop    chan struct{}
	done    sync.WaitGroup
	once    sync.Once
}

const brokerBuckets = 64

// Accounting of history memory (approximate: what a publication and a
// channel cost beyond their data, on 64-bit platforms).
const (
	pubOverhead     = 144 // codec.Publication and its data buffer's header
	slotBytes       = 32  // one ring slot (memEntry)
	channelOverhead = 320 // memChannel, its bucket map entry and name string header
)

type handlerBox struct{ h BrokerHandler }

type brokerBucket struct {
	mu       sync.Mutex
	channels map[string]*memChannel
	_        [48]byte // keep neighbouring buckets off one cache line
}

// memChannel is one channel's stream. Lock order: bucket.mu, then mu, then
// the broker's lruMu; or mu alone (Publish, History), where removed tells a
// caller that the bucket dropped the channel between its lookup and its
// lock.
type memChannel struct {
	mu       sync.Mutex
	name     string
	removed  bool
	epoch    string
	offset   uint64
	interest int
	ring     []memEntry // grows up to size entries; head is the oldest; nil when n == 0
	head, n  int
	data     int64 // entrySize of the entries held

	// Written with both mu and the broker's lruMu held, so either is
	// enough to read them. A channel is in the list exactly when n > 0.
	accounted  int64 // bytes this channel counts in the broker's total
	inLRU      bool
	prev, next *memChannel
	last       time.Time // when the newest entry was stored
}

type memEntry struct {
	pub *codec.Publication
	at  time.Time
}

// entrySize is what one stored publication counts against HistoryBytes.
func entrySize(p *codec.Publication) int64 {
	return pubOverhead + int64(cap(p.JSON)+cap(p.Msgpack)+len(p.Channel)+
		len(p.Info.Client)+len(p.Info.User)+len(p.Info.Name))
}

// NewMemoryBroker returns an in-memory broker. Register it with a Hub
// through Config.Broker, or leave Config.Broker nil to get one.
func NewMemoryBroker(cfg MemoryBrokerConfig) *MemoryBroker {
	b := &MemoryBroker{
		size:        cfg.HistorySize,
		ttl:         cfg.HistoryTTL,
		maxBytes:    cfg.HistoryBytes,
		maxChannels: cfg.HistoryChannels,
		now:         cfg.Now,
		seed:        maphash.MakeSeed(),
		pressure:    -1,
		stop:        make(chan struct{}),
	}
	b.size = zeroDefault(b.size, DefaultHistorySize)
	b.ttl = zeroDefault(b.ttl, DefaultHistoryTTL)
	b.maxBytes = zeroDefault(b.maxBytes, DefaultHistoryBytes)
	b.maxChannels = zeroDefault(b.maxChannels, DefaultHistoryChannels)
	if b.now == nil {
		b.now = time.Now
	}
	for i := range b.buckets {
		b.buckets[i].channels = make(map[string]*memChannel)
	}
	return b
}

var errBrokerRunning = errors.New("hub: memory broker already running")

// Run registers h and, with a HistoryTTL, starts the janitor.
func (b *MemoryBroker) Run(h BrokerHandler) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.handler.CompareAndSwap(nil, &handlerBox{h}) {
		return errBrokerRunning
	}
	if b.ttl > 0 && b.size > 0 {
		// A tick costs what expires, so ticking often is cheap: an idle
		// channel's history is freed at most a tick after its TTL.
		every := min(max(b.ttl/4, 10*time.Millisecond), 5*time.Second)
		b.done.Add(1)
		go b.janitor(every)
	}
	return nil
}

// Close stops the janitor. Calls after Close return ErrClosed.
func (b *MemoryBroker) Close() error {
	b.once.Do(func() {
		b.closed.Store(true)
		close(b.stop)
	})
	b.done.Wait()
	return nil
}

func (b *MemoryBroker) janitor(every time.Duration) {
	defer b.done.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.sweep()
		}
	}
}

// sweep frees the history of every channel whose newest publication is
// older than the TTL (all its publications are then expired), taking them
// from the front of the list, and forgets those without interest. It stops
// at the first channel with a fresh publication: every channel behind it
// was published to later.
func (b *MemoryBroker) sweep() {
	if b.ttl == 0 {
		return
	}
	now := b.now()
	for {
		b.lruMu.Lock()
		v := b.lruHead
		fresh := v == nil || now.Sub(v.last) < b.ttl
		b.lruMu.Unlock()
		if fresh {
			return
		}
		v.mu.Lock()
		// Published to (moved back) or emptied since: look at the new front.
		if !v.inLRU || now.Sub(v.last) < b.ttl {
			v.mu.Unlock()
			continue
		}
		n := v.n
		v.dropFront(n)
		b.account(v, nil, n, evictTTL)
		idle := v.interest == 0
		v.mu.Unlock()
		if idle {
			b.forgetIfIdle(v.name)
		}
	}
}

// evictReason says which bound dropped publications (for HistoryStats).
type evictReason uint8

const (
	evictTTL evictReason = iota
	evictBytes
	evictChannels
)

// overLocked reports whether history is over its byte budget or channel
// cap. Called with lruMu held.
func (b *MemoryBroker) overLocked() bool {
	limit, ok := b.budgetLocked()
	return ok && b.bytes > limit || b.maxChannels > 0 && b.channels > b.maxChannels
}

// budgetLocked is the byte budget in force: HistoryBytes, or the lower
// temporary one TrimHistory set; ok is false when there is none. Called
// with lruMu held.
func (b *MemoryBroker) budgetLocked() (limit int64, ok bool) {
	limit, ok = b.maxBytes, b.maxBytes > 0
	if b.pressure >= 0 && (!ok || b.pressure < limit) {
		limit, ok = b.pressure, true
	}
	return limit, ok
}

// TrimHistory lowers the history byte budget to fraction (0 to 1) of what
// history holds now and evicts down to it at once, oldest publications of
// the least recently published channels first, as the budget always does.
// The lower budget stays (so that history does not grow straight back)
// until RestoreHistory; each call lowers it further. It is meant for memory
// pressure: history is a cache, and the cheapest memory to give back. It
// returns the bytes history holds afterwards.
func (b *MemoryBroker) TrimHistory(fraction float64) int64 {
	fraction = min(max(fraction, 0), 1)
	b.lruMu.Lock()
	b.pressure = int64(float64(b.bytes) * fraction)
	b.lruMu.Unlock()
	b.evict()
	b.lruMu.Lock()
	defer b.lruMu.Unlock()
	return b.bytes
}

// RestoreHistory lifts the budget TrimHistory lowered: HistoryBytes
// applies again.
func (b *MemoryBroker) RestoreHistory() {
	b.lruMu.Lock()
	b.pressure = -1
	b.lruMu.Unlock()
}

// evict brings history back within its bounds, evicting from the front of
// the list. It is called by a publisher, with no lock held, after its
// publication took history over a bound.
func (b *MemoryBroker) evict() {
	for {
		b.lruMu.Lock()
		v := b.lruHead
		over := b.overLocked()
		b.lruMu.Unlock()
		if !over || v == nil {
			return
		}
		v.mu.Lock()
		if !v.inLRU { // emptied by somebody else meanwhile
			v.mu.Unlock()
			continue
		}
		b.lruMu.Lock()
		drop, reason := 0, evictBytes
		budget, hasBudget := b.budgetLocked()
		switch {
		case b.maxChannels > 0 && b.channels > b.maxChannels:
			drop, reason = v.n, evictChannels
		case b.bytes > budget && hasBudget:
			// The oldest entries that cover the excess; the channel's own
			// overhead goes with its last entry.
			excess := b.bytes - budget
			for freed := int64(0); drop < v.n && freed < excess; drop++ {
				freed += entrySize(v.ring[(v.head+drop)%len(v.ring)].pub)
			}
		}
		b.lruMu.Unlock()
		if drop > 0 {
			v.dropFront(drop)
			b.account(v, nil, drop, reason)
		}
		idle := v.interest == 0 && v.n == 0
		v.mu.Unlock()
		if idle {
			b.forgetIfIdle(v.name)
		}
	}
}

// account brings the broker's totals and list up to date with c after a
// change of its ring, counting dropped publications under reason. A
// non-nil published (the time of the entry just stored) moves c to the
// back of the list. It reports whether history is over a bound. Called
// with c.mu held.
func (b *MemoryBroker) account(c *memChannel, published *time.Time, dropped int, reason evictReason) (over bool) {
	var want int64
	if c.n == 0 {
		c.ring, c.head, c.data = nil, 0, 0 // free the ring with the history
	} else {
		want = c.data + channelOverhead + int64(len(c.name)+len(c.epoch)) + slotBytes*int64(len(c.ring))
	}
	b.lruMu.Lock()
	b.bytes += want - c.accounted
	c.accounted = want
	switch {
	case c.n == 0 && c.inLRU:
		b.unlink(c)
		b.channels--
	case c.n > 0 && !c.inLRU:
		b.pushBack(c)
		b.channels++
	case c.n > 0 && published != nil && b.lruTail != c:
		b.unlink(c)
		b.pushBack(c)
	}
	if published != nil {
		c.last = *published
	}
	if dropped > 0 {
		switch reason {
		case evictTTL:
			b.expired += uint64(dropped)
		case evictBytes:
			b.evictedBytes += uint64(dropped)
		case evictChannels:
			b.evictedChannels += uint64(dropped)
		}
	}
	over = b.overLocked()
	b.lruMu.Unlock()
	return over
}

// unlink and pushBack edit the list; called with lruMu (and c.mu) held.
func (b *MemoryBroker) unlink(c *memChannel) {
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		b.lruHead = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		b.lruTail = c.prev
	}
	c.prev, c.next, c.inLRU = nil, nil, false
}

func (b *MemoryBroker) pushBack(c *memChannel) {
	c.prev, c.next, c.inLRU = b.lruTail, nil, true
	if b.lruTail != nil {
		b.lruTail.next = c
	} else {
		b.lruHead = c
	}
	b.lruTail = c
}

// HistoryStats reports what history holds and what it dropped.
func (b *MemoryBroker) HistoryStats() HistoryStats {
	b.lruMu.Lock()
	defer b.lruMu.Unlock()
	return HistoryStats{
		Bytes:           b.bytes,
		Channels:        b.channels,
		Expired:         b.expired,
		EvictedBytes:    b.evictedBytes,
		EvictedChannels: b.evictedChannels,
	}
}

// Channels reports how many channels the broker holds (with history or
// interest).
func (b *MemoryBroker) Channels() int {
	n := 0
	for i := range b.buckets {
		bk := &b.buckets[i]
		bk.mu.Lock()
		n += len(bk.channels)
		bk.mu.Unlock()
	}
	return n
}

func (b *MemoryBroker) bucket(ch string) *brokerBucket {
	return &b.buckets[maphash.String(b.seed, ch)%brokerBuckets]
}

// lockChannel returns ch's stream locked, creating it when create is set
// (nil when it does not exist and create is not set).
func (b *MemoryBroker) lockChannel(ch string, create bool) *memChannel {
	bk := b.bucket(ch)
	for {
		bk.mu.Lock()
		c := bk.channels[ch]
		if c == nil {
			if !create {
				bk.mu.Unlock()
				return nil
			}
			c = &memChannel{name: ch, epoch: newEpoch()}
			bk.channels[ch] = c
		}
		bk.mu.Unlock()
		c.mu.Lock()
		if !c.removed {
			return c
		}
		c.mu.Unlock()
	}
}

// forgetIfIdle removes ch when it holds neither history nor interest.
func (b *MemoryBroker) forgetIfIdle(ch string) {
	bk := b.bucket(ch)
	bk.mu.Lock()
	if c := bk.channels[ch]; c != nil {
		c.mu.Lock()
		c.expire(b, b.now())
		if c.interest == 0 && c.n == 0 {
			c.removed = true
			delete(bk.channels, ch)
		}
		c.mu.Unlock()
	}
	bk.mu.Unlock()
}

func newEpoch() string {
	return strconv.FormatUint(rand.Uint64(), 36)
}

// expire drops entries older than the TTL and accounts for them. Called
// with c.mu held.
func (c *memChannel) expire(b *MemoryBroker, now time.Time) {
	if n := c.expired(b, now); n > 0 {
		c.dropFront(n)
		b.account(c, nil, n, evictTTL)
	}
}

// expired counts the entries older than the TTL, all at the front.
func (c *memChannel) expired(b *MemoryBroker, now time.Time) int {
	if b.ttl == 0 {
		return 0
	}
	n := 0
	for n < c.n && now.Sub(c.ring[(c.head+n)%len(c.ring)].at) >= b.ttl {
		n++
	}
	return n
}

// dropFront drops the n oldest entries. The caller accounts for them.
func (c *memChannel) dropFront(n int) {
	for range n {
		e := &c.ring[c.head]
		c.data -= entrySize(e.pub)
		*e = memEntry{}
		c.head = (c.head + 1) % len(c.ring)
		c.n--
	}
}

// grow doubles the ring (up to size), so that channels with little
// traffic do not hold a full ring each.
func (c *memChannel) grow(size int) {
	ring := make([]memEntry, min(max(2*len(c.ring), 8), size))
	for i := range c.n {
		ring[i] = c.ring[(c.head+i)%len(c.ring)]
	}
	c.ring, c.head = ring, 0
}

// Publish assigns pub the channel's next offset, stores it and delivers it
// to the handler before it returns, all under the channel's lock. When the
// publication takes history over its byte budget or channel cap, Publish
// evicts (after releasing the channel) before it returns.
func (b *MemoryBroker) Publish(ctx context.Context, ch string, pub *codec.Publication) (codec.StreamPosition, error) {
	if b.closed.Load() {
		return codec.StreamPosition{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return codec.StreamPosition{}, err
	}
	hb := b.handler.Load()
	c := b.lockChannel(ch, true)
	c.offset++
	pub.Channel, pub.Epoch, pub.Offset = ch, c.epoch, c.offset
	over := false
	if b.size > 0 {
		now := b.now()
		expired := c.expired(b, now)
		c.dropFront(expired)
		if c.n == len(c.ring) && c.n < b.size {
			c.grow(b.size)
		}
		i := (c.head + c.n) % len(c.ring)
		if c.n == len(c.ring) { // full: the oldest makes room
			c.data -= entrySize(c.ring[i].pub)
			c.head = (c.head + 1) % len(c.ring)
		} else {
			c.n++
		}
		c.ring[i] = memEntry{pub: pub, at: now}
		c.data += entrySize(pub)
		over = b.account(c, &now, expired, evictTTL)
	}
	pos := codec.StreamPosition{Epoch: c.epoch, Offset: c.offset}
	if hb != nil {
		hb.h.HandlePublication(ch, pub)
	}
	idle := c.interest == 0 && c.n == 0
	c.mu.Unlock()
	if idle {
		b.forgetIfIdle(ch)
	}
	if over {
		b.evict()
	}
	return pos, nil
}

// History implements Broker.History.
func (b *MemoryBroker) History(ctx context.Context, ch string, since *codec.StreamPosition, limit int) ([]*codec.Publication, codec.StreamPosition, error) {
	if b.closed.Load() {
		return nil, codec.StreamPosition{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, codec.StreamPosition{}, err
	}
	c := b.lockChannel(ch, false)
	if c == nil {
		return nil, codec.StreamPosition{}, nil
	}
	defer c.mu.Unlock()
	c.expire(b, b.now())
	pos := codec.StreamPosition{Epoch: c.epoch, Offset: c.offset}
	if limit == 0 || c.n == 0 {
		return nil, pos, nil
	}
	// Entries are consecutive offsets ending at c.offset: eviction and
	// expiry only ever drop the oldest.
	first := c.offset - uint64(c.n) + 1
	start, n := 0, c.n // index (from the oldest) and count to return
	if since != nil {
		if since.Offset >= c.offset {
			return nil, pos, nil
		}
		if since.Offset >= first {
			start = int(since.Offset - first + 1)
		}
		n = c.n - start
		if limit > 0 && limit < n {
			n = limit
		}
	} else if limit > 0 && limit < n {
		start, n = c.n-limit, limit
	}
	pubs := make([]*codec.Publication, n)
	for i := range pubs {
		pubs[i] = c.ring[(c.head+start+i)%len(c.ring)].pub
	}
	return pubs, pos, nil
}

// Subscribe starts the node's interest in ch, creating its stream (and
// epoch) when needed.
func (b *MemoryBroker) Subscribe(ch string) error {
	if b.closed.Load() {
		return ErrClosed
	}
	c := b.lockChannel(ch, true)
	c.interest++
	c.mu.Unlock()
	return nil
}

// Unsubscribe ends the node's interest in ch.
func (b *MemoryBroker) Unsubscribe(ch string) error {
	if b.closed.Load() {
		return ErrClosed
	}
	c := b.lockChannel(ch, false)
	if c == nil {
		return nil
	}
	if c.interest > 0 {
		c.interest--
	}
	idle := c.interest == 0
	c.mu.Unlock()
	if idle {
		b.forgetIfIdle(ch)
	}
	return nil
}

// zeroDefault is the config rule of the history bounds: zero means the
// default, negative means none (0 inside the broker).
func zeroDefault[T ~int | ~int64](v, def T) T {
	switch {
	case v == 0:
		return def
	case v < 0:
		return 0
	}
	return v
}
