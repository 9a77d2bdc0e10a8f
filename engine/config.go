package engine

import (
	"log/slog"
	"time"

	"github.com/fanout-dev/fanout/engine/hub"
)

// Config configures a Server. The zero value works: every field documents
// the default New fills in.
type Config struct {
	// Addr is the TCP address to listen on. If empty, ":8080".
	Addr string
	// ReusePort sets SO_REUSEPORT on the listener so that several processes
	// can share one port. Default false.
	ReusePort bool

	// MaxMessageBytes is the largest message (after reassembly of
	// fragments) a client may send; larger ones close the connection 1009.
	// If zero, 1 MiB; at most 1 GiB.
	MaxMessageBytes int
	// MaxReassemblyBytes bounds the bytes that all connections together
	// hold for messages that have not fully arrived: the fragments of
	// messages being reassembled, and the start of frames larger than one
	// read (16 KiB) whose rest is still on its way. A fragment or read that
	// would pass it closes its connection 1009 "message too big for the
	// server's reassembly budget" (the server cannot take the message now;
	// the client broke no rule, which 1008 would say). If zero, 256 MiB;
	// negative: no bound.
	MaxReassemblyBytes int
	// MaxSubscriptionsPerConn bounds the channels one connection may be
	// subscribed to; a subscribe past it gets the error too_large. If zero,
	// 1024; negative: no limit.
	MaxSubscriptionsPerConn int
	// CommandRate is how many commands per second one connection may send
	// on average, CommandBurst how many it may send at once (a token
	// bucket per connection, refilled lazily at each command: no timer).
	// A command over the limit gets the error rate_limited; a connection
	// whose rate-limited commands outnumber its accepted ones by 256
	// (sustained sending at over twice the rate, ignoring the errors) is
	// closed 1008 "rate limit exceeded". Ping and pong frames are not
	// commands, nor are messages in Echo mode. If zero, 100 per second and
	// a burst of 200; CommandRate negative: no limit.
	CommandRate  float64
	CommandBurst int
	// IdleTimeout closes a connection (1001) that sent no frame for this
	// long; a ping is sent half-way through. If zero, 60 s.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the time from accept to a complete upgrade
	// request. If zero, 5 s.
	HandshakeTimeout time.Duration
	// FrameTimeout bounds the time to receive the rest of a frame once its
	// first byte arrived, and the whole of a fragmented message from the
	// first byte of its first fragment to the end of its final one (close
	// 1002). If zero, 10 s.
	FrameTimeout time.Duration
	// CloseTimeout is how long a socket waits, once its close frame (or a
	// rejected handshake's response) is written and its sending side shut
	// down, for the peer to close its side; then it is dropped. Closing
	// before the peer stops sending would reset the connection and could
	// destroy the close frame before the peer reads it. If zero, 2 s.
	CloseTimeout time.Duration
	// WriteTimeout bounds a blocked write to one connection; when it passes
	// the connection is dropped. If zero, 10 s.
	WriteTimeout time.Duration
	// WriteQueueBytes bounds the bytes queued to one connection and not yet
	// written to its socket; past it the connection is closed 1008 "slow
	// consumer". If zero, 1 MiB.
	WriteQueueBytes int
	// ReadAheadBytes bounds the input netpoll buffers for one connection
	// ahead of its reader: past it the socket is not read until the reader
	// has caught up, so the kernel's TCP window pushes back on a client that
	// sends faster than its commands are processed. It does not bound a
	// message: a frame still arriving is kept by the reader (up to
	// MaxMessageBytes). If zero, 64 KiB.
	ReadAheadBytes int
	// SendBufferBytes sets SO_SNDBUF on each accepted socket, bounding the
	// kernel memory one connection can hold. If zero, the kernel's default
	// (autotuned up to net.ipv4.tcp_wmem).
	SendBufferBytes int
	// AllowedOrigins lists the browser origins (scheme://host[:port]) other
	// than the server's own host that may open WebSockets; "*" allows any.
	// If empty, only same-host origins (and non-browser clients) may connect.
	AllowedOrigins []string

	// DrainDelay is how long Shutdown keeps the listener open before it
	// closes WebSockets: /readyz answers 503 and new upgrades are refused
	// with 503 and Retry-After, while health checks and ordinary requests
	// are still served, so that a load balancer stops routing to the node
	// first. If zero, none (the command's --drain-delay defaults to 5 s).
	DrainDelay time.Duration
	// HTTPReadTimeout bounds reading one whole ordinary HTTP request, body
	// included (net/http's ReadTimeout). If zero, 15 s.
	HTTPReadTimeout time.Duration
	// DrainTimeout is how long Shutdown waits for clients to leave when the
	// caller's context has no deadline. If zero, 10 s.
	DrainTimeout time.Duration
	// RetryAfterMin and RetryAfterSpread set the retry_after_ms hint sent
	// with 1012 on drain: each client gets RetryAfterMin plus a random share
	// of RetryAfterSpread so that they do not all come back at once.
	// If zero, 1 s and 10 s.
	RetryAfterMin    time.Duration
	RetryAfterSpread time.Duration

	// Echo makes the server echo every data message verbatim and speak no
	// protocol of its own (for conformance suites such as Autobahn).
	Echo bool

	// HistorySize is the number of publications kept per channel. If zero, 100.
	HistorySize int
	// HistoryTTL drops publications older than this, and frees the history
	// of channels idle that long by itself. If zero, 5 min; if negative,
	// never.
	HistoryTTL time.Duration
	// HistoryBytes bounds the memory of all channels' history together:
	// past it, the oldest publications of the least recently published
	// channel are evicted first. If zero, 128 MiB; if negative, unbounded.
	HistoryBytes int64
	// HistoryChannels caps the channels holding history: past it, the
	// least recently published channel loses its history. If zero,
	// 100,000; if negative, no cap.
	HistoryChannels int
	// MaxReplyBytes bounds a subscribe or history reply, so that one reply
	// cannot overflow a reader's write queue: history keeps the newest
	// publications that fit (and says "truncated":true), a recovery that
	// does not fit answers recovered:false with none. If zero, three
	// quarters of WriteQueueBytes, at most 768 KiB; if negative, no bound.
	MaxReplyBytes int
	// Broker connects the hub to other nodes. If nil, the in-memory broker.
	Broker hub.Broker
	// APIKey enables POST /api/publish for requests bearing it. If empty,
	// the endpoint answers 404.
	APIKey string

	// Pprof mounts net/http/pprof under /debug/pprof/ (on AdminAddr when
	// set, else on the server's port). Default false: profiles expose
	// internals.
	Pprof bool
	// AdminAddr, when set, is a second address (e.g. "127.0.0.1:9090")
	// that serves /metrics, /healthz and, with Pprof, the profiles; the
	// public port then does not serve them (404). If empty, they are served
	// on the public port.
	AdminAddr string
	// AdminAPI serves /api/* on AdminAddr only, so a backend reaches the
	// API on a private network. Ignored without AdminAddr. Default false.
	AdminAPI bool

	// Logger receives the server's logs. If nil, slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Addr == "" {
		c.Addr = ":8080"
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = 1 << 20
	}
	c.MaxMessageBytes = min(c.MaxMessageBytes, 1<<30)
	if c.MaxReassemblyBytes == 0 {
		c.MaxReassemblyBytes = 256 << 20
	}
	if c.MaxSubscriptionsPerConn == 0 {
		c.MaxSubscriptionsPerConn = 1024
	}
	if c.CommandRate == 0 {
		c.CommandRate = 100
	}
	if c.CommandBurst <= 0 {
		c.CommandBurst = 200
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.FrameTimeout <= 0 {
		c.FrameTimeout = 10 * time.Second
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 2 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.ReadAheadBytes <= 0 {
		c.ReadAheadBytes = 64 << 10
	}
	if c.WriteQueueBytes <= 0 {
		c.WriteQueueBytes = 1 << 20
	}
	if c.HTTPReadTimeout <= 0 {
		c.HTTPReadTimeout = 15 * time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.RetryAfterMin <= 0 {
		c.RetryAfterMin = time.Second
	}
	if c.RetryAfterSpread <= 0 {
		c.RetryAfterSpread = 10 * time.Second
	}
	if c.HistorySize <= 0 {
		c.HistorySize = 100
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
