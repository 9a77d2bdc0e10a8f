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
//  1. accept: netpoll's poller accepts; onPrepare creates the Conn, arms the
//     handshake deadline and registers it. No goroutine is started.
//  2. upgrade: on the first input, onRequest peeks (without consuming) until
//     the request head is complete. A request for /ws is upgraded by
//     gobwas/ws reading that head straight from netpoll's buffer; anything
//     else is lent to net/http through handoffListener.
//  3. read: onRequest parses each frame in place from netpoll's nocopy
//     buffer (Peek/Skip/Release), unmasks it in place and handles it before
//     releasing it; a started frame is awaited with Peek, bounded by
//     FrameTimeout, because returning with unread input makes netpoll spin.
//  4. decode: codec.DecodeCommand, no allocation for the common commands.
//  5. publish: hub.Publish; the broker assigns the offset and stores history.
//  6. fan-out: hub shard workers encode each publication once per encoding
//     into a pooled wsframe.Frame and hand the same frame to every
//     subscriber with Conn.Send/SendBatch.
//  7. write: Conn queues frames and writes them with one non-blocking writev
//     right away; if the socket is full, one flusher goroutine takes over,
//     waits in netpoll's Flush (bounded by WriteTimeout) and empties the
//     queue. Past WriteQueueBytes the connection is closed 1008.
//  8. close: every close goes through CloseWith (close frame queued, socket
//     closed once written) or a failed socket; netpoll's close callback runs
//     Conn.onClosed exactly once, which frees the queue, reassembly buffer,
//     subscriptions and registry entry.
//
// # Ownership and lock order
//
// One reader per connection (the onRequest goroutine) owns the read side and
// Conn.subs; netpoll never runs the close callback concurrently with it. Any
// goroutine may Send. Locks, outermost first: hub locks (see engine/hub),
// then Conn.wmu, then registryShard.mu. Conn.wmu is never held while calling
// into the hub.
//
// # Tuning netpoll
//
// netpoll's defaults suit RPC. For many mostly idle sockets: the first input
// buffer node is 1 KiB instead of 8 KiB (LinkBufferCap and BufferSize), since
// each idle connection keeps it; one poller per four cores, because pollers
// only move bytes and hand work to goroutines; netpoll's goroutine pool runs
// onRequest, so an idle connection holds no goroutine. Writes bypass
// netpoll's output buffer on the fast path (direct writev on the socket), so
// its 32-entry barrier is only used by a flusher waiting for a full socket.
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
