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
//     read; one above it is buffered or still to come.
//  4. Subscribe sends the reply with Subscriber.Send, then pushes an
//     "activate" op: the worker sends what it buffered above the position
//     (dropping the rest) and delivers live from then on.
//
// Unsubscribe pushes a "remove" op the same way: nothing published after
// Unsubscribe returns reaches the subscriber.
//
// # Lock order
//
// Locks are taken in this order, never the reverse:
//
//	channel.subMu        membership changes and broker interest of one channel
//	  Broker             memory broker: brokerBucket.mu, then memChannel.mu
//	    channel.mu       broadcast (inside the broker's HandlePublication), add/activate/remove
//	      shard.mu       a shard's queue (leaf)
//
// The registry's hubBucket.mu is a leaf: it is never held while taking any
// other lock. The hub never calls the Broker with channel.mu held, which is
// what lets the memory broker call HandlePublication with its channel lock
// held. Subscriber.Send and SendBatch may be called with channel.subMu or
// channel.mu held (subscribe replies are sent with no lock held; presence
// pushes and publications with hub locks or none), so a Subscriber must
// never call back into the Hub from them.
//
// # Lifetimes
//
// A hub channel exists while it has subscribers or a call is using it; the
// memory broker keeps a channel's history (and its epoch) while the hub has
// an interest in it or while it still holds publications not expired by
// HistoryTTL. Neither leaks idle channels.
package hub
