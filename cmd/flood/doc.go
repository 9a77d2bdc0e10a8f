// Command flood is fanout's connection-flood and load tool. It opens many
// WebSocket connections (100k+ from one command, over several processes)
// to a fanout server or to a raw WebSocket peer (bench/peers) and measures
// connection setup, throughput, loss and latency.
//
// Usage:
//
//	flood MODE [flags]            (or flood --mode MODE [flags])
//	flood --help
//
// # Modes
//
//   - connect: ramp --conns connections at --connect-rate per second, hold
//     them for --duration. Reports handshake time percentiles (TCP connect,
//     TLS and upgrade) and failures by cause (refused, timeout, status_NNN,
//     bad_handshake, eof, reset, addr_unavailable, too_many_files, ...) and
//     connections lost while held (close_NNNN, eof, ...).
//   - broadcast: --conns subscribers on --channel and --publishers
//     publishers sending --rate messages per second in total (--rate 0: as
//     fast as each publisher's window of --inflight unacknowledged
//     publishes allows) of --size bytes for --duration. Publishing starts
//     only once every subscriber of every process is subscribed. Reports
//     deliveries per second, loss (expected = accepted publishes x measured
//     subscribers) and end-to-end latency p50/p90/p99/p99.9/max: the
//     publisher puts its send time (unix nanoseconds) in the message; all
//     clients run on one machine, so the clocks agree.
//   - echo: every connection keeps --inflight messages of --size bytes in a
//     closed loop. Reports echoes per second and round-trip percentiles.
//     raw: the server echoes (fanout's --echo mode or a peer in echo mode);
//     fanout protocols: each connection subscribes to its own channel
//     <channel>.echo.<index> and publishes to it.
//   - churn (fanout protocols): broadcast, and every second --churn-pct of
//     the subscribers close, reconnect and resubscribe with recover from
//     the last offset they saw. Offsets are checked across live pushes and
//     recovered publications: any gap (or recovered=false, or a changed
//     epoch) is a failure and makes the exit status 3.
//   - slow: broadcast where --slow-pct of the subscribers subscribe and
//     then stop reading (socket receive buffer --slow-rcvbuf). The others'
//     latency is reported on its own; after the load phase the slow ones
//     read again to learn whether the server shed them (close 1008),
//     dropped them otherwise, or kept them open.
//
// # Protocols
//
// --protocol fanout-json and fanout-msgpack speak fanout's protocol
// (PROTOCOL.md) with subprotocol fanout.v1.json or fanout.v1.msgpack: a
// subscriber sends {"op":"subscribe","channel":C,"id":N} and counts as
// ready on the reply; a publisher sends {"op":"publish","channel":C,
// "id":N,"data":{"t":<unix nanos>,"p":"<padding>"}} with the data padded to
// --size bytes and its reply acknowledges it; subscribers time the "pub"
// pushes. Other pushes (connected, ...) are ignored. A subscribe answered
// with the "unavailable" error (a cluster node whose broker did not answer
// in time) is sent again after a pause (100 ms, doubling to 2 s, with
// jitter) until --connect-timeout, as a client would; the table counts the
// retries on its "ready" line.
//
// --protocol raw sends plain binary WebSocket messages: an 8-byte
// big-endian send time in unix nanoseconds, a 4-byte publisher tag, then
// padding to --size (so --size >= 12; echo: >= 8). In broadcast the server
// relays each message to every connection (bench/peers); a publisher's own
// copy acknowledges it. Before the load starts the first publisher sends
// probes (time 0) until every subscriber has received one, since a raw
// server registers connections some time after the upgrade.
//
// # Scale
//
// Plain ws:// connections are netpoll connections read event-driven: no
// goroutine per socket; when bytes arrive netpoll's poller runs the frame
// reader itself (in echo mode, which sends from the reader, a pool
// goroutine does). The reader never blocks and handles pub pushes without
// allocating; one read takes up to 4 KiB, so several frames when the
// server coalesces them. Each process holds up to its open-file limit
// minus a reserve (on a machine with a limit of 20,000 that is about
// 19,800 sockets). wss:// and the non-reading subscribers of slow mode use
// a net.Conn and, while reading, a goroutine each. The hidden flag
// --cpuprofile FILE makes each process write a CPU profile of its load
// phase to FILE.<worker index>.
//
// --procs K (default 0: as many as the open-file limit needs) re-executes
// the flood binary K times as worker processes (hidden flag
// --worker-index). Connections and the connect rate are split evenly;
// worker 0 also holds the publishers. The coordinator talks to each worker
// over its stdin/stdout, one JSON object per line (config, ready, start,
// stop, finish, progress, result), so that every subscriber is connected
// before publishing starts, and merges their results (histograms through
// hdrhistogram snapshots, time series by second). Workers exit when their
// stdin closes, die with the coordinator (PDEATHSIG) and are killed by PID
// if still running at the end.
//
// One source address reaches one destination from at most the ephemeral
// port range (about 28k ports). --source-ips 127.0.0.1,127.0.0.2 or
// --source-ips 127.0.0.1-127.0.0.8 binds connection i to address i mod n,
// giving n times as many ports (any 127.x.y.z works on loopback).
//
// # Bounds
//
// Every run stops by itself: the connect phase is bounded by the ramp
// time plus --connect-timeout (which also bounds each handshake and each
// subscribe reply), the load phase by --duration, the drain by --drain,
// and the whole run by --deadline (default: ramp + 2 x connect-timeout +
// duration + drain + 30s). SIGINT or SIGTERM stops early and still prints
// results; a second one kills at once.
//
// # Output
//
// A live progress line on stderr while stderr is a terminal (--progress),
// the final table on stdout, --json FILE (every result, per-second time
// series and the latency distribution; durations in "settings" are in
// nanoseconds) and --report FILE.html: one
// self-contained page (no scripts, no external resources) with SVG charts
// of connections, throughput and p50/p99 latency over time, the latency
// and handshake distributions, and the settings. The table includes the
// flood processes' own CPU time (getrusage of self and children) per
// delivered message and their peak RSS. Connections that connected but
// never became ready (no subscribe reply within --connect-timeout, an
// error reply, or, in raw broadcast, no probe received) are listed as
// "not ready" and not measured. Latency is measured only at subscribers
// that were ready when the load phase started; when flood itself uses
// most of the machine's CPU the table says so, since its own queueing is
// then part of the latency.
//
// Exit status: 0 done, 1 the run could not be carried out, 2 bad usage,
// 3 a correctness failure (churn gaps or recover failures).
//
// Example:
//
//	flood broadcast --url ws://127.0.0.1:8080/ws --protocol fanout-json \
//	    --conns 100000 --connect-rate 5000 --source-ips 127.0.0.1-127.0.0.4 \
//	    --publishers 4 --rate 2000 --size 256 --duration 30s --report run.html
package main
