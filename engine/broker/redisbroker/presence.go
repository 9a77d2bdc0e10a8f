package redisbroker

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/redis/go-redis/v9"
)

// Presence across nodes (hub.PresenceBroker; docs/CLUSTER.md, "Presence").
//
// Keys, besides those of scripts.go (prefix P, channel C, node id N):
//
//	P:{C}:pr   hash    field "N|<client id>" = info blob, one per subscription of C on N (PEXPIRE MetaTTL)
//	P:nodes    zset    member N, score = when N's heartbeat expires (ms, Redis clock) (PEXPIRE MetaTTL)
//	P:nc:N     set     the channels where N may have entries (a superset) (PEXPIRE MetaTTL)
//	P:reap:N   string  which node is removing dead N's entries (PX NodeTTL)
//
// and on C's pub/sub channel, besides publications, "j:N:<info blob>" and
// "l:N:<info blob>" for a join or leave of a client of N.
//
// Every node keeps its own clients' entries in plocal (what the hub told
// it: the desired state) and writes what changed from one goroutine
// (presenceLoop), batched in pipelines: Join and Leave only mark a key
// dirty, so the hub can call them under its channel lock. Redis's state of
// a key therefore follows the node's, in order, whatever Redis does
// meanwhile: a write that fails is retried, and a node that finds its
// heartbeat expired (it was down, or cut off from Redis longer than
// NodeTTL, and may have been reaped) rewrites all its entries (resync).
//
// Each node beats every NodeTTL/3 (heartbeatScript) and removes, for every
// node whose heartbeat expired, that node's entries channel by channel
// (syncScript, which checks again that the node is dead, atomically),
// publishing a leave for each; then the node itself (finishScript).

// DefaultNodeTTL is Config.NodeTTL's default.
const DefaultNodeTTL = 6 * time.Second

// Bounds of the presence writer.
const (
	// presenceChunk is how many scripts go in one pipeline.
	presenceChunk = 512
	// maxDirty bounds the keys waiting to be written: past it (Redis down
	// for long, with clients coming and going) they are dropped and the
	// next successful write rewrites the node's entries in full.
	maxDirty = 100_000
	// maxReap is how many dead nodes one heartbeat handles.
	maxReap = 16
)

type pkey struct{ ch, client string }

func (b *Broker) presenceKey(ch string) string { return b.prefix + ":{" + ch + "}:pr" }
func (b *Broker) nodesKey() string             { return b.prefix + ":nodes" }
func (b *Broker) nodeChansKey(n string) string {
	return b.prefix + ":nc:" + n
}
func (b *Broker) reapKey(n string) string { return b.prefix + ":reap:" + n }

func newNodeID() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(uint64(rand.Uint32()), 36)
}

// infoBlob is a client's presence entry: a publication blob without data.
func infoBlob(info codec.ClientInfo) string {
	return string(appendBlob(make([]byte, 0, 8+len(info.Client)+len(info.User)+len(info.Name)), &codec.Publication{Info: info}))
}

// Join implements hub.PresenceBroker: it queues the entry's write.
func (b *Broker) Join(ch string, info codec.ClientInfo) {
	blob := infoBlob(info)
	b.pmu.Lock()
	m := b.plocal[ch]
	if m == nil {
		m = make(map[string]string)
		b.plocal[ch] = m
	}
	m[info.Client] = blob
	b.dirtyLocked(pkey{ch, info.Client})
	b.pmu.Unlock()
	b.wakePresence()
}

// Leave implements hub.PresenceBroker: it queues the entry's removal.
func (b *Broker) Leave(ch string, info codec.ClientInfo) {
	b.pmu.Lock()
	if m := b.plocal[ch]; m != nil {
		delete(m, info.Client)
		if len(m) == 0 {
			delete(b.plocal, ch)
		}
	}
	b.dirtyLocked(pkey{ch, info.Client})
	b.pmu.Unlock()
	b.wakePresence()
}

// dirtyLocked marks k for writing; past maxDirty it asks for a resync
// instead. Called with pmu held.
func (b *Broker) dirtyLocked(k pkey) {
	if b.presync {
		return // the resync writes everything
	}
	if len(b.pdirty) >= maxDirty {
		clear(b.pdirty)
		b.presync = true
		return
	}
	b.pdirty[k] = struct{}{}
}

func (b *Broker) wakePresence() {
	select {
	case b.pwake <- struct{}{}:
	default:
	}
}

// Presence implements hub.PresenceBroker: the entries of the other nodes,
// in one HGETALL. Entries of a node that died are listed until they are
// reaped (within NodeTTL + NodeTTL/3 of its last heartbeat).
func (b *Broker) Presence(ctx context.Context, ch string) ([]codec.ClientInfo, error) {
	if err := b.check(); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	all, err := b.rdb.HGetAll(cctx, b.presenceKey(ch)).Result()
	if err != nil {
		return nil, cmdErr(ctx, err)
	}
	own := b.node + "|"
	out := make([]codec.ClientInfo, 0, len(all))
	for f, v := range all {
		if strings.HasPrefix(f, own) {
			continue // the hub lists its own clients itself, exactly
		}
		var p codec.Publication
		if decodeBlob([]byte(v), &p) != nil {
			b.log.Error("redisbroker: malformed presence entry", "channel", ch, "field", f)
			continue
		}
		out = append(out, p.Info)
	}
	return out, nil
}

// handlePresenceMsg delivers a "j:N:<blob>" or "l:N:<blob>" message of
// another node to the hub; this node's own are dropped (the hub pushed
// them to its listeners itself).
func (b *Broker) handlePresenceMsg(st *chanState, m []byte) {
	if b.phandler == nil {
		return
	}
	if len(m) < 2 || m[1] != ':' {
		b.log.Error("redisbroker: malformed presence message", "channel", st.ch)
		return
	}
	rest := m[2:]
	i := bytes.IndexByte(rest, ':')
	if i < 0 {
		b.log.Error("redisbroker: malformed presence message", "channel", st.ch)
		return
	}
	if string(rest[:i]) == b.node {
		return
	}
	var p codec.Publication
	if err := decodeBlob(rest[i+1:], &p); err != nil {
		b.log.Error("redisbroker: malformed presence message", "channel", st.ch, "err", err)
		return
	}
	b.presenceIn.Add(1)
	b.phandler.HandlePresence(st.ch, m[0] == 'j', p.Info)
}

// presenceLoop writes the node's presence changes until Close, retrying
// after a failure (50 ms doubling to 1 s).
func (b *Broker) presenceLoop() {
	defer b.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-b.stop:
			retry.Stop()
			return
		case <-b.pwake:
		case <-retry.C:
		}
		if err := b.flushPresence(); err != nil {
			if b.closed.Load() {
				return
			}
			if backoff == 50*time.Millisecond {
				b.log.Warn("redisbroker: presence not written; retrying", "err", err)
			}
			retry.Reset(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
	}
}

type presenceOp struct {
	k    pkey
	blob string // "" for a leave
	last bool   // leave: the node has no other entry in k.ch
}

// flushPresence writes what is dirty (or everything, after a resync was
// asked for). What it could not write is dirty again.
func (b *Broker) flushPresence() error {
	if b.crashed.Load() {
		return nil // a test's crash: the node writes nothing more
	}
	b.pmu.Lock()
	if b.presync {
		b.presync = false
		clear(b.pdirty)
		want := make(map[string]map[string]string, len(b.plocal))
		for ch, m := range b.plocal {
			cp := make(map[string]string, len(m))
			for c, v := range m {
				cp[c] = v
			}
			want[ch] = cp
		}
		b.pmu.Unlock()
		if err := b.resync(want); err != nil {
			b.pmu.Lock()
			b.presync = true
			b.pmu.Unlock()
			return err
		}
		b.resyncs.Add(1)
		return nil
	}
	if len(b.pdirty) == 0 {
		b.pmu.Unlock()
		return nil
	}
	ops := make([]presenceOp, 0, len(b.pdirty))
	for k := range b.pdirty {
		op := presenceOp{k: k}
		if m := b.plocal[k.ch]; m != nil {
			op.blob = m[k.client]
		}
		op.last = op.blob == "" && len(b.plocal[k.ch]) == 0
		ops = append(ops, op)
	}
	clear(b.pdirty)
	b.pmu.Unlock()

	for len(ops) > 0 {
		n := min(len(ops), presenceChunk)
		if err := b.writeOps(ops[:n]); err != nil {
			// Dirty again, unless a resync will write everything.
			b.pmu.Lock()
			for _, op := range ops {
				b.dirtyLocked(op.k)
			}
			b.pmu.Unlock()
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// writeOps runs one pipeline of join and leave scripts.
func (b *Broker) writeOps(ops []presenceOp) error {
	return b.pipelineScripts(func(ctx context.Context, pipe redis.Pipeliner) {
		for _, op := range ops {
			field := b.node + "|" + op.k.client
			keys := []string{b.presenceKey(op.k.ch), b.nodeChansKey(b.node)}
			if op.blob != "" {
				joinScript.EvalSha(ctx, pipe, keys, field, op.blob, b.pubsubKey(op.k.ch), b.node, op.k.ch, b.metaMS)
			} else {
				last := "0"
				if op.last {
					last = "1"
				}
				leaveScript.EvalSha(ctx, pipe, keys, field, b.pubsubKey(op.k.ch), b.node, op.k.ch, last)
			}
		}
	})
}

// presenceScripts are loaded again when Redis forgot them (NOSCRIPT).
var presenceScripts = []*redis.Script{joinScript, leaveScript, syncScript}

// pipelineScripts runs fill's EVALSHAs in one pipeline; on NOSCRIPT (Redis
// restarted) it loads the scripts and runs them again, which is safe: every
// presence script is idempotent.
func (b *Broker) pipelineScripts(fill func(ctx context.Context, pipe redis.Pipeliner)) error {
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*b.timeout)
		pipe := b.rdb.Pipeline()
		fill(ctx, pipe)
		_, err := pipe.Exec(ctx)
		if err != nil && try == 0 && strings.Contains(err.Error(), "NOSCRIPT") {
			for _, s := range presenceScripts {
				if err := s.Load(ctx, b.rdb).Err(); err != nil {
					cancel()
					return err
				}
			}
			cancel()
			continue
		}
		cancel()
		return err
	}
}

// resync makes Redis hold exactly want (channel -> client -> blob) as this
// node's entries: in every channel where the node has entries in Redis
// (its channel set) or wants some.
func (b *Broker) resync(want map[string]map[string]string) error {
	chans := make(map[string]struct{}, len(want))
	for ch := range want {
		chans[ch] = struct{}{}
	}
	if err := b.scanSet(b.nodeChansKey(b.node), func(ch string) { chans[ch] = struct{}{} }); err != nil {
		return err
	}
	list := make([]string, 0, len(chans))
	for ch := range chans {
		list = append(list, ch)
	}
	_, err := b.syncChannels(b.node, list, want, false)
	return err
}

// syncChannels runs syncScript for node in every channel of chans, making
// its entries there want[ch] (none when want is nil); with dead, only while
// node's heartbeat has expired. It returns the entries removed.
func (b *Broker) syncChannels(node string, chans []string, want map[string]map[string]string, dead bool) (int64, error) {
	check := "0"
	if dead {
		check = "1"
	}
	var removed int64
	for len(chans) > 0 {
		n := min(len(chans), presenceChunk)
		var cmds []*redis.Cmd
		err := b.pipelineScripts(func(ctx context.Context, pipe redis.Pipeliner) {
			cmds = cmds[:0]
			for _, ch := range chans[:n] {
				args := []any{node, b.pubsubKey(ch), check, b.metaMS, ch}
				for c, v := range want[ch] {
					args = append(args, c, v)
				}
				cmds = append(cmds, syncScript.EvalSha(ctx, pipe,
					[]string{b.presenceKey(ch), b.nodesKey(), b.nodeChansKey(node)}, args...))
			}
		})
		if err != nil {
			return removed, err
		}
		for _, c := range cmds {
			if v, err := c.Int64(); err == nil && v > 0 {
				removed += v
			}
		}
		chans = chans[n:]
	}
	return removed, nil
}

// scanSet calls f for every member of the set key.
func (b *Broker) scanSet(key string, f func(string)) error {
	var cursor uint64
	for {
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		members, next, err := b.rdb.SScan(ctx, key, cursor, "", 1000).Result()
		cancel()
		if err != nil {
			return err
		}
		for _, m := range members {
			f(m)
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// heartbeatLoop beats every NodeTTL/3 until Close.
func (b *Broker) heartbeatLoop() {
	defer b.wg.Done()
	every := max(b.nodeTTL/3, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		b.heartbeat()
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
	}
}

// heartbeat renews this node's heartbeat; when it had expired (or was
// gone), the node may have been reaped: it resyncs its entries. Otherwise
// it reaps the nodes whose heartbeat expired.
func (b *Broker) heartbeat() {
	if b.crashed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	res, err := heartbeatScript.Run(ctx, b.rdb, []string{b.nodesKey(), b.nodeChansKey(b.node)},
		b.node, b.nodeTTL.Milliseconds(), b.metaMS, maxReap).Slice()
	cancel()
	if err != nil || len(res) != 2 {
		return // Redis down: the link reports it; try again next beat
	}
	fresh, _ := res[0].(int64)
	dead, _ := res[1].([]any)
	if fresh != 1 {
		// Expired: everything this node wrote may have been removed. Its
		// view of the others is stale too, so it reaps nobody this time.
		b.pmu.Lock()
		b.presync = true
		clear(b.pdirty)
		b.pmu.Unlock()
		b.wakePresence()
		return
	}
	var nodes []string
	for _, d := range dead {
		if node, ok := d.(string); ok && node != b.node {
			nodes = append(nodes, node)
		}
	}
	// Reaping takes a round trip per 512 channels of the dead node: off
	// the heartbeat, which must not be late, and one at a time.
	if len(nodes) == 0 || !b.reaping.CompareAndSwap(false, true) {
		return
	}
	b.wg.Add(1) // the heartbeat goroutine holds one: Close has not returned
	go func() {
		defer b.wg.Done()
		defer b.reaping.Store(false)
		for _, node := range nodes {
			if b.closed.Load() {
				return
			}
			b.reap(node)
		}
	}()
}

// reap removes dead node's entries from every channel it had some in and
// publishes their leaves, then forgets the node, unless another node is at
// it already or node came back meanwhile.
func (b *Broker) reap(node string) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	ok, err := b.rdb.SetNX(ctx, b.reapKey(node), b.node, b.nodeTTL).Result()
	cancel()
	if err != nil || !ok {
		return
	}
	var chans []string
	if err := b.scanSet(b.nodeChansKey(node), func(ch string) { chans = append(chans, ch) }); err != nil {
		return
	}
	removed, err := b.syncChannels(node, chans, nil, true)
	b.reaped.Add(uint64(removed))
	if err != nil {
		return // the claim expires; a node retries after NodeTTL
	}
	ctx, cancel = context.WithTimeout(context.Background(), b.timeout)
	gone, _ := finishScript.Run(ctx, b.rdb, []string{b.nodesKey(), b.nodeChansKey(node)}, node).Int64()
	cancel()
	if removed > 0 || gone == 1 {
		b.log.Info("redisbroker: removed a dead node's clients from presence", "node", node, "entries", removed)
	}
}

// goodbye removes this node's entries at Close (leaves published) and its
// heartbeat, so that the other nodes need not wait for it to expire.
// Best effort: a node that cannot reach Redis is reaped instead.
func (b *Broker) goodbye() {
	if b.crashed.Load() || !b.up.Load() {
		return
	}
	var chans []string
	if err := b.scanSet(b.nodeChansKey(b.node), func(ch string) { chans = append(chans, ch) }); err != nil {
		return
	}
	if _, err := b.syncChannels(b.node, chans, nil, false); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	pipe := b.rdb.Pipeline()
	pipe.ZRem(ctx, b.nodesKey(), b.node)
	pipe.Del(ctx, b.nodeChansKey(b.node))
	_, _ = pipe.Exec(ctx)
}

var _ hub.PresenceBroker = (*Broker)(nil)

// heartbeatScript renews node ARGV[1]'s heartbeat to now + ARGV[2] ms
// (Redis's clock, so that nodes' clocks need not agree) and returns
// {fresh, dead}: fresh is 1 when the previous heartbeat had not expired,
// dead up to ARGV[4] nodes whose heartbeat has.
//
// KEYS: nodes zset, the node's channel set. ARGV: node, TTL ms, meta TTL ms
// (0: none), max dead.
var heartbeatScript = redis.NewScript(`
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('zscore', KEYS[1], ARGV[1])
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('pexpire', KEYS[1], ARGV[3])
  redis.call('pexpire', KEYS[2], ARGV[3])
end
local fresh = 0
if old and tonumber(old) >= now then fresh = 1 end
return {fresh, redis.call('zrangebyscore', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, tonumber(ARGV[4]))}
`)

// joinScript writes one entry and publishes its join (a leave of the old
// value first when it changed); nothing when Redis has it already.
//
// KEYS: presence hash, the node's channel set. ARGV: field, blob, pub/sub
// channel, node, channel, meta TTL ms (0: none). Returns 1 when written.
var joinScript = redis.NewScript(`
redis.call('sadd', KEYS[2], ARGV[5])
local old = redis.call('hget', KEYS[1], ARGV[1])
if old == ARGV[2] then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
if tonumber(ARGV[6]) > 0 then
  redis.call('pexpire', KEYS[1], ARGV[6])
  redis.call('pexpire', KEYS[2], ARGV[6])
end
if old then redis.call('publish', ARGV[3], 'l:' .. ARGV[4] .. ':' .. old) end
redis.call('publish', ARGV[3], 'j:' .. ARGV[4] .. ':' .. ARGV[2])
return 1
`)

// leaveScript removes one entry and publishes its leave; with ARGV[5] = 1
// (the node has no other entry in the channel) it takes the channel out of
// the node's channel set.
//
// KEYS: presence hash, the node's channel set. ARGV: field, pub/sub
// channel, node, channel, last. Returns 1 when removed.
var leaveScript = redis.NewScript(`
local old = redis.call('hget', KEYS[1], ARGV[1])
if ARGV[5] == '1' then redis.call('srem', KEYS[2], ARGV[4]) end
if not old then return 0 end
redis.call('hdel', KEYS[1], ARGV[1])
redis.call('publish', ARGV[2], 'l:' .. ARGV[3] .. ':' .. old)
return 1
`)

// syncScript makes node ARGV[1]'s entries in one channel exactly the
// client/blob pairs from ARGV[6] on, publishing a leave for each entry
// removed or changed and a join for each written. With ARGV[3] = 1 it does
// nothing (returns -1) unless the node's heartbeat has expired: a reaper
// and the node coming back cannot both win.
//
// KEYS: presence hash, nodes zset, the node's channel set. ARGV: node,
// pub/sub channel, check dead, meta TTL ms (0: none), channel, then client,
// blob pairs. Returns the entries removed or changed.
var syncScript = redis.NewScript(`
if ARGV[3] == '1' then
  local s = redis.call('zscore', KEYS[2], ARGV[1])
  if s then
    local t = redis.call('time')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if tonumber(s) >= now then return -1 end
  end
end
local p = ARGV[1] .. '|'
local want, nwant = {}, 0
for i = 6, #ARGV, 2 do
  want[p .. ARGV[i]] = ARGV[i + 1]
  nwant = nwant + 1
end
local all = redis.call('hgetall', KEYS[1])
local removed = 0
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, #p) == p then
    local w = want[f]
    if w == v then
      want[f] = false
    else
      if not w then redis.call('hdel', KEYS[1], f) end
      redis.call('publish', ARGV[2], 'l:' .. ARGV[1] .. ':' .. v)
      removed = removed + 1
    end
  end
end
for f, v in pairs(want) do
  if v then
    redis.call('hset', KEYS[1], f, v)
    redis.call('publish', ARGV[2], 'j:' .. ARGV[1] .. ':' .. v)
  end
end
if nwant > 0 then
  redis.call('sadd', KEYS[3], ARGV[5])
  if tonumber(ARGV[4]) > 0 then
    redis.call('pexpire', KEYS[1], ARGV[4])
    redis.call('pexpire', KEYS[3], ARGV[4])
  end
else
  redis.call('srem', KEYS[3], ARGV[5])
end
return removed
`)

// finishScript forgets a dead node once its entries are gone: its
// heartbeat and channel set, unless it came back meanwhile.
//
// KEYS: nodes zset, the node's channel set. ARGV: node. Returns 1 when
// forgotten.
var finishScript = redis.NewScript(`
local s = redis.call('zscore', KEYS[1], ARGV[1])
if s then
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(s) >= now then return 0 end
end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('del', KEYS[2])
return 1
`)
