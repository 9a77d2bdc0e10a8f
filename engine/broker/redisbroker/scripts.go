package redisbroker

import "github.com/redis/go-redis/v9"

// Key layout of channel C under prefix P (docs/CLUSTER.md):
//
//	P:{C}:m   hash   e = epoch, o = newest offset           (PEXPIRE MetaTTL)
//	P:{C}:s   stream entry "<offset>-0" with field d = blob (MAXLEN HistorySize, PEXPIRE HistoryTTL)
//	P:p:C     pub/sub channel: "<offset>:<epoch>:<blob>"
//
// Both keys of a channel share the hash tag {C}, so that the scripts below
// touch one slot. Offsets are the stream IDs, so a history read from an
// offset is one XRANGE. Presence keys and scripts are in presence.go.

// publishScript assigns the next offset, stores the publication and
// publishes it, in one step: Redis runs a script alone, so every node sees
// one offset sequence per channel, stored before delivered, published in
// offset order.
//
// KEYS: meta, stream. ARGV: blob, epoch to start when the channel has none,
// history size (0: keep none), history TTL ms (0: none), meta TTL ms (0:
// none), pub/sub channel. Returns {offset, epoch}.
var publishScript = redis.NewScript(`
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', e, 'o', 0)
end
local o = redis.call('hincrby', KEYS[1], 'o', 1)
local os = string.format('%d', o)
if tonumber(ARGV[3]) > 0 then
  redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[3], os .. '-0', 'd', ARGV[1])
  if tonumber(ARGV[4]) > 0 then
    redis.call('pexpire', KEYS[2], ARGV[4])
  end
end
if tonumber(ARGV[5]) > 0 then
  redis.call('pexpire', KEYS[1], ARGV[5])
end
redis.call('publish', ARGV[6], os .. ':' .. e .. ':' .. ARGV[1])
return {o, e}
`)

// positionScript returns the channel's epoch and newest offset, starting an
// epoch when the channel has none (Subscribe does that, as the memory
// broker does), and refreshes the meta TTL.
//
// KEYS: meta, stream. ARGV: epoch to start, meta TTL ms (0: none).
// Returns {epoch, offset}.
var positionScript = redis.NewScript(`
local e = redis.call('hget', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', e, 'o', 0)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return {e, redis.call('hget', KEYS[1], 'o')}
`)

// historyScript reads the position and publications atomically.
//
// KEYS: meta, stream. ARGV: since offset (” for none), limit (< 0 all, 0
// none), expected epoch (” not compared: when set and different, since is
// ignored and everything held is returned, for a node catching up across an
// epoch change). Returns {epoch, offset, entries, reversed}; a channel
// without meta is {”, '0', {}, 0}. Entries are XRANGE replies (XREVRANGE,
// newest first, when reversed is 1).
var historyScript = redis.NewScript(`
local m = redis.call('hmget', KEYS[1], 'e', 'o')
if not m[1] then
  return {'', '0', {}, 0}
end
local lim = tonumber(ARGV[2])
if lim == 0 then
  return {m[1], m[2], {}, 0}
end
local since = ARGV[1]
if ARGV[3] ~= '' and ARGV[3] ~= m[1] then
  since = ''
end
if since ~= '' then
  local s = tonumber(since)
  if s >= tonumber(m[2]) then
    return {m[1], m[2], {}, 0}
  end
  local from = string.format('%d', s + 1)
  if lim > 0 then
    return {m[1], m[2], redis.call('xrange', KEYS[2], from, '+', 'COUNT', lim), 0}
  end
  return {m[1], m[2], redis.call('xrange', KEYS[2], from, '+'), 0}
end
if lim > 0 then
  return {m[1], m[2], redis.call('xrevrange', KEYS[2], '+', '-', 'COUNT', lim), 1}
end
return {m[1], m[2], redis.call('xrange', KEYS[2], '-', '+'), 0}
`)

// resetScript starts a new epoch for a channel whose offset went back in
// its epoch: Redis lost acknowledged writes (a crash with appendfsync
// everysec) and would otherwise hand out offsets that clients have seen
// already, which they would drop as duplicates. A node that delivered
// offset ARGV[2] in epoch ARGV[1] and finds a lower one calls it; it does
// nothing when the epoch has moved on already (another node reset it).
//
// KEYS: meta, stream. ARGV: epoch, offset seen, new epoch, meta TTL ms.
// Returns {epoch, offset}.
var resetScript = redis.NewScript(`
local m = redis.call('hmget', KEYS[1], 'e', 'o')
if m[1] == ARGV[1] and tonumber(m[2]) < tonumber(ARGV[2]) then
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', ARGV[3], 'o', 0)
  if tonumber(ARGV[4]) > 0 then
    redis.call('pexpire', KEYS[1], ARGV[4])
  end
  return {ARGV[3], '0'}
end
return {m[1] or '', m[2] or '0'}
`)
