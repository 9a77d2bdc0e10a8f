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
//     Near RLIMIT_NOFILE a socket is answered 503 and closed instead
//     (admission.go), so health checks and the admin port keep descriptors.
//  2. upgrade: onRequest looks for the end of the request head in the input
//     (pieces are kept in Conn.inbuf until it is complete, HandshakeTimeout
//     from accept). A request for /ws is upgraded by gobwas/ws reading that
//     head straight from netpoll's buffer; anything else is lent to net/http
//     through handoffListener. A later upgrade on a connection net/http
//     serves (a proxy's kept-alive upstream connection) is handed back to
//     a second event loop and upgraded there the same way (proxy.go).
//  3. read: onRequest never waits. It parses each complete frame in place
//     from netpoll's nocopy buffer, unmasks it in place and handles it; the
//     start of an incomplete frame is copied to Conn.inbuf (pooled), which
//     must complete within FrameTimeout of its first byte; so must a
//     fragmented message, from its first fragment to its final one, and
//     all connections together hold at most MaxReassemblyBytes of both. All input is
//     always consumed, since netpoll calls OnRequest again while input
//     remains. Because it never waits, a busy connection's onRequest runs on
//     the poller goroutine itself (runCallback).
//  4. decode: codec.DecodeCommand, no allocation for the common commands.
//  5. publish: hub.Publish; the broker assigns the offset and stores history.
//  6. fan-out: hub shard workers encode each publication once per encoding
//     into a pooled wsframe.Frame and hand the same frame to every
//     subscriber with Conn.Send/SendBatch.
//  7. write: Conn queues frames and writes them with one non-blocking writev
//     right away; if the socket is full, the write poller (wpoll.go, one
//     goroutine and an epoll set of its own) waits for it to drain and
//     writes the rest. Past WriteQueueBytes of backlog behind the frame being
//     written the connection is closed 1008; a socket that takes nothing for
//     WriteTimeout is dropped.
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
// also takes to trim a quiet connection's input, and onClosed to mark it
// closed) owns the read side and Conn.subs; netpoll never runs the close
// callback concurrently with onRequest. Any goroutine may Send. Locks,
// outermost first: Conn.rmu, hub locks (see engine/hub), Conn.wmu, then the
// leaves writePoller.mu, timingWheel.mu and registryShard.mu. Conn.wmu is
// never held while calling into the hub. Every lock is released by a defer
// or on a path that cannot panic, so a panic (recovered by onRequest, the
// write poller or the sweeper) never leaves one held.
//
// # The write side
//
// The write side of a connection is one state machine, Conn.wstate, with
// Conn.queue, partial and queued, all under Conn.wmu. Every write is a
// non-blocking writev made with wmu held, by whoever holds it: frame bytes
// are never handed to netpoll's output buffer, so once the writev returns
// no one references them and the frame can be released (there is no flush
// in flight that a close could race, and no frame to abandon).
//
//	state     accepts frames  who writes                    leaves to
//	wOpen     yes             the sender, or the write      wClosing: CloseWith / reject / slow consumer
//	                          poller while armed            wDead: write error, closeSocket, onClosed
//	wClosing  no              same                          wShut: queue written (shutdown SHUT_WR)
//	                                                        wDead: as above
//	wShut     no              nobody                        wDead: closeSocket (CloseTimeout), onClosed
//	wDead     no              nobody; queue empty           (final)
//
// Transitions and their owners:
//   - Send/SendBatch (any goroutine): in wOpen, append; if the write poller
//     is not armed, writev now. A writev that leaves bytes arms the poller
//     (Conn.armed: from then on only the poller writes, keeping the order)
//     and starts blockedSince. A backlog over WriteQueueBytes behind the
//     frame being written queues the close 1008 (wClosing); a frame already
//     started is always finished first, so the stream stays valid.
//   - write poller (onWritable): the socket has room: disarm, writev, and
//     arm again if bytes are left. In wClosing an empty queue shuts the
//     sending side down (wShut) and the peer gets CloseTimeout to close.
//   - sweeper: drops (closeSocket: wDead, shutdown of both directions) a
//     socket blocked for WriteTimeout, a peer that did not close within
//     CloseTimeout, and the other timeouts below.
//   - onClosed (netpoll's close callback, before netpoll closes the fd):
//     wDead, the fd released (no system call touches it after), the socket
//     removed from the write poller's epoll set, the queue freed.
//
// # Relied-on netpoll behaviour
//
// Pinned by netpoll_pin_test.go; an update of third_party/netpoll must keep
// them or change the engine:
//   - the close callback runs before the descriptor is closed and the
//     connection's buffers are freed, and never concurrently with OnRequest;
//   - close and hang-up callbacks run on a goroutine other than the
//     poller's;
//   - a Release off the poller of an emptied input drops its node (idle
//     connections keep no input buffer);
//   - netpoll's Writer does not copy chunks over 4 KiB (the reason the
//     engine never hands it frame bytes);
//   - third_party's patches (third_party/README.md): SetInputLimit stops
//     reading a socket while that much input is unread (ReadAheadBytes) and
//     a Release resumes it (readahead_test.go); the listener closes its
//     descriptor once; the writev barrier is taken per flush; accepted
//     sockets, the epoll set and its eventfd are close-on-exec
//     (TestNetpollAcceptsCloseOnExec).
//   - netpoll removes its listener from its epoll set by descriptor number
//     when the event loop shuts down, and every event loop of the process
//     shares that set: the engine closes the listening socket early
//     (stopAccepting, at the start of a drain) without freeing that number
//     (TestDrainLeavesOtherEventLoopsAlone).
//
// Code that runs on netpoll's poller goroutine (runCallback) never waits:
// no netpoll Close (it would free the connection's poller state from inside
// the poller's own callback, which waits forever), no netpoll Flush (the
// engine never uses netpoll's writer), no Detach (the handshake runs in the
// pool), and no hub call that waits (a publish to a backlogged channel is
// answered rate_limited instead). A client that sends faster than its
// commands are processed is not read further (ReadAheadBytes): its own TCP
// window slows it, not the poller.
//
// # Timers
//
// The sweeper (sweep.go) is the server's one timer: a timing wheel in
// which every connection sits in the slot of its next deadline, so a tick
// costs what is due, not the number of connections.
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
//     only on a Release off the poller (and not always from the pool: the
//     task can run before the poller is done with the event), so every
//     connection that read is trimmed by the sweeper once it has been quiet
//     for a second. An idle connection holds no goroutine and no input
//     buffer either way.
//   - GOMAXPROCS/2 pollers: they now also run handlers.
//   - Writes bypass netpoll's output buffer entirely (direct writev on the
//     socket; the write poller for full sockets). netpoll itself is patched
//     (third_party/netpoll) to take its writev barrier (~1.3 KB) per flush
//     instead of holding one for each connection's life, and to pause
//     reading a connection whose unread input is over a bound.
//
// netpoll's runner is process-wide: a process that embeds the engine serves
// other netpoll users' callbacks from its pool, as netpoll would.
//
// # Compression
//
// permessage-deflate (RFC 7692) is negotiated in the upgrader's Negotiate
// callback (engine/deflate): always with server_no_context_takeover and
// client_no_context_takeover, so no connection holds compression state.
// The hub compresses a publication once per encoding, next to its plain
// frame (a compressed frame is just another wsframe.Frame, RSV1 set), and
// every subscriber that negotiated compression shares it; replies and
// echoes are compressed per connection (Conn.sendData). parseHeader
// accepts RSV1 on the first frame of a data message of such a connection;
// readFrames inflates the whole message (inflateMessage) with a pooled
// decompressor, bounded by MaxMessageBytes on the inflated size.
//
// A cluster broker: hub.Broker is the seam; engine does not change.
//
// # Security
//
// Upgrades pass admission (admission.go: origin, connection and per-address
// limits, memory) and then authentication (authn.go: JWT at the upgrade or
// by the connect command; Conn.authn holds the permissions protocol.go
// checks). TLS (tls.go): netpoll has no TLS, so a crypto/tls front owns the
// port and hands the event loop the other end of a socketpair per
// connection, as if accepted; the data path above is unchanged, and with
// TLS off the front does not exist. docs/SECURITY.md is the threat model.
package engine
