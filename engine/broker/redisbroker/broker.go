// Package redisbroker is a hub.Broker on Redis: several fanout nodes that
// share one Redis form one system, with one offset sequence and one history
// per channel, whichever node a publication enters by. docs/CLUSTER.md
// explains the choice of Redis, the data layout, the failure modes and the
// cost per publish.
//
// A publish is one round trip: a Lua script (publishScript) increments the
// channel's offset, appends the publication to the channel's stream
// (bounded by MAXLEN and a TTL) and PUBLISHes it to the channel's pub/sub
// channel, all in one atomic step, so every node receives a channel's
// publications in offset order, stored before delivered.
//
// Each node holds one pub/sub connection (link.go) subscribed to the
// channels its hub has subscribers in, and hands what arrives to the hub
// from a fixed set of delivery goroutines, a channel always on the same one
// (never concurrently for one channel, in order). Delivery checks offsets:
// a duplicate is dropped, and a gap (a publication lost while the link was
// down, or the first one after a reconnect) is filled from the channel's
// history before going on, so the hub sees every offset once, in order,
// while the history holds it.
//
// While Redis cannot be reached, Publish, History and Subscribe fail at once
// with an error wrapping hub.ErrUnavailable (the engine answers
// "unavailable"), Healthy says why (/readyz), and the broker reconnects by
// itself, subscribes again and catches up every channel of interest.
//
// The broker is also a hub.PresenceBroker (presence.go): every node writes
// its clients' presence entries to a hash per channel, publishes their joins
// and leaves on the channel's pub/sub channel, and renews a heartbeat; the
// entries of a node whose heartbeat expired (Config.NodeTTL) are removed by
// the others, which publish the leaves.
package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/redis/go-redis/v9"
)

// Defaults of Config.
const (
	DefaultPrefix       = "fanout"
	DefaultMetaTTL      = 24 * time.Hour
	DefaultTimeout      = time.Second
	DefaultPingInterval = time.Second
)

// Config configures New.
type Config struct {
	// URL of Redis: redis://[[user]:password@]host[:port][/db], rediss://
	// for TLS, or unix:///path. Required.
	URL string
	// Prefix of every key and pub/sub channel, so that several systems can
	// share one Redis. If empty, DefaultPrefix ("fanout").
	Prefix string
	// HistorySize is how many publications each channel keeps (stream
	// MAXLEN). If zero, hub.DefaultHistorySize (100); if negative, none:
	// offsets are still assigned.
	HistorySize int
	// HistoryTTL expires a channel's history this long after its last
	// publication. If zero, hub.DefaultHistoryTTL (5 min); if negative,
	// never (bound Redis's memory with maxmemory then).
	HistoryTTL time.Duration
	// MetaTTL expires a channel's epoch and offset this long after its
	// last publication or subscription; a channel forgotten this way starts
	// a new epoch. Nodes refresh it for the channels they are subscribed to.
	// If zero, DefaultMetaTTL (24 h), at least HistoryTTL; if negative,
	// never.
	MetaTTL time.Duration
	// Timeout bounds each Redis command and connection attempt. If zero,
	// DefaultTimeout (1 s).
	Timeout time.Duration
	// PingInterval is how often the pub/sub connection is pinged; one
	// silent for three intervals is considered dead. If zero,
	// DefaultPingInterval (1 s).
	PingInterval time.Duration
	// NodeTTL bounds how long the clients of a node that died stay in
	// other nodes' presence: each node renews a heartbeat in Redis every
	// NodeTTL/3, and once a node's has not been renewed for NodeTTL, the
	// next heartbeat of any other node removes its clients from presence
	// and pushes their leaves (so within about NodeTTL + NodeTTL/3 of its
	// last heartbeat). A node cut off from Redis for longer rewrites its
	// entries when it is back. If zero, DefaultNodeTTL (6 s).
	NodeTTL time.Duration
	// Workers is the number of delivery goroutines. If zero,
	// 2*GOMAXPROCS, at least 4.
	Workers int
	// Logger receives connection state changes and gaps. If nil,
	// slog.Default().
	Logger *slog.Logger
}

// Stats are the broker's counters.
type Stats struct {
	Connected  bool   // the pub/sub connection is up and subscribed
	Reconnects uint64 // pub/sub connections made after the first
	Published  uint64 // publications assigned an offset by this node
	Delivered  uint64 // publications handed to the hub
	Duplicates uint64 // publications received twice and dropped
	CaughtUp   uint64 // publications delivered from history to fill a gap
	Lost       uint64 // offsets that could not be delivered (history no longer held them)
	// Regressions counts channels found with an offset lower than one
	// delivered, in the same epoch: Redis lost acknowledged writes; the
	// broker started a new epoch for them.
	Regressions uint64
	Channels    int // channels of interest
	// Presence across nodes.
	PresenceIn     uint64 // joins and leaves of other nodes' clients handed to the hub
	PresenceReaped uint64 // entries of dead nodes this node removed
	Resyncs        uint64 // full rewrites of this node's entries (after its heartbeat expired)
}

// Broker is the Redis broker. Create it with New and give it to the hub
// (engine.Config.Broker); the hub runs and closes it.
type Broker struct {
	rdb     *redis.Client
	opts    *redis.Options
	prefix  string
	size    int
	ttlMS   int64
	metaMS  int64
	timeout time.Duration
	pingIvl time.Duration
	log     *slog.Logger
	seed    maphash.Seed
	workers []*worker

	handler  hub.BrokerHandler
	phandler hub.PresenceHandler // handler, when it takes presence

	// Presence (presence.go). pmu is a leaf lock: Join and Leave take it
	// under the hub's channel lock, and nothing is called with it held.
	node    string // this node's id, new at every start
	nodeTTL time.Duration
	pmu     sync.Mutex
	plocal  map[string]map[string]string // channel -> client -> info blob: this node's entries
	pdirty  map[pkey]struct{}            // entries to write (from plocal) or remove
	presync bool                         // rewrite every entry (pdirty is then empty)
	pwake   chan struct{}
	crashed atomic.Bool // tests: presence writes and heartbeats stop, as in a crash
	reaping atomic.Bool // a goroutine is removing dead nodes' entries

	mu       sync.RWMutex
	link     *link                 // current pub/sub link, nil while none
	interest map[string]*chanState // pub/sub channel -> state

	up      atomic.Bool // link up and subscribed
	lastErr atomic.Pointer[error]
	ready   chan struct{} // closed on the first up
	once    sync.Once

	closed    atomic.Bool
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	reconnects  atomic.Uint64
	published   atomic.Uint64
	delivered   atomic.Uint64
	duplicates  atomic.Uint64
	caughtUp    atomic.Uint64
	lost        atomic.Uint64
	regressions atomic.Uint64
	presenceIn  atomic.Uint64
	reaped      atomic.Uint64
	resyncs     atomic.Uint64

	rtt roundTrips // metrics.go
}

// New checks cfg and returns a broker; it connects when the hub runs it.
func New(cfg Config) (*Broker, error) {
	if cfg.URL == "" {
		return nil, errors.New("redisbroker: no URL")
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: %w", err)
	}
	b := &Broker{
		opts:     opts,
		prefix:   cfg.Prefix,
		size:     cfg.HistorySize,
		timeout:  cfg.Timeout,
		pingIvl:  cfg.PingInterval,
		log:      cfg.Logger,
		seed:     maphash.MakeSeed(),
		interest: make(map[string]*chanState),
		ready:    make(chan struct{}),
		stop:     make(chan struct{}),
		node:     newNodeID(),
		nodeTTL:  cfg.NodeTTL,
		plocal:   make(map[string]map[string]string),
		pdirty:   make(map[pkey]struct{}),
		pwake:    make(chan struct{}, 1),
		rtt:      newRoundTrips(),
	}
	if b.prefix == "" {
		b.prefix = DefaultPrefix
	}
	if b.nodeTTL <= 0 {
		b.nodeTTL = DefaultNodeTTL
	}
	switch {
	case b.size == 0:
		b.size = hub.DefaultHistorySize
	case b.size < 0:
		b.size = 0
	}
	ttl := cfg.HistoryTTL
	switch {
	case ttl == 0:
		ttl = hub.DefaultHistoryTTL
	case ttl < 0:
		ttl = 0
	}
	b.ttlMS = max(ttl.Milliseconds(), 0)
	if ttl > 0 && b.ttlMS == 0 {
		b.ttlMS = 1
	}
	meta := cfg.MetaTTL
	switch {
	case meta == 0 && ttl == 0:
		meta = 0 // history never expires: neither does the epoch
	case meta == 0:
		meta = max(DefaultMetaTTL, ttl)
	case meta < 0:
		meta = 0
	}
	b.metaMS = meta.Milliseconds()
	if b.timeout <= 0 {
		b.timeout = DefaultTimeout
	}
	if b.pingIvl <= 0 {
		b.pingIvl = DefaultPingInterval
	}
	if b.log == nil {
		b.log = slog.Default()
	}
	n := cfg.Workers
	if n <= 0 {
		n = max(4, 2*runtime.GOMAXPROCS(0))
	}
	b.workers = make([]*worker, n)
	for i := range b.workers {
		b.workers[i] = &worker{b: b, wake: make(chan struct{}, 1)}
	}
	// Commands: no retries (a publish retried after a lost reply could be
	// stored twice), RESP2, short timeouts so that an engine that hangs
	// fails publishes within Timeout.
	opts.MaxRetries = -1
	opts.Protocol = 2
	opts.DisableIdentity = true
	opts.DialTimeout = b.timeout
	opts.ReadTimeout = b.timeout
	opts.WriteTimeout = b.timeout
	opts.ContextTimeoutEnabled = true
	b.rdb = redis.NewClient(opts)
	return b, nil
}

func (b *Broker) metaKey(ch string) string   { return b.prefix + ":{" + ch + "}:m" }
func (b *Broker) streamKey(ch string) string { return b.prefix + ":{" + ch + "}:s" }
func (b *Broker) pubsubKey(ch string) string { return b.prefix + ":p:" + ch }

func newEpoch() string { return strconv.FormatUint(rand.Uint64(), 36) }

// unavailable wraps err as hub.ErrUnavailable.
func unavailable(err error) error {
	if err == nil {
		return hub.ErrUnavailable
	}
	return fmt.Errorf("%w: redis: %v", hub.ErrUnavailable, err)
}

// Run starts the delivery goroutines and the pub/sub connection, and waits
// up to Timeout for it to come up. Redis being down is not an error: the
// broker keeps trying, and reports it through Healthy meanwhile.
func (b *Broker) Run(h hub.BrokerHandler) error {
	if b.closed.Load() {
		return hub.ErrClosed
	}
	if b.handler != nil {
		return errors.New("redisbroker: already running")
	}
	b.handler = h
	b.phandler, _ = h.(hub.PresenceHandler)
	for _, w := range b.workers {
		b.wg.Add(1)
		go w.run()
	}
	b.wg.Add(3)
	go b.connLoop()
	go b.presenceLoop()
	go b.heartbeatLoop()
	if b.metaMS > 0 {
		b.wg.Add(1)
		go b.refreshLoop(time.Duration(b.metaMS) * time.Millisecond / 4)
	}
	select {
	case <-b.ready:
	case <-time.After(2 * b.timeout):
		b.log.Warn("redisbroker: Redis not reachable yet; retrying in the background", "addr", b.opts.Addr, "err", b.Healthy())
	}
	return nil
}

// Close stops the broker. Calls after Close return hub.ErrClosed.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.stop)
		b.mu.Lock()
		l := b.link
		b.mu.Unlock()
		if l != nil {
			l.kill(hub.ErrClosed)
		}
		for _, w := range b.workers {
			w.close()
		}
		b.wg.Wait()
		b.goodbye()
		_ = b.rdb.Close()
	})
	return nil
}

// Healthy implements hub.HealthChecker: nil while the pub/sub connection
// to Redis is up, an error wrapping hub.ErrUnavailable otherwise.
func (b *Broker) Healthy() error {
	if b.closed.Load() {
		return hub.ErrClosed
	}
	if b.up.Load() {
		return nil
	}
	if p := b.lastErr.Load(); p != nil {
		return unavailable(*p)
	}
	return unavailable(errors.New("connecting to " + b.opts.Addr))
}

// Stats returns the broker's counters.
func (b *Broker) Stats() Stats {
	b.mu.RLock()
	n := len(b.interest)
	b.mu.RUnlock()
	return Stats{
		Connected:   b.up.Load(),
		Reconnects:  b.reconnects.Load(),
		Published:   b.published.Load(),
		Delivered:   b.delivered.Load(),
		Duplicates:  b.duplicates.Load(),
		CaughtUp:    b.caughtUp.Load(),
		Lost:        b.lost.Load(),
		Regressions: b.regressions.Load(),
		Channels:    n,

		PresenceIn:     b.presenceIn.Load(),
		PresenceReaped: b.reaped.Load(),
		Resyncs:        b.resyncs.Load(),
	}
}

// check returns the error a call gets now: closed, or Redis known down (so
// that a call fails at once instead of waiting for a dial to time out).
func (b *Broker) check() error {
	if b.closed.Load() {
		return hub.ErrClosed
	}
	if !b.up.Load() {
		return b.Healthy()
	}
	return nil
}

// cmdErr converts a command's error: the caller's own context ending is
// returned as is, everything else is the engine being unavailable.
func cmdErr(parent context.Context, err error) error {
	if perr := parent.Err(); perr != nil {
		return perr
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		// Redis answered: an error of its state is an outage, any other
		// one a bug of ours (a malformed script call).
		msg := rerr.Error()
		for _, p := range [...]string{"LOADING", "BUSY", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM", "NOREPLICAS", "NOAUTH", "WRONGPASS"} {
			if strings.HasPrefix(msg, p) {
				return unavailable(err)
			}
		}
		return fmt.Errorf("redisbroker: %w", err)
	}
	return unavailable(err)
}

// Publish implements hub.Broker: one round trip (publishScript).
func (b *Broker) Publish(ctx context.Context, ch string, pub *codec.Publication) (codec.StreamPosition, error) {
	if err := b.check(); err != nil {
		return codec.StreamPosition{}, err
	}
	if err := ctx.Err(); err != nil {
		return codec.StreamPosition{}, err
	}
	blob := appendBlob(make([]byte, 0, 16+len(pub.Info.Client)+len(pub.Info.User)+len(pub.Info.Name)+len(pub.JSON)+len(pub.Msgpack)), pub)
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	start := time.Now()
	res, err := publishScript.Run(cctx, b.rdb, []string{b.metaKey(ch), b.streamKey(ch)},
		blob, newEpoch(), b.size, b.ttlMS, b.metaMS, b.pubsubKey(ch)).Slice()
	b.rtt.publishDone(start)
	if err != nil {
		return codec.StreamPosition{}, cmdErr(ctx, err)
	}
	if len(res) != 2 {
		return codec.StreamPosition{}, fmt.Errorf("redisbroker: publish: unexpected reply %v", res)
	}
	off, ok1 := res[0].(int64)
	epoch, ok2 := res[1].(string)
	if !ok1 || !ok2 || off <= 0 {
		return codec.StreamPosition{}, fmt.Errorf("redisbroker: publish: unexpected reply %v", res)
	}
	pub.Channel, pub.Epoch, pub.Offset = ch, epoch, uint64(off)
	b.published.Add(1)
	return codec.StreamPosition{Epoch: epoch, Offset: uint64(off)}, nil
}

// History implements hub.Broker: one round trip (historyScript).
func (b *Broker) History(ctx context.Context, ch string, since *codec.StreamPosition, limit int) ([]*codec.Publication, codec.StreamPosition, error) {
	if err := b.check(); err != nil {
		return nil, codec.StreamPosition{}, err
	}
	if err := ctx.Err(); err != nil {
		return nil, codec.StreamPosition{}, err
	}
	s := ""
	if since != nil {
		s = strconv.FormatUint(since.Offset, 10)
	}
	return b.history(ctx, ch, s, limit, "")
}

// history runs historyScript (see there for since, limit and epoch).
func (b *Broker) history(ctx context.Context, ch, since string, limit int, epoch string) ([]*codec.Publication, codec.StreamPosition, error) {
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	res, err := historyScript.Run(cctx, b.rdb, []string{b.metaKey(ch), b.streamKey(ch)}, since, limit, epoch).Slice()
	if err != nil {
		return nil, codec.StreamPosition{}, cmdErr(ctx, err)
	}
	bad := func() ([]*codec.Publication, codec.StreamPosition, error) {
		return nil, codec.StreamPosition{}, fmt.Errorf("redisbroker: history: unexpected reply %v", res)
	}
	if len(res) != 4 {
		return bad()
	}
	e, ok1 := res[0].(string)
	os, ok2 := res[1].(string)
	entries, ok3 := res[2].([]any)
	rev, ok4 := res[3].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return bad()
	}
	o, err := strconv.ParseUint(os, 10, 64)
	if err != nil {
		return bad()
	}
	pos := codec.StreamPosition{Epoch: e, Offset: o}
	if len(entries) == 0 {
		return nil, pos, nil
	}
	pubs := make([]*codec.Publication, len(entries))
	for i, ent := range entries {
		p, err := entryPublication(ch, e, ent)
		if err != nil {
			return nil, codec.StreamPosition{}, err
		}
		if rev == 1 {
			pubs[len(pubs)-1-i] = p
		} else {
			pubs[i] = p
		}
	}
	return pubs, pos, nil
}

// entryPublication decodes one XRANGE entry: [id, [field, value, ...]].
func entryPublication(ch, epoch string, ent any) (*codec.Publication, error) {
	e, ok := ent.([]any)
	if !ok || len(e) != 2 {
		return nil, errBadBlob
	}
	id, ok1 := e[0].(string)
	fields, ok2 := e[1].([]any)
	if !ok1 || !ok2 || len(fields) != 2 {
		return nil, errBadBlob
	}
	blob, ok := fields[1].(string)
	if !ok {
		return nil, errBadBlob
	}
	off, err := strconv.ParseUint(strings.TrimSuffix(id, "-0"), 10, 64)
	if err != nil {
		return nil, errBadBlob
	}
	p := &codec.Publication{Channel: ch, Epoch: epoch, Offset: off}
	if err := decodeBlob([]byte(blob), p); err != nil {
		return nil, err
	}
	return p, nil
}

// Subscribe implements hub.Broker: it subscribes the pub/sub connection to
// ch and returns once Redis has confirmed it, and reads the channel's
// position (starting an epoch if it has none), from which this node's
// delivery of ch goes on without a gap.
func (b *Broker) Subscribe(ch string) error {
	if err := b.check(); err != nil {
		return err
	}
	key := b.pubsubKey(ch)
	st := &chanState{ch: ch, key: key, w: b.workers[maphash.String(b.seed, key)%uint64(len(b.workers))]}
	b.mu.Lock()
	l := b.link
	if l == nil {
		b.mu.Unlock()
		return b.Healthy()
	}
	b.interest[key] = st
	b.mu.Unlock()

	fail := func(err error) error {
		b.mu.Lock()
		if b.interest[key] == st {
			delete(b.interest, key)
		}
		cur := b.link // a link made meanwhile subscribed key too
		b.mu.Unlock()
		st.gone.Store(true)
		if cur != nil {
			_ = cur.write(b.timeout, []string{"UNSUBSCRIBE", key})
		}
		if errors.Is(err, hub.ErrUnavailable) || errors.Is(err, hub.ErrClosed) {
			return err
		}
		return unavailable(err)
	}
	tok, wait := l.expect()
	if err := l.write(b.timeout, []string{"SUBSCRIBE", key}, []string{"PING", tok}); err != nil {
		l.forget(tok)
		return fail(err)
	}
	t := time.NewTimer(b.timeout)
	select {
	case err := <-wait:
		t.Stop()
		if err != nil {
			return fail(err)
		}
	case <-t.C:
		l.forget(tok)
		return fail(errors.New("subscribe not confirmed in time"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	res, err := positionScript.Run(ctx, b.rdb, []string{b.metaKey(ch), b.streamKey(ch)}, newEpoch(), b.metaMS).Slice()
	if err != nil {
		return fail(cmdErr(context.Background(), err))
	}
	epoch, off, ok := parsePosition(res)
	if !ok {
		return fail(fmt.Errorf("unexpected position reply %v", res))
	}
	st.w.push(task{kind: taskInit, st: st, epoch: epoch, offset: off})
	return nil
}

func parsePosition(res []any) (epoch string, off uint64, ok bool) {
	if len(res) != 2 {
		return "", 0, false
	}
	epoch, ok1 := res[0].(string)
	os, ok2 := res[1].(string)
	if !ok1 || !ok2 {
		return "", 0, false
	}
	off, err := strconv.ParseUint(os, 10, 64)
	return epoch, off, err == nil
}

// Unsubscribe implements hub.Broker. It never fails for want of Redis: a
// connection made later does not subscribe the channel again.
func (b *Broker) Unsubscribe(ch string) error {
	if b.closed.Load() {
		return hub.ErrClosed
	}
	key := b.pubsubKey(ch)
	b.mu.Lock()
	st := b.interest[key]
	delete(b.interest, key)
	l := b.link
	b.mu.Unlock()
	if st != nil {
		st.gone.Store(true)
	}
	if l != nil {
		_ = l.write(b.timeout, []string{"UNSUBSCRIBE", key})
	}
	return nil
}

// refreshLoop keeps the epoch of the channels this node is subscribed to
// from expiring (MetaTTL) while they are quiet.
func (b *Broker) refreshLoop(every time.Duration) {
	defer b.wg.Done()
	t := time.NewTicker(max(every, time.Second))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		b.mu.RLock()
		chans := make([]string, 0, len(b.interest))
		for _, st := range b.interest {
			chans = append(chans, st.ch)
		}
		b.mu.RUnlock()
		for len(chans) > 0 {
			n := min(len(chans), 1000)
			ctx, cancel := context.WithTimeout(context.Background(), 10*b.timeout)
			pipe := b.rdb.Pipeline()
			for _, ch := range chans[:n] {
				pipe.PExpire(ctx, b.metaKey(ch), time.Duration(b.metaMS)*time.Millisecond)
				pipe.PExpire(ctx, b.presenceKey(ch), time.Duration(b.metaMS)*time.Millisecond)
			}
			_, _ = pipe.Exec(ctx)
			cancel()
			chans = chans[n:]
		}
	}
}
