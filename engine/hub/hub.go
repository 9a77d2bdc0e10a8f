package hub

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// Sentinel errors. Errors returned by the hub wrap them (test with
// errors.Is); broker errors are returned as the broker gave them.
var (
	// ErrAlreadySubscribed: the subscriber is already subscribed to the
	// channel (the engine replies bad_request).
	ErrAlreadySubscribed = errors.New("hub: already subscribed")
	// ErrNotSubscribed: Unsubscribe of a channel the subscriber is not in.
	ErrNotSubscribed = errors.New("hub: not subscribed")
	// ErrClosed: the hub (or broker) is closed.
	ErrClosed = errors.New("hub: closed")
	// ErrBadData: publication data that does not decode in its encoding or
	// cannot be transcoded to the other one.
	ErrBadData = errors.New("hub: bad publication data")
	// ErrBadChannel: a channel name outside PROTOCOL.md's rules.
	ErrBadChannel = errors.New("hub: bad channel name")
	// ErrBadEncoding: a Subscriber or publication with an encoding that is
	// neither codec.JSON nor codec.Msgpack.
	ErrBadEncoding = errors.New("hub: bad encoding")
)

// Subscriber is one connection as the hub sees it. The engine implements it
// with a pointer type: the hub compares subscribers by identity (interface
// value ==) and uses them as map keys.
//
// Send and SendBatch are called from many goroutines at once (shard
// workers, Subscribe, other connections' presence changes) and sometimes
// with hub locks held, so they must be safe for concurrent use, must never
// block and must never call back into the Hub (a connection that closes
// itself from Send must leave its Unsubscribe calls to another goroutine).
type Subscriber interface {
	// Info is the client id and user, constant for the connection.
	Info() codec.ClientInfo
	// Encoding is the connection's encoding, constant for the connection.
	Encoding() codec.Encoding
	// Send queues one complete frame to the connection and takes ownership
	// of ONE reference of f (it will Release it). Never blocks; a
	// connection over its byte bound closes itself (1008) and drops the
	// frame.
	Send(f *wsframe.Frame)
	// SendBatch is Send for several frames at once, so the connection can
	// write them in one writev. It takes one reference of each frame. fs
	// is the hub's scratch slice: copy what you keep, not the slice.
	SendBatch(fs []*wsframe.Frame)
}

// Config configures New. The zero value works.
type Config struct {
	// Shards is the number of fan-out workers. If zero, runtime.GOMAXPROCS(0).
	Shards int
	// HistorySize is how many publications the default broker keeps per
	// channel. If zero, 100; if negative, none. Ignored when Broker is set.
	HistorySize int
	// HistoryTTL drops publications older than it from the default
	// broker's history. If zero, history never expires by age. Ignored
	// when Broker is set.
	HistoryTTL time.Duration
	// Broker assigns positions, keeps history and delivers publications.
	// If nil, NewMemoryBroker with HistorySize and HistoryTTL. The hub owns
	// it: Close closes it.
	Broker Broker
	// Logger receives broker errors the hub cannot return to a caller. If
	// nil, slog.Default().
	Logger *slog.Logger
}

// SubscribeRequest is one subscribe command.
type SubscribeRequest struct {
	// ID is the command id; the reply is sent only when HasID is set.
	ID    uint64
	HasID bool
	// Channel to subscribe to.
	Channel string
	// Recover, when set, asks for every publication after Recover.Offset.
	Recover *codec.StreamPosition
	// Presence asks for the channel's join and leave pushes.
	Presence bool
}

// Stats are the hub's counters. Gauges are a snapshot; counters only grow.
type Stats struct {
	Shards int // fan-out workers
	// Gauges.
	Channels      int // channels with at least one subscriber on this hub
	Subscriptions int // (subscriber, channel) pairs
	Listeners     int // subscriptions that asked for presence pushes
	QueueDepth    int // operations waiting in shard queues
	// Counters.
	Published    uint64 // publications accepted by Publish
	Broadcasts   uint64 // publications fanned out to this hub's subscribers
	Encodes      uint64 // publication frames encoded (at most one per encoding per broadcast)
	Deliveries   uint64 // publication frames handed to subscribers
	Sends        uint64 // Send and SendBatch calls made for publications
	Batches      uint64 // SendBatch calls carrying more than one publication
	Replies      uint64 // subscribe replies sent
	Recovered    uint64 // subscribes with recover that recovered everything
	NotRecovered uint64 // subscribes with recover that could not
	Presence     uint64 // join and leave pushes sent
	Throttled    uint64 // publishes that waited for a backlogged fan-out
}

// Hub is the channel registry and broadcaster. All methods are safe for
// concurrent use.
type Hub struct {
	broker Broker
	log    *slog.Logger
	shards []*shard
	seed   maphash.Seed
	chans  [hubBuckets]hubBucket

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	workers   sync.WaitGroup

	channels      atomic.Int64
	subscriptions atomic.Int64
	listeners     atomic.Int64
	published     atomic.Uint64
	broadcasts    atomic.Uint64
	encodes       atomic.Uint64
	replies       atomic.Uint64
	recovered     atomic.Uint64
	notRecovered  atomic.Uint64
	presence      atomic.Uint64
	throttled     atomic.Uint64

	// Backpressure (see waitForRoom): roomCh is closed and replaced when a
	// shard drains while a publisher waits.
	roomMu      sync.Mutex
	roomCh      chan struct{}
	roomWaiting atomic.Bool
}

// maxPendingPubs bounds the publications queued to one shard and not yet
// fanned out. Past it Publish waits: a publisher faster than the fan-out is
// slowed down (through its own socket, since its reader waits) instead of
// growing the queues and every subscriber's latency without bound. Two
// coalescing runs' worth keeps the workers busy with full batches.
const maxPendingPubs = 2 * maxRun

// New starts a hub: its shard workers and its broker.
func New(cfg Config) (*Hub, error) {
	n := cfg.Shards
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	h := &Hub{
		roomCh: make(chan struct{}),
		broker: cfg.Broker,
		log:    cfg.Logger,
		seed:   maphash.MakeSeed(),
		shards: make([]*shard, n),
	}
	if h.broker == nil {
		h.broker = NewMemoryBroker(MemoryBrokerConfig{HistorySize: cfg.HistorySize, HistoryTTL: cfg.HistoryTTL})
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	for i := range h.chans {
		h.chans[i].m = make(map[string]*channel)
	}
	for i := range h.shards {
		h.shards[i] = newShard(h, i)
	}
	for _, sh := range h.shards {
		h.workers.Add(1)
		go sh.run()
	}
	if err := h.broker.Run(handler{h}); err != nil {
		h.stopWorkers()
		return nil, fmt.Errorf("hub: starting broker: %w", err)
	}
	return h, nil
}

// handler is the hub's BrokerHandler; it keeps HandlePublication out of the
// Hub's own method set.
type handler struct{ h *Hub }

func (x handler) HandlePublication(ch string, pub *codec.Publication) { x.h.broadcast(ch, pub) }

// Close stops the broker and the shard workers. Publications still queued
// are dropped (their frames released). It is idempotent; every method
// returns ErrClosed afterwards.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		h.closed.Store(true)
		h.closeErr = h.broker.Close()
		h.stopWorkers()
		h.signalRoom()
	})
	return h.closeErr
}

func (h *Hub) stopWorkers() {
	for _, sh := range h.shards {
		sh.close()
	}
	h.workers.Wait()
}

// Stats returns the hub's counters.
func (h *Hub) Stats() Stats {
	s := Stats{
		Shards:        len(h.shards),
		Channels:      int(h.channels.Load()),
		Subscriptions: int(h.subscriptions.Load()),
		Listeners:     int(h.listeners.Load()),
		Published:     h.published.Load(),
		Broadcasts:    h.broadcasts.Load(),
		Encodes:       h.encodes.Load(),
		Replies:       h.replies.Load(),
		Recovered:     h.recovered.Load(),
		NotRecovered:  h.notRecovered.Load(),
		Throttled:     h.throttled.Load(),
		Presence:      h.presence.Load(),
	}
	for _, sh := range h.shards {
		s.Deliveries += sh.deliveries.Load()
		s.Sends += sh.sends.Load()
		s.Batches += sh.batches.Load()
		s.QueueDepth += sh.depth()
	}
	return s
}

// opcode is the frame kind of an encoding.
func opcode(enc codec.Encoding) ws.OpCode {
	if enc == codec.Msgpack {
		return ws.OpBinary
	}
	return ws.OpText
}

func validEncoding(enc codec.Encoding) bool { return enc == codec.JSON || enc == codec.Msgpack }

func (h *Hub) shardOf(s Subscriber) int {
	return int(maphash.Comparable(h.seed, s) % uint64(len(h.shards)))
}

// Subscribe attaches s to req.Channel. When req.HasID it sends the reply
// with s.Send before any live publication reaches s. With req.Recover the
// reply carries every publication after Recover.Offset that history holds,
// and recovered is true only when none is missing (same epoch and the
// history still covers Recover.Offset+1); on an epoch mismatch it carries
// none. Without Recover the reply has no publications and the channel's
// newest offset. Every publication with a greater offset is delivered live,
// in order, exactly once.
func (h *Hub) Subscribe(s Subscriber, req SubscribeRequest) error {
	if h.closed.Load() {
		return ErrClosed
	}
	if !codec.ValidChannel([]byte(req.Channel)) {
		return ErrBadChannel
	}
	enc := s.Encoding()
	if !validEncoding(enc) {
		return ErrBadEncoding
	}
	c := h.acquire(req.Channel, true)
	defer h.release(c)

	// 1. Register s as pending: from the moment its "add" op is queued
	// (under c.mu, so ordered with every publication queued by
	// broadcast), its shard buffers publications for it.
	m := &member{info: s.Info(), enc: enc, shard: h.shardOf(s), listener: -1}
	c.subMu.Lock()
	if _, ok := c.members[s]; ok {
		c.subMu.Unlock()
		return ErrAlreadySubscribed
	}
	if !c.interested {
		if err := h.broker.Subscribe(req.Channel); err != nil {
			c.subMu.Unlock()
			return err
		}
		c.interested = true
	}
	c.mu.Lock()
	if len(c.members) == 0 {
		h.channels.Add(1)
	}
	c.members[s] = m
	c.addCounts(m, 1)
	h.shards[m.shard].push(item{kind: opAdd, ch: c, sub: s, enc: enc})
	c.mu.Unlock()
	c.subMu.Unlock()
	h.subscriptions.Add(1)

	// 2. Read the position (and the history to recover) with no hub lock
	// held. Everything delivered to the hub before step 1 was stored
	// before it (Broker contract), so it is at or below pos.Offset;
	// everything after pos.Offset is either buffered by the shard or
	// still to come.
	var (
		since *codec.StreamPosition
		limit int
	)
	if req.Recover != nil {
		since, limit = req.Recover, -1
	}
	pubs, pos, err := h.broker.History(context.Background(), req.Channel, since, limit)
	if err != nil {
		h.remove(c, s, m)
		return err
	}
	recovered := false
	if r := req.Recover; r != nil {
		switch {
		case r.Epoch != pos.Epoch:
			pubs = nil
		case r.Offset <= pos.Offset && uint64(len(pubs)) == pos.Offset-r.Offset:
			recovered = true
		}
		if recovered {
			h.recovered.Add(1)
		} else {
			h.notRecovered.Add(1)
		}
	}

	// 3. Reply, then activate: the shard flushes what it buffered after
	// pos.Offset and delivers live from then on.
	// The reply is sent under c.mu, in the same critical section that makes
	// s a presence listener: a join pushed by another subscriber is either
	// before the reply (and s is in the presence snapshot it can ask for)
	// or after it and delivered to s; it cannot fall in between.
	c.mu.Lock()
	if req.HasID {
		f := wsframe.Get()
		f.B = codec.AppendSubscribeOK(f.B, enc, req.ID, pos, recovered, pubs)
		s.Send(f.Finish(opcode(enc)))
		h.replies.Add(1)
	}
	if c.members[s] == m { // not unsubscribed meanwhile
		h.shards[m.shard].push(item{kind: opActivate, ch: c, sub: s, enc: enc, pos: pos})
		m.active = true
		c.present++
		if req.Presence {
			c.addListener(s, m)
			h.listeners.Add(1)
		}
		h.presencePush(c, true, m.info)
	}
	c.mu.Unlock()
	return nil
}

// Unsubscribe detaches s from channel; leave is pushed to the channel's
// presence listeners. Publications already queued for s when it is called
// may still be sent after it returns; none published after it returns is.
func (h *Hub) Unsubscribe(s Subscriber, channel string) error {
	if h.closed.Load() {
		return ErrClosed
	}
	c := h.acquire(channel, false)
	if c == nil {
		return ErrNotSubscribed
	}
	defer h.release(c)
	c.subMu.Lock()
	m := c.members[s]
	c.subMu.Unlock()
	if m == nil || !h.remove(c, s, m) {
		return ErrNotSubscribed
	}
	return nil
}

// remove detaches member m of c (if it still is) and, when it was the last
// one, ends the node's interest. It reports whether m was removed.
func (h *Hub) remove(c *channel, s Subscriber, m *member) bool {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	c.mu.Lock()
	if c.members[s] != m {
		c.mu.Unlock()
		return false
	}
	delete(c.members, s)
	c.addCounts(m, -1)
	h.shards[m.shard].push(item{kind: opRemove, ch: c, sub: s, enc: m.enc})
	if m.active {
		c.present--
		if m.listener >= 0 {
			c.removeListener(m)
			h.listeners.Add(-1)
		}
		h.presencePush(c, false, m.info)
	}
	last := len(c.members) == 0
	c.mu.Unlock()
	h.subscriptions.Add(-1)
	if last {
		h.channels.Add(-1)
		if c.interested {
			c.interested = false
			if err := h.broker.Unsubscribe(c.name); err != nil && !errors.Is(err, ErrClosed) {
				h.log.Error("hub: broker unsubscribe", "channel", c.name, "err", err)
			}
		}
	}
	return true
}

// presencePush sends join (or leave) of info to c's presence listeners,
// encoding it once per encoding they use. Called with c.mu held.
func (h *Hub) presencePush(c *channel, join bool, info codec.ClientInfo) {
	for i := range c.listeners {
		ls := c.listeners[i]
		if len(ls) == 0 {
			continue
		}
		enc := codec.Encoding(i + 1)
		f := wsframe.Get()
		if join {
			f.B = codec.AppendJoin(f.B, enc, c.name, info)
		} else {
			f.B = codec.AppendLeave(f.B, enc, c.name, info)
		}
		f.Finish(opcode(enc))
		if len(ls) > 1 {
			f.Retain(len(ls) - 1)
		}
		for _, s := range ls {
			s.Send(f)
		}
		h.presence.Add(uint64(len(ls)))
	}
}

// Publish publishes data, one complete value in enc, to channel as info.
// The data is copied and transcoded once to the other encoding; data that
// fails to transcode returns an error wrapping ErrBadData. It returns the
// publication's position.
func (h *Hub) Publish(ctx context.Context, channel string, data []byte, enc codec.Encoding, info codec.ClientInfo) (codec.StreamPosition, error) {
	if h.closed.Load() {
		return codec.StreamPosition{}, ErrClosed
	}
	if !codec.ValidChannel([]byte(channel)) {
		return codec.StreamPosition{}, ErrBadChannel
	}
	if !validEncoding(enc) {
		return codec.StreamPosition{}, ErrBadEncoding
	}
	other := codec.JSON
	if enc == codec.JSON {
		other = codec.Msgpack
	}
	// One allocation for both encodings when the transcoded value fits.
	buf := make([]byte, len(data), 2*len(data)+16)
	copy(buf, data)
	t, err := codec.Transcode(buf[len(data):len(data)], enc, other, data)
	if err != nil {
		return codec.StreamPosition{}, fmt.Errorf("%w: %w", ErrBadData, err)
	}
	pub := &codec.Publication{Info: info}
	if enc == codec.JSON {
		pub.JSON, pub.Msgpack = buf[:len(data):len(data)], t
	} else {
		pub.Msgpack, pub.JSON = buf[:len(data):len(data)], t
	}
	if err := h.waitForRoom(ctx); err != nil {
		return codec.StreamPosition{}, err
	}
	pos, err := h.broker.Publish(ctx, channel, pub)
	if err != nil {
		return codec.StreamPosition{}, err
	}
	h.published.Add(1)
	return pos, nil
}

// backlogged reports whether some shard holds more than maxPendingPubs
// publications not yet fanned out.
func (h *Hub) backlogged() bool {
	for _, sh := range h.shards {
		if sh.pendingPubs.Load() > maxPendingPubs {
			return true
		}
	}
	return false
}

// waitForRoom blocks while the fan-out is backlogged, until a shard drains,
// ctx ends or the hub closes.
func (h *Hub) waitForRoom(ctx context.Context) error {
	if !h.backlogged() {
		return nil
	}
	h.throttled.Add(1)
	for {
		h.roomMu.Lock()
		ch := h.roomCh
		h.roomWaiting.Store(true)
		h.roomMu.Unlock()
		// Re-check after registering: a shard that drained before it saw
		// roomWaiting did not signal.
		if !h.backlogged() {
			return nil
		}
		if h.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signalRoom wakes every publisher waiting in waitForRoom.
func (h *Hub) signalRoom() {
	h.roomMu.Lock()
	if h.roomWaiting.Load() {
		close(h.roomCh)
		h.roomCh = make(chan struct{})
		h.roomWaiting.Store(false)
	}
	h.roomMu.Unlock()
}

// Presence returns the clients subscribed to channel on this hub (whose
// subscribe has completed), in no particular order.
func (h *Hub) Presence(channel string) ([]codec.ClientInfo, error) {
	if h.closed.Load() {
		return nil, ErrClosed
	}
	c := h.acquire(channel, false)
	if c == nil {
		return []codec.ClientInfo{}, nil
	}
	defer h.release(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]codec.ClientInfo, 0, c.present)
	for _, m := range c.members {
		if m.active {
			out = append(out, m.info)
		}
	}
	return out, nil
}

// PresenceCount returns how many clients Presence would list.
func (h *Hub) PresenceCount(channel string) (int, error) {
	if h.closed.Load() {
		return 0, ErrClosed
	}
	c := h.acquire(channel, false)
	if c == nil {
		return 0, nil
	}
	defer h.release(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.present, nil
}

// History returns the channel's position and its newest limit publications
// (all it holds when limit is 0 or more than it holds), oldest first. The
// publications are shared: do not modify them.
func (h *Hub) History(channel string, limit int) (codec.StreamPosition, []*codec.Publication, error) {
	if h.closed.Load() {
		return codec.StreamPosition{}, nil, ErrClosed
	}
	if limit <= 0 {
		limit = -1
	}
	pubs, pos, err := h.broker.History(context.Background(), channel, nil, limit)
	return pos, pubs, err
}

// broadcast queues pub to the shards holding subscribers of ch, encoded
// once per encoding in use. The broker calls it (through handler) once per
// publication in offset order per channel.
func (h *Hub) broadcast(ch string, pub *codec.Publication) {
	c := h.lookup(ch)
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.activeShards == 0 {
		return
	}
	d := &delivery{pub: pub}
	for i, n := range c.encCount {
		if n == 0 {
			continue
		}
		enc := codec.Encoding(i + 1)
		f := wsframe.Get()
		f.B = codec.AppendPub(f.B, enc, pub)
		d.frames[i] = f.Finish(opcode(enc))
		if c.activeShards > 1 {
			f.Retain(c.activeShards - 1)
		}
		h.encodes.Add(1)
	}
	for i, n := range c.shardCount {
		if n > 0 {
			h.shards[i].push(item{kind: opPub, ch: c, d: d})
		}
	}
	h.broadcasts.Add(1)
}
