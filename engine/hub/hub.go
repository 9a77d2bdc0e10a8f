package hub

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/deflate"
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
	// ErrBackpressure: the channel's fan-out is backlogged and the caller
	// asked not to wait (the engine replies rate_limited).
	ErrBackpressure = errors.New("hub: channel fan-out backlogged")
	// ErrTooLarge: a publication whose encoding in some encoding exceeds
	// the configured maximum (the engine replies too_large).
	ErrTooLarge = errors.New("hub: publication too large")
)

// Subscriber is one connection as the hub sees it. The engine implements it
// with a pointer type: the hub compares subscribers by identity (interface
// value ==) and uses them as map keys.
//
// Send and SendBatch are called from many goroutines at once (shard
// workers deliver publications and presence pushes, Subscribe sends its
// reply), so they must be safe for concurrent use and must never block.
// The hub holds none of its locks when it calls them, but a worker that
// waits in one delays every subscriber of its shard, so they must never
// call back into the Hub either (a connection that closes itself from Send
// must leave its Unsubscribe calls to another goroutine).
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

// Defaults of the size bounds of Config.
const (
	// DefaultMaxPublicationBytes is the engine's default largest message.
	DefaultMaxPublicationBytes = 1 << 20
	// DefaultMaxReplyBytes leaves a quarter of the engine's default 1 MiB
	// per-connection write queue for what is queued around a reply.
	DefaultMaxReplyBytes = 768 << 10
)

// Config configures New. The zero value works.
type Config struct {
	// Shards is the number of fan-out workers. If zero, runtime.GOMAXPROCS(0).
	Shards int
	// HistorySize is how many publications the default broker keeps per
	// channel. If zero, DefaultHistorySize (100); if negative, none.
	// Ignored when Broker is set.
	HistorySize int
	// HistoryTTL drops publications older than it from the default
	// broker's history, and frees idle channels' history by itself. If
	// zero, DefaultHistoryTTL (5 min); if negative, history never expires
	// by age. Ignored when Broker is set.
	HistoryTTL time.Duration
	// HistoryBytes bounds the memory of the default broker's history, all
	// channels together; the oldest history is evicted first (see
	// MemoryBroker). If zero, DefaultHistoryBytes (128 MiB); if negative,
	// unbounded. Ignored when Broker is set.
	HistoryBytes int64
	// HistoryChannels caps the channels holding history in the default
	// broker; past it the least recently published channel loses its
	// history. If zero, DefaultHistoryChannels (100,000); if negative, no
	// cap. Ignored when Broker is set.
	HistoryChannels int
	// MaxPublicationBytes is the largest publication data accepted, in
	// either encoding (JSON data can be up to 6 times its msgpack, and the
	// hub stores and sends both): Publish refuses more with an error
	// wrapping ErrTooLarge. If zero, DefaultMaxPublicationBytes (1 MiB,
	// the engine passes its MaxMessageBytes); if negative, no limit.
	MaxPublicationBytes int
	// MaxReplyBytes bounds the encoded size of subscribe and history
	// replies: a history reply keeps the newest publications that fit
	// (HistoryResult.Truncated), a recovery that does not fit answers
	// recovered:false with no publications. Keep it below the engine's
	// per-connection write queue (WriteQueueBytes), with headroom for the
	// frames queued around the reply, or a reply closes its reader. If
	// zero, DefaultMaxReplyBytes (768 KiB); if negative, no limit.
	MaxReplyBytes int
	// Compressor compresses publications, presence pushes and replies for
	// subscribers that negotiated permessage-deflate (DeflateSubscriber).
	// Its zero value uses deflate's defaults.
	Compressor deflate.Compressor
	// Broker assigns positions, keeps history and delivers publications.
	// If nil, NewMemoryBroker with the History fields above. The hub owns
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
	Published  uint64 // publications accepted by Publish
	Broadcasts uint64 // publications fanned out to this hub's subscribers
	Encodes    uint64 // publication frames encoded (at most one per encoding per broadcast)
	Compressed uint64 // compressed frames made (at most one per encoding per broadcast, presence push or reply)
	// LocalPositions counts subscribes answered from the channel's known
	// position, with no broker read.
	LocalPositions uint64
	Deliveries     uint64 // publication frames handed to subscribers
	Sends          uint64 // Send and SendBatch calls made for publications
	Batches        uint64 // SendBatch calls carrying more than one publication
	Replies        uint64 // subscribe replies sent
	Recovered      uint64 // subscribes with recover that recovered everything
	NotRecovered   uint64 // subscribes with recover that could not
	Presence       uint64 // join and leave pushes handed to listeners
	Throttled      uint64 // publishes that waited for a backlogged fan-out
	Refused        uint64 // TryPublish calls refused with ErrBackpressure
	TooLarge       uint64 // publishes refused with ErrTooLarge
	Truncated      uint64 // history replies cut, and recoveries refused, by MaxReplyBytes

	// History of the default broker (zero with a Broker that does not
	// report HistoryStats).
	HistoryBytes           int64  // gauge: history memory, as counted against HistoryBytes
	HistoryChannels        int    // gauge: channels holding history
	HistoryExpired         uint64 // publications dropped by HistoryTTL
	HistoryEvictedBytes    uint64 // publications evicted by the HistoryBytes budget
	HistoryEvictedChannels uint64 // publications evicted by the HistoryChannels cap
}

// historyStatser is implemented by brokers that report their history
// (MemoryBroker).
type historyStatser interface{ HistoryStats() HistoryStats }

// historyTrimmer is implemented by brokers whose history can give memory
// back under pressure (MemoryBroker).
type historyTrimmer interface {
	TrimHistory(fraction float64) int64
	RestoreHistory()
}

// TrimHistory asks the broker to shrink its history to fraction of what it
// holds and to keep it there until RestoreHistory (MemoryBroker.TrimHistory):
// for memory pressure. It returns the bytes history holds afterwards; ok is
// false when the broker cannot.
func (h *Hub) TrimHistory(fraction float64) (held int64, ok bool) {
	if t, ok := h.broker.(historyTrimmer); ok {
		return t.TrimHistory(fraction), true
	}
	return 0, false
}

// RestoreHistory gives history back the budget TrimHistory lowered. It
// reports whether the broker supports trimming.
func (h *Hub) RestoreHistory() bool {
	if t, ok := h.broker.(historyTrimmer); ok {
		t.RestoreHistory()
		return true
	}
	return false
}

// Hub is the channel registry and broadcaster. All methods are safe for
// concurrent use.
type Hub struct {
	broker Broker
	// presence is broker when it keeps presence across nodes, else nil.
	presence PresenceBroker
	log      *slog.Logger
	shards   []*shard
	seed     maphash.Seed
	chans    [hubBuckets]hubBucket

	maxPub   int // Config.MaxPublicationBytes, math.MaxInt for none
	maxReply int // Config.MaxReplyBytes, math.MaxInt for none

	closed    atomic.Bool
	done      chan struct{} // closed by Close: wakes publishers waiting for room
	closeOnce sync.Once
	closeErr  error
	workers   sync.WaitGroup

	channels      atomic.Int64
	subscriptions atomic.Int64
	listeners     atomic.Int64
	published     atomic.Uint64
	broadcasts    atomic.Uint64
	encodes       atomic.Uint64
	compressed    atomic.Uint64 // compressed frames made (form.go)
	// localPositions counts subscribes answered from the channel's known
	// position, without a broker read.
	localPositions atomic.Uint64
	compressor     deflate.Compressor
	replies        atomic.Uint64
	recovered      atomic.Uint64
	notRecovered   atomic.Uint64
	throttled      atomic.Uint64
	refused        atomic.Uint64
	tooLarge       atomic.Uint64
	truncated      atomic.Uint64

	frameAge atomic.Pointer[wsframe.Observer] // SetFrameObserver (metrics.go)
}

// maxPendingPubs bounds the publications of one channel queued to the
// shard workers and not yet handed out by all of them. Past it the
// channel's fan-out is backlogged: Publish waits and TryPublish refuses, so
// a publisher faster than the fan-out is slowed down (Publish) or told to
// slow down (TryPublish) instead of growing the queues and every
// subscriber's latency without bound. The bound is per channel, so a hot
// channel never holds back publishers of another; the queues hold at most
// this many publications per channel with subscribers (plus one per
// publisher racing past the check). Two coalescing runs' worth keeps the
// workers busy with full batches.
const maxPendingPubs = 2 * maxRun

// New starts a hub: its shard workers and its broker.
func New(cfg Config) (*Hub, error) {
	n := cfg.Shards
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	h := &Hub{
		broker:     cfg.Broker,
		compressor: cfg.Compressor,
		log:        cfg.Logger,
		seed:       maphash.MakeSeed(),
		shards:     make([]*shard, n),
		done:       make(chan struct{}),
		maxPub:     sizeLimit(cfg.MaxPublicationBytes, DefaultMaxPublicationBytes),
		maxReply:   sizeLimit(cfg.MaxReplyBytes, DefaultMaxReplyBytes),
	}
	if h.broker == nil {
		h.broker = NewMemoryBroker(MemoryBrokerConfig{
			HistorySize:     cfg.HistorySize,
			HistoryTTL:      cfg.HistoryTTL,
			HistoryBytes:    cfg.HistoryBytes,
			HistoryChannels: cfg.HistoryChannels,
		})
	}
	h.presence, _ = h.broker.(PresenceBroker)
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

// sizeLimit applies a size field's convention: zero is def, negative none.
func sizeLimit(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return math.MaxInt
	}
	return v
}

// handler is the hub's BrokerHandler; it keeps HandlePublication out of the
// Hub's own method set.
type handler struct{ h *Hub }

func (x handler) HandlePublication(ch string, pub *codec.Publication) { x.h.broadcast(ch, pub) }

// HandlePresence implements PresenceHandler: another node's join or leave
// goes to this node's listeners of ch, in order with the publications the
// broker delivered before it.
func (x handler) HandlePresence(ch string, join bool, info codec.ClientInfo) {
	h := x.h
	c := h.lookup(ch)
	if c == nil {
		return
	}
	c.mu.Lock()
	h.presencePush(c, join, info)
	c.mu.Unlock()
}

// Close stops the broker and the shard workers. Publications still queued
// are dropped (their frames released). It is idempotent; every method
// returns ErrClosed afterwards.
func (h *Hub) Close() error {
	h.closeOnce.Do(func() {
		h.closed.Store(true)
		close(h.done)
		h.closeErr = h.broker.Close()
		h.stopWorkers()
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
		Shards:         len(h.shards),
		Channels:       int(h.channels.Load()),
		Subscriptions:  int(h.subscriptions.Load()),
		Listeners:      int(h.listeners.Load()),
		Published:      h.published.Load(),
		Broadcasts:     h.broadcasts.Load(),
		Encodes:        h.encodes.Load(),
		Compressed:     h.compressed.Load(),
		LocalPositions: h.localPositions.Load(),
		Replies:        h.replies.Load(),
		Recovered:      h.recovered.Load(),
		NotRecovered:   h.notRecovered.Load(),
		Throttled:      h.throttled.Load(),
		Refused:        h.refused.Load(),
		TooLarge:       h.tooLarge.Load(),
		Truncated:      h.truncated.Load(),
	}
	for _, sh := range h.shards {
		s.Deliveries += sh.deliveries.Load()
		s.Sends += sh.sends.Load()
		s.Batches += sh.batches.Load()
		s.Presence += sh.presence.Load()
		s.QueueDepth += sh.depth()
	}
	if hs, ok := h.broker.(historyStatser); ok {
		st := hs.HistoryStats()
		s.HistoryBytes, s.HistoryChannels = st.Bytes, st.Channels
		s.HistoryExpired, s.HistoryEvictedBytes, s.HistoryEvictedChannels = st.Expired, st.EvictedBytes, st.EvictedChannels
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
// with s.Send before any live publication or presence push of the channel
// reaches s. With req.Recover the reply carries every publication after
// Recover.Offset that history holds, and recovered is true only when none
// is missing (same epoch and the history still covers Recover.Offset+1)
// and the reply fits in MaxReplyBytes; on an epoch mismatch, or when the
// publications would not fit, it carries none. Without Recover the reply
// has no publications and the channel's newest offset. Every publication
// with a greater offset is delivered live, in order, exactly once.
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
	m := &member{info: s.Info(), form: formOf(s, enc), shard: h.shardOf(s)}
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
		c.mu.Lock()
		c.interestGen++
		c.known = false
		c.mu.Unlock()
	}
	c.mu.Lock()
	if len(c.members) == 0 {
		h.channels.Add(1)
	}
	c.members[s] = m
	c.addCounts(m, 1)
	if req.Presence {
		// A listener from now on: presence pushes queued after the add op
		// wait in s's shard with its publications and follow its reply,
		// so s misses no join or leave of anyone who subscribes or leaves
		// after s has seen its reply.
		c.addListener(m)
		h.listeners.Add(1)
	}
	h.shards[m.shard].push(item{kind: opAdd, ch: c, sub: s, form: m.form, listener: req.Presence})
	known, newest, gen := c.known, c.newest, c.interestGen
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
	var (
		pubs []*codec.Publication
		pos  codec.StreamPosition
	)
	switch r := req.Recover; {
	case known && (r == nil || *r == newest):
		// No broker round trip: a subscriber of a channel this node
		// already follows (a reconnect storm to a hot channel) asks for
		// the position, or recovers from it with nothing missed.
		pos = newest
		h.localPositions.Add(1)
	default:
		var err error
		pubs, pos, err = h.broker.History(context.Background(), req.Channel, since, limit)
		if err != nil {
			h.remove(c, s, m)
			return err
		}
		c.mu.Lock()
		if !c.known && c.interestGen == gen && c.members[s] == m {
			// Read after s's add op, in the same unbroken interest: the
			// broker delivers everything after pos to this node.
			c.known, c.newest = true, pos
		}
		c.mu.Unlock()
	}
	recovered := false
	if r := req.Recover; r != nil {
		switch {
		case r.Epoch != pos.Epoch:
			pubs = nil
		case !fitsReply(enc, pos, pubs, h.maxReply):
			// Too large to send: the newest position and nothing else,
			// never a part of the gap (PROTOCOL.md). The client starts
			// over from the newest state instead of being closed for a
			// frame larger than its write queue.
			pubs = nil
			h.truncated.Add(1)
		case r.Offset <= pos.Offset && uint64(len(pubs)) == pos.Offset-r.Offset:
			recovered = true
		}
		if recovered {
			h.recovered.Add(1)
		} else {
			h.notRecovered.Add(1)
		}
	}

	// 3. Reply, encoded and sent with no hub lock held: s is pending, so
	// no publication reaches it before the activate op below, and it is
	// not a presence listener yet, so no join or leave either.
	if req.HasID {
		f := wsframe.Get()
		f.B = codec.AppendSubscribeOK(f.B, enc, req.ID, pos, recovered, pubs)
		s.Send(h.finishReply(f, enc, m.form))
		h.replies.Add(1)
	}

	// 4. Activate: the shard flushes what it buffered after pos.Offset and
	// delivers live from then on. The activate op makes s a presence
	// listener in its shard, and it is queued under c.mu, where presence
	// pushes are queued too: a join pushed by another subscriber is
	// queued either before it (that subscriber is then already active, so
	// in the presence snapshot s can ask for) or after it, and delivered
	// to s.
	c.mu.Lock()
	if c.members[s] == m { // not unsubscribed meanwhile
		h.shards[m.shard].push(item{kind: opActivate, ch: c, sub: s, form: m.form, pos: pos, listener: req.Presence})
		m.active = true
		c.present++
		h.presencePush(c, true, m.info)
		if h.presence != nil {
			// Under c.mu, so that the broker sees this member's join and
			// leave in order; Join only queues.
			h.presence.Join(c.name, m.info)
		}
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
	c.mu.Lock() // members: either lock is enough to read it
	m := c.members[s]
	c.mu.Unlock()
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
	// Queued before the leave: s's shard stops delivering to s (presence
	// included) before it sees its own leave.
	h.shards[m.shard].push(item{kind: opRemove, ch: c, sub: s, form: m.form})
	if m.listener {
		c.removeListener(m)
		h.listeners.Add(-1)
	}
	if m.active {
		c.present--
		h.presencePush(c, false, m.info)
		if h.presence != nil {
			h.presence.Leave(c.name, m.info)
		}
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

// presencePush queues join (or leave) of info to the shards holding c's
// presence listeners, encoded once per encoding they use; the workers hand
// it to the listeners in order with the channel's publications. Called
// with c.mu held, which orders it with publications and with the
// activate and remove ops that make subscribers listeners or not. It
// costs O(encodings + shards) whatever the number of listeners.
func (h *Hub) presencePush(c *channel, join bool, info codec.ClientInfo) {
	if c.listenShards == 0 {
		return
	}
	d := &delivery{}
	h.encodeForms(d, &c.listenForm, c.listenShards, func(b []byte, enc codec.Encoding) []byte {
		if join {
			return codec.AppendJoin(b, enc, c.name, info)
		}
		return codec.AppendLeave(b, enc, c.name, info)
	})
	for i, n := range c.listenShard {
		if n > 0 {
			h.shards[i].push(item{kind: opPresence, ch: c, d: d})
		}
	}
}

// Publish publishes data, one complete value in enc, to channel as info.
// The data is copied and transcoded once to the other encoding; data that
// fails to transcode returns an error wrapping ErrBadData, data larger
// than MaxPublicationBytes in either encoding one wrapping ErrTooLarge.
// While the channel's fan-out is backlogged it waits, until there is room,
// ctx ends or the hub closes; a publish to a channel that is not
// backlogged never waits, whatever other channels do. It returns the
// publication's position. Publish is for callers that may block (the HTTP
// API); code on a network poller uses TryPublish.
func (h *Hub) Publish(ctx context.Context, channel string, data []byte, enc codec.Encoding, info codec.ClientInfo) (codec.StreamPosition, error) {
	return h.publish(ctx, channel, data, enc, info, true)
}

// TryPublish is Publish that never waits: when the channel's fan-out is
// backlogged it returns ErrBackpressure at once (the engine replies
// rate_limited) and publishes nothing.
func (h *Hub) TryPublish(ctx context.Context, channel string, data []byte, enc codec.Encoding, info codec.ClientInfo) (codec.StreamPosition, error) {
	return h.publish(ctx, channel, data, enc, info, false)
}

func (h *Hub) publish(ctx context.Context, channel string, data []byte, enc codec.Encoding, info codec.ClientInfo, wait bool) (codec.StreamPosition, error) {
	if h.closed.Load() {
		return codec.StreamPosition{}, ErrClosed
	}
	if !codec.ValidChannel([]byte(channel)) {
		return codec.StreamPosition{}, ErrBadChannel
	}
	if !validEncoding(enc) {
		return codec.StreamPosition{}, ErrBadEncoding
	}
	if len(data) > h.maxPub {
		h.tooLarge.Add(1)
		return codec.StreamPosition{}, fmt.Errorf("%w: %d bytes of %v, limit %d", ErrTooLarge, len(data), enc, h.maxPub)
	}
	// Before the copy and transcoding: a refused publish costs little. A
	// channel without subscribers here has nothing queued.
	if c := h.lookup(channel); c != nil && c.backlogged() {
		if !wait {
			h.refused.Add(1)
			return codec.StreamPosition{}, ErrBackpressure
		}
		if err := h.waitForRoom(ctx, c); err != nil {
			return codec.StreamPosition{}, err
		}
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
	if len(t) > h.maxPub {
		// Small msgpack strings of control bytes grow sixfold in JSON.
		h.tooLarge.Add(1)
		return codec.StreamPosition{}, fmt.Errorf("%w: %d bytes as %v, limit %d", ErrTooLarge, len(t), other, h.maxPub)
	}
	pub := &codec.Publication{Info: info}
	if enc == codec.JSON {
		pub.JSON, pub.Msgpack = buf[:len(data):len(data)], t
	} else {
		pub.Msgpack, pub.JSON = buf[:len(data):len(data)], t
	}
	pos, err := h.broker.Publish(ctx, channel, pub)
	if err != nil {
		return codec.StreamPosition{}, err
	}
	h.published.Add(1)
	return pos, nil
}

// waitForRoom blocks while c's fan-out is backlogged, until its shards
// drain, ctx ends or the hub closes.
func (h *Hub) waitForRoom(ctx context.Context, c *channel) error {
	h.throttled.Add(1)
	for {
		room := c.waitRoom()
		// Re-check after registering: a worker that drained before it saw
		// roomWaiting did not signal.
		if !c.backlogged() {
			return nil
		}
		if h.closed.Load() {
			return ErrClosed
		}
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		case <-h.done:
			return ErrClosed
		}
	}
}

// Presence returns the clients subscribed to channel (whose subscribe has
// completed), in no particular order: on this hub, and with a
// PresenceBroker on every node (this hub's own exactly, the other nodes'
// as the broker knows them; an error wrapping ErrUnavailable when it
// cannot answer).
func (h *Hub) Presence(channel string) ([]codec.ClientInfo, error) {
	if h.closed.Load() {
		return nil, ErrClosed
	}
	var out []codec.ClientInfo
	if h.presence != nil {
		remote, err := h.presence.Presence(context.Background(), channel)
		if err != nil {
			return nil, err
		}
		out = remote
	}
	c := h.acquire(channel, false)
	if c == nil {
		if out == nil {
			out = []codec.ClientInfo{}
		}
		return out, nil
	}
	defer h.release(c)
	c.mu.Lock()
	defer c.mu.Unlock()
	out = slices.Grow(out, c.present)
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
	if h.presence != nil {
		all, err := h.Presence(channel)
		return len(all), err
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

// HistoryResult is a history reply's content.
type HistoryResult struct {
	// Position is the channel's epoch and newest offset.
	Position codec.StreamPosition
	// Publications are the newest ones asked for that fit in
	// MaxReplyBytes, oldest first. They are shared: do not modify them.
	Publications []*codec.Publication
	// Truncated is set when older publications within the limit were left
	// out to fit (the reply's optional "truncated":true).
	Truncated bool
}

// HistoryFor returns the channel's position and its newest limit
// publications (all it holds when limit is 0 or more than it holds),
// oldest first, cut to the newest that fit in a reply of MaxReplyBytes in
// enc. Encode the reply with codec.AppendHistoryReply.
func (h *Hub) HistoryFor(channel string, limit int, enc codec.Encoding) (HistoryResult, error) {
	if h.closed.Load() {
		return HistoryResult{}, ErrClosed
	}
	if !validEncoding(enc) {
		return HistoryResult{}, ErrBadEncoding
	}
	return h.history(channel, limit, enc)
}

// History is HistoryFor for a reply in either encoding: the publications
// fit in MaxReplyBytes in both, and whether some were cut is not told.
func (h *Hub) History(channel string, limit int) (codec.StreamPosition, []*codec.Publication, error) {
	if h.closed.Load() {
		return codec.StreamPosition{}, nil, ErrClosed
	}
	r, err := h.history(channel, limit, 0)
	return r.Position, r.Publications, err
}

func (h *Hub) history(channel string, limit int, enc codec.Encoding) (HistoryResult, error) {
	if limit <= 0 {
		limit = -1
	}
	pubs, pos, err := h.broker.History(context.Background(), channel, nil, limit)
	if err != nil {
		return HistoryResult{}, err
	}
	kept := newestFitting(enc, pos, pubs, h.maxReply)
	if len(kept) < len(pubs) {
		h.truncated.Add(1)
	}
	return HistoryResult{Position: pos, Publications: kept, Truncated: len(kept) < len(pubs)}, nil
}

// Reply size bounds. The bound of a reply is computed from lengths, without
// encoding it: an upper bound of the reply's size.
const (
	// replyOverhead bounds a subscribe or history reply without its
	// publications and epoch (keys, id, offset, brackets).
	replyOverhead = 128
	// pubOverheadInReply bounds one publication entry without its data and
	// strings (keys, offset, brackets, separator).
	pubOverheadInReply = 112
)

// pubReplyBound bounds the bytes p adds to a reply in enc; enc 0 means
// whichever encoding is larger. JSON escapes a string byte into at most 6.
func pubReplyBound(enc codec.Encoding, p *codec.Publication) int {
	strs := len(p.Channel) + len(p.Epoch) + len(p.Info.Client) + len(p.Info.User) + len(p.Info.Name)
	j := pubOverheadInReply + 6*strs + len(p.JSON)
	m := pubOverheadInReply + strs + len(p.Msgpack)
	switch enc {
	case codec.JSON:
		return j
	case codec.Msgpack:
		return m
	}
	return max(j, m)
}

// fitsReply reports whether a reply carrying pubs stays within limit bytes.
func fitsReply(enc codec.Encoding, pos codec.StreamPosition, pubs []*codec.Publication, limit int) bool {
	n := replyOverhead + 6*len(pos.Epoch)
	for _, p := range pubs {
		if n += pubReplyBound(enc, p); n > limit {
			return false
		}
	}
	return n <= limit
}

// newestFitting returns the newest of pubs (a tail of it) whose reply
// stays within limit bytes.
func newestFitting(enc codec.Encoding, pos codec.StreamPosition, pubs []*codec.Publication, limit int) []*codec.Publication {
	n := replyOverhead + 6*len(pos.Epoch)
	for i := len(pubs) - 1; i >= 0; i-- {
		if n += pubReplyBound(enc, pubs[i]); n > limit {
			return pubs[i+1:]
		}
	}
	return pubs
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
	// (activeShards > 0: the channel has members, so the node follows it.)
	if p := (codec.StreamPosition{Epoch: pub.Epoch, Offset: pub.Offset}); !c.known || p.Epoch != c.newest.Epoch || p.Offset > c.newest.Offset {
		c.known, c.newest = true, p
	}
	d := &delivery{pub: pub}
	h.encodeForms(d, &c.formCount, c.activeShards, func(b []byte, enc codec.Encoding) []byte {
		h.encodes.Add(1)
		return codec.AppendPub(b, enc, pub)
	})
	if o := h.frameAge.Load(); o != nil {
		d.track(*o) // metrics.go
	}
	// In flight until every shard it is queued to has handed it out.
	d.left.Store(int32(c.activeShards))
	c.inflight.Add(1)
	for i, n := range c.shardCount {
		if n > 0 {
			h.shards[i].push(item{kind: opPub, ch: c, d: d})
		}
	}
	h.broadcasts.Add(1)
}
