// Package hub owns fanout's channels: who is subscribed where, the sharded
// broadcaster that fans each publication out to every subscriber, presence
// (who is in a channel, join and leave pushes), history and recovery, and
// the Broker interface through which publications enter and leave the
// node, with its in-memory implementation (NewMemoryBroker, the default).
//
// It must not import engine (engine imports hub) or any networking
// package: a connection is a Subscriber, something that accepts complete
// frames (wsframe) without blocking. It uses codec to encode replies and
// pushes and wsframe to hold them.
//
// # Fan-out
//
// Every subscriber belongs to one shard (a hash of its identity), and every
// shard has one worker goroutine and an input queue. A channel's
// subscribers are spread over the shards, so the fan-out of one
// publication to 100k subscribers runs on every core without a global
// lock. The broadcaster encodes a publication once per encoding that has
// subscribers into a complete WebSocket frame (wsframe), queues it to each
// shard holding subscribers of the channel with one frame reference each,
// and returns. A worker takes one more reference per subscriber with a
// single Retain, then hands the same frame to every subscriber; a worker
// that drained several publications of a channel at once hands them to
// each subscriber with one SendBatch (one writev). Nothing on this path
// allocates per subscriber, and Send never blocks, so a slow subscriber
// delays nobody.
//
// # Ordering
//
// Per channel, every subscriber sees publications in offset order, one
// apart, with no gap and no duplicate, and its subscribe reply first:
//
//  1. The Broker delivers a channel's publications to the hub in offset
//     order (the memory broker calls the handler under the channel's lock,
//     right after storing the publication in history). Under the hub
//     channel's lock the broadcaster pushes each one into every relevant
//     shard queue.
//  2. Subscribe, under the same lock, pushes an "add" op into the
//     subscriber's shard queue: the worker buffers every publication queued
//     after it for that subscriber.
//  3. With no lock held, Subscribe reads the channel's position (and the
//     history to recover) from the Broker. A publication queued before the
//     "add" op had been stored before it, so it is at or below the position
//     read; one above it is buffered or still to come. While the node
//     follows the channel without a break the read is skipped: the
//     position the channel's lock saw at the "add" op (the newest
//     publication broadcast, or the first position read since the
//     interest began: channel.newest) has the same two properties, so a
//     subscribe, or a recovery from exactly that position, costs the
//     broker nothing.
//  4. With no lock held, Subscribe encodes the reply and sends it with
//     Subscriber.Send, then, under the channel's lock, pushes an
//     "activate" op: the worker sends what it buffered above the position
//     (dropping the rest) and delivers live from then on.
//
// Presence pushes (join and leave) go through the same queues: under the
// channel's lock, a join or leave is encoded once per encoding its
// listeners use and queued to every shard holding a listener, and the
// worker hands it to the shard's listeners in queue order with the
// channel's publications. So, per channel and subscriber:
//
//   - a presence push and a publication arrive in the order they were
//     queued (a join queued by a Subscribe that completed before a
//     publication was stored arrives before that publication);
//   - a subscriber becomes a listener with its "add" op, before its reply
//     is sent; its shard keeps the pushes queued after that op with its
//     buffered publications and hands them over after the reply, at
//     "activate": every presence push it gets follows its reply, and it
//     misses no join or leave of anyone who subscribes or leaves after it
//     has read its reply (a listener counted only from "activate" missed
//     the joins that came between its reply and its activation). A join
//     queued before the "add" op is not sent to it, but that client was
//     already present, so it is in the Presence snapshot the subscriber
//     can ask for afterwards. A listener's own join is queued after its
//     "activate" op (it gets it); its own leave after its "remove" op (it
//     does not);
//   - joins and leaves arrive in the order their Subscribe and
//     Unsubscribe calls queued them.
//
// Unsubscribe pushes a "remove" op the same way: nothing published after
// Unsubscribe returns reaches the subscriber.
//
// # Backpressure
//
// Backpressure is per channel: a channel whose publications queued to the
// shards and not yet handed out by all of them exceed a bound
// (maxPendingPubs) is backlogged. Publish then waits (bounded by its
// context) and TryPublish returns ErrBackpressure at once; a publish to a
// channel that is not backlogged never waits, whatever other channels do.
// With the memory broker the queues thus hold a bounded number of
// publications per channel with subscribers. With a cluster broker the
// bound holds for what this node publishes; publications entering by other
// nodes are broadcast as they arrive (docs/CLUSTER.md, "Left to do").
//
// # Size bounds
//
// Publish refuses data larger than Config.MaxPublicationBytes in either
// encoding (ErrTooLarge). Subscribe and history replies are bounded by
// Config.MaxReplyBytes: a history reply keeps the newest publications that
// fit; a recovery whose publications do not fit answers recovered:false
// with none and the newest position, so that no reply frame grows with
// what the history holds.
//
// # Lock order
//
// Locks are taken in this order, never the reverse:
//
//	channel.subMu        membership changes and broker interest of one channel
//	  Broker             memory broker: brokerBucket.mu, then memChannel.mu, then MemoryBroker.lruMu (leaf)
//	    channel.mu       broadcast (inside the broker's HandlePublication), add/activate/remove, presence
//	      shard.mu       a shard's queue (leaf)
//
// The registry's hubBucket.mu is a leaf: it is never held while taking any
// other lock, and neither is channel.roomMu (backpressure waiters). The hub
// never calls the Broker with channel.mu held, which is what lets the
// memory broker call HandlePublication with its channel lock held; the
// memory broker evicts other channels' history only after releasing the
// publishing channel's lock. The one exception is a PresenceBroker's Join
// and Leave, called with channel.mu held so that it sees one member's join
// and leave in order: they must only queue, never wait or call back.
//
// With a PresenceBroker (the Redis broker), Presence merges the local
// members with the other nodes' and their joins and leaves reach this
// node's listeners through HandlePresence. Subscriber.Send and SendBatch are called by
// shard workers (publications, presence pushes) with no hub lock held, and
// by Subscribe (its reply) with no lock held; still, a Subscriber must
// never call back into the Hub from them.
//
// # Lifetimes
//
// A hub channel exists while it has subscribers or a call is using it; the
// memory broker keeps a channel's history (and its epoch) while the hub has
// an interest in it or while it still holds publications. History is
// bounded by age (Config.HistoryTTL, 5 minutes by default: a janitor frees
// the history of channels nobody published to for that long, without
// anybody touching them), by bytes for all channels together
// (Config.HistoryBytes) and by the number of channels holding history
// (Config.HistoryChannels); a channel left with neither history nor
// interest is forgotten. Neither leaks idle channels. Evicted or expired
// history is always a channel's oldest publications, so a recovery that
// reaches into it answers recovered:false, never a silent gap.
package hub
