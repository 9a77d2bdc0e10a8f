// Package engine owns fanout's sockets: the netpoll event loop that accepts
// and reads every connection, the WebSocket upgrade (gobwas/ws, inside the
// loop), the RFC 6455 frame reader, each connection's bounded write queue,
// closing, draining, and the ordinary HTTP endpoints of the same port, which
// it hands to net/http. Pub/sub lives in engine/hub, the protocol's encodings
// in codec; engine wires them to sockets.
//
// It must not import client or anything under cmd/.
//
// # Data path
//
//  1. accept: netpoll's poller accepts; onPrepare creates the Conn and
//     registers it. No goroutine, no timer: the sweeper enforces deadlines.
//  2. upgrade: onRequest looks for the end of the request head in the input
//     (pieces are kept in Conn.inbuf until it is complete, HandshakeTimeout
//     from accept). A request for /ws is upgraded by gobwas/ws reading that
//     head straight from netpoll's buffer; anything else is lent to net/http
//     through handoffListener.
//  3. read: onRequest never waits. It parses each complete frame in place
//     from netpoll's nocopy buffer, unmasks it in place and handles it; the
//     start of an incomplete frame is copied to Conn.inbuf (pooled), which
//     must complete within FrameTimeout of its first byte. All input is
//     always consumed, since netpoll calls OnRequest again while input
//     remains. Because it never waits, a busy connection's onRequest runs on
//     the poller goroutine itself (runCallback).
//  4. decode: codec.DecodeCommand, no allocation for the common commands.
//  5. publish: hub.Publish; the broker assigns the offset and stores history.
//  6. fan-out: hub shard workers encode each publication once per encoding
//     into a pooled wsframe.Frame and hand the same frame to every
//     subscriber with Conn.Send/SendBatch.
//  7. write: Conn queues frames and writes them with one non-blocking writev
//     right away; if the socket is full, one flusher goroutine takes over,
//     waits in netpoll's Flush (bounded by WriteTimeout) and empties the
//     queue. Past WriteQueueBytes the connection is closed 1008.
//  8. close: every close goes through CloseWith (close frame queued) or a
//     failed socket. Once the close frame is written the sending side is
//     shut down and the peer has CloseTimeout to close its side (closing
//     with its input unread would reset the connection and could destroy
//     the close frame before the peer reads it). Sockets are ended with
//     shutdown(2), never netpoll's Close: the poller sees the hang-up and
//     closes the connection from a goroutine of its own, and netpoll's close
//     callback runs Conn.onClosed exactly once, which frees the queue,
//     buffers, subscriptions and registry entry.
//
// # Ownership and lock order
//
// One reader per connection (onRequest, under Conn.rmu, which the sweeper
// also takes to trim a quiet connection's input) owns the read side and
// Conn.subs; netpoll never runs the close callback concurrently with it. Any
// goroutine may Send. Locks, outermost first: Conn.rmu, hub locks (see
// engine/hub), Conn.wmu, registryShard.mu. Conn.wmu is never held while
// calling into the hub.
//
// Code that runs on netpoll's poller goroutine (runCallback) never waits
// for the poller: no netpoll Close (it would free the connection's poller
// state from inside the poller's own callback, which waits forever), no
// netpoll Flush (the flusher goroutine does that), no Detach (the handshake
// runs in the pool). hub.Publish may wait for a shard's queue to shrink
// (backpressure); shard workers never wait for a socket, so that ends.
//
// # Tuning netpoll
//
// netpoll's defaults suit RPC; for many mostly idle sockets:
//
//   - Reads of up to 16 KiB (BufferSize). The size is above netpoll's page
//     size (8 KiB) on purpose: only then does netpoll's Release replace an
//     emptied input node with an empty one, so an idle connection keeps no
//     input buffer (at or below a page it keeps the node: 8 KiB per idle
//     connection with netpoll's defaults).
//   - Callbacks of busy connections (a read less than 50 ms after the
//     previous, twice in a row) run on the poller; others, and every
//     handshake, in netpoll's goroutine pool. A goroutine hand-off per
//     message cost more than the message; but netpoll drops the emptied node
//     only on a Release off the poller, so a busy connection keeps its node
//     until it has been quiet for a second and the sweeper trims it. An idle
//     connection holds no goroutine either way.
//   - GOMAXPROCS/2 pollers: they now also run handlers.
//   - Writes bypass netpoll's output buffer on the fast path (direct writev
//     on the socket); netpoll's writer is used only by a flusher waiting for
//     a full socket. netpoll itself is patched (third_party/netpoll) to take
//     its writev barrier (~1.3 KB) per flush instead of holding one for each
//     connection's life.
//
// netpoll's runner is process-wide: a process that embeds the engine serves
// other netpoll users' callbacks from its pool, as netpoll would.
//
// # Designed for what comes next
//
//   - permessage-deflate: a publication is compressed once per encoding, next
//     to its plain frame (wsframe.Frame carries whole frames, so a compressed
//     one is just another frame with RSV1 set); parseHeader then accepts RSV1
//     on connections that negotiated the extension in the upgrader's
//     Negotiate callback.
//   - JWT auth and limits: the upgrader's OnRequest/OnHeader callbacks already
//     see the query string and headers before the 101; a token check returns
//     a ws.RejectConnectionError with 401, and the claims land in
//     Conn.info.User and a per-connection permission set consulted by
//     protocol.go. Rate limits hang off the same Conn.
//   - TLS: netpoll has no TLS; the plan is TLS termination in front (or a
//     crypto/tls listener feeding the same handler with a goroutine per
//     connection, opt-in), keeping the event loop for plain sockets.
//   - A NATS cluster: hub.Broker is the seam; engine does not change.
package engine
