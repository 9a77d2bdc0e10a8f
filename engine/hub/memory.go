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

// MemoryBrokerConfig configures NewMemoryBroker. The zero value works.
type MemoryBrokerConfig struct {
	// HistorySize is how many publications are kept per channel. If zero,
	// 100. If negative, none: every epoch and offset is still assigned, but
	// History returns no publications.
	HistorySize int
	// HistoryTTL drops publications older than it. If zero, history never
	// expires by age.
	HistoryTTL time.Duration
	// Now is the clock history ages by. If nil, time.Now. Tests set it.
	Now func() time.Time
}

// MemoryBroker is the in-process Broker: history in a bounded ring per
// channel, delivery by calling the handler synchronously, under the
// channel's lock, from inside Publish. That makes storing and delivering
// one atomic step per channel, which is all the ordering the hub needs.
//
// A channel's history (and its epoch) lives while the hub has an interest
// in the channel or the ring holds publications; once neither is true the
// channel is forgotten, and a later publication starts a new epoch at
// offset 1. With HistoryTTL set, a janitor goroutine expires old entries
// so that idle channels are forgotten even when nobody touches them.
type MemoryBroker struct {
	size    int
	ttl     time.Duration
	now     func() time.Time
	seed    maphash.Seed
	buckets [brokerBuckets]brokerBucket

	handler atomic.Pointer[handlerBox]
	closed  atomic.Bool
	stop    chan struct{}
	done    sync.WaitGroup
	once    sync.Once
}

const brokerBuckets = 64

type handlerBox struct{ h BrokerHandler }

type brokerBucket struct {
	mu       sync.Mutex
	channels map[string]*memChannel
	_        [48]byte // keep neighbouring buckets off one cache line
}

// memChannel is one channel's stream. Lock order: bucket.mu, then mu; or mu
// alone (Publish, History), where removed tells a caller that the bucket
// dropped the channel between its lookup and its lock.
type memChannel struct {
	mu       sync.Mutex
	removed  bool
	epoch    string
	offset   uint64
	interest int
	ring     []memEntry // grows up to size entries; head is the oldest
	head, n  int
}

type memEntry struct {
	pub *codec.Publication
	at  time.Time
}

// NewMemoryBroker returns an in-memory broker. Register it with a Hub
// through Config.Broker, or leave Config.Broker nil to get one.
func NewMemoryBroker(cfg MemoryBrokerConfig) *MemoryBroker {
	b := &MemoryBroker{
		size: cfg.HistorySize,
		ttl:  cfg.HistoryTTL,
		now:  cfg.Now,
		seed: maphash.MakeSeed(),
		stop: make(chan struct{}),
	}
	if b.size == 0 {
		b.size = 100
	}
	if b.size < 0 {
		b.size = 0
	}
	if b.ttl < 0 {
		b.ttl = 0
	}
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
	if b.ttl > 0 {
		every := min(max(b.ttl/2, 10*time.Millisecond), time.Minute)
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

// sweep expires old entries of every channel and forgets the channels left
// with neither history nor interest.
func (b *MemoryBroker) sweep() {
	now := b.now()
	for i := range b.buckets {
		bk := &b.buckets[i]
		bk.mu.Lock()
		for name, c := range bk.channels {
			c.mu.Lock()
			c.expire(b, now)
			if c.interest == 0 && c.n == 0 {
				c.removed = true
				delete(bk.channels, name)
			}
			c.mu.Unlock()
		}
		bk.mu.Unlock()
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
			c = &memChannel{epoch: newEpoch()}
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

// expire drops entries older than the TTL. Called with c.mu held.
func (c *memChannel) expire(b *MemoryBroker, now time.Time) {
	if b.ttl == 0 {
		return
	}
	for c.n > 0 && now.Sub(c.ring[c.head].at) >= b.ttl {
		c.ring[c.head] = memEntry{}
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
// to the handler before it returns, all under the channel's lock.
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
	if b.size > 0 {
		now := b.now()
		c.expire(b, now)
		if c.n == len(c.ring) && c.n < b.size {
			c.grow(b.size)
		}
		i := (c.head + c.n) % len(c.ring)
		if c.n == len(c.ring) {
			c.head = (c.head + 1) % len(c.ring)
		} else {
			c.n++
		}
		c.ring[i] = memEntry{pub: pub, at: now}
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
	// Entries are consecutive offsets ending at c.offset.
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
