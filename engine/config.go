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
	// TLSCertFile and TLSKeyFile are PEM files of a certificate chain and
	// its private key. Set (both), the port at Addr speaks TLS only:
	// https:// and wss://, TLS 1.2 and 1.3, HTTP/1.1 by ALPN. They are read
	// at Start (a bad pair fails it) and again by Server.ReloadTLS (the
	// command's SIGHUP). TLS is terminated in the process in front of the
	// event loop, two goroutines and three descriptors per connection
	// (tls.go; its cost, and when a proxy in front is the better choice:
	// bench/README.md, "TLS"). If empty, plain TCP.
	TLSCertFile string
	TLSKeyFile  string

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

	// ---- Admission control (admission.go, origin.go, memguard.go): what
	// an upgrade must pass before authentication. The upgrade request head
	// is bounded at 16 KiB (431), a fixed size: gobwas/ws must hold the
	// whole head in one buffer.

	// PublicURL is the URL browsers load the application from (e.g.
	// "https://chat.example.com"; ws and wss count as http and https): a
	// page of its origin (scheme, host, port) may open WebSockets. With
	// neither PublicURL nor AllowedOrigins the server is in development
	// mode, logged at start: only pages on localhost whose origin is the
	// request's own host may connect. Requests without Origin (not
	// browsers) are always allowed. If empty, none.
	PublicURL string
	// AllowedOrigins lists further browser origins (scheme://host[:port])
	// that may open WebSockets; "*" allows any. The scheme and port must
	// match (default ports made explicit); a request with more than one
	// Origin gets 400, an origin not allowed 403. If empty, only
	// PublicURL's origin (or, without it, development mode).
	AllowedOrigins []string
	// TrustedProxies lists the proxies (CIDRs such as "10.0.0.0/8", or
	// single addresses) whose X-Forwarded-For, X-Forwarded-Host and
	// X-Forwarded-Proto are believed: the client address (for
	// MaxConnsPerIP and the refusal logs) is then the rightmost
	// X-Forwarded-For hop that is not a trusted proxy, and the forwarded
	// host and scheme are what the development-mode origin check compares
	// with. If empty, none: the headers are ignored and the peer is the
	// client.
	TrustedProxies []string
	// MaxConns bounds the sockets the event loop holds (open WebSockets,
	// connections in their handshake, closing ones): an upgrade past it
	// gets 503 with Retry-After. If zero, RLIMIT_NOFILE's soft limit less
	// max(256, 5%) of it (half of it when that leaves less), divided by 3
	// with TLS (three descriptors per connection), so that health checks,
	// /metrics, the admin port and net/http keep their descriptors at the
	// limit; no limit when RLIMIT_NOFILE is unlimited.
	// Negative: no limit. Whatever its value, a socket accepted with
	// RLIMIT_NOFILE less half that reserve already held is answered 503
	// and closed at once.
	MaxConns int
	// MaxConnsPerIP bounds the open WebSockets of one client address (an
	// IPv6 client's /64; see TrustedProxies): an upgrade past it gets 429
	// with Retry-After. Loopback clients are not limited (a proxy on this
	// host, a benchmark): behind a proxy, set TrustedProxies so that the
	// limit applies to the real clients. If zero, 1000 (generous: a NAT
	// may hide an office); negative: no limit.
	MaxConnsPerIP int
	// MaxMemory is the memory (as the Go runtime holds it from the OS:
	// heap, stacks, metadata; sampled every 100 ms at most) above which
	// new upgrades get 503 with Retry-After while open connections are
	// served; above 90% of it history's byte budget is halved (at most once
	// a second; restored below 80%). If zero, 80% of the cgroup's memory
	// limit, or of physical memory without one; negative: no limit.
	MaxMemory int64

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

	// Compression says whether permessage-deflate (RFC 7692) is
	// negotiated with clients that offer it. If zero (CompressionDefault),
	// CompressionOn (chosen from the measurements in bench/README.md).
	Compression CompressionMode
	// CompressionMinBytes: messages whose payload is shorter are sent
	// uncompressed even to clients that negotiated compression (deflate
	// costs more than it saves on small messages). If zero, 256; if
	// negative, every message is compressed.
	CompressionMinBytes int
	// CompressionLevel is the compress/flate level (1, fastest, to 9,
	// smallest). If zero, 1 (see bench/README.md, "permessage-deflate").
	CompressionLevel int

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

	// ---- Authentication and per-user limits (authn.go, docs/PROTOCOL.md
	// "Authentication").
	//
	// TokenSecret, TokenPublicKeyFile and TokenJWKSFile are the keys that
	// verify clients' JWTs (engine/auth): an HS256 shared secret, a PEM
	// file of RS256/ES256 public keys, a JWKS file whose keys a token picks
	// by kid. With any of them set, a connection needs a valid token (in
	// Authorization: Bearer, the token query parameter, or a connect
	// command) unless AllowAnonymous. If all are empty (the default), no
	// token is checked: every connection is anonymous and every channel
	// open.
	TokenSecret        string
	TokenPublicKeyFile string
	TokenJWKSFile      string
	// AllowAnonymous lets connections without a token in when token keys
	// are configured; they may subscribe to (and read history and presence
	// of) AnonymousChannels and publish to AnonymousPublish, glob patterns
	// as in a token's claims. Default false; the globs default to none.
	// Ignored without token keys (everyone is anonymous then, and every
	// channel open).
	AllowAnonymous    bool
	AnonymousChannels []string
	AnonymousPublish  []string
	// PublishBytesPerSecond bounds the publish data one user sends, on
	// average: a token bucket shared by all of a user's connections on this
	// node (per connection for anonymous ones); PublishBurstBytes is how
	// much may be sent at once. A publish over it gets the error
	// rate_limited. If zero, 1 MiB per second; negative: no limit.
	// PublishBurstBytes: if zero, 4 x PublishBytesPerSecond; never less
	// than MaxMessageBytes, so that any publish the server accepts can pass
	// a full bucket.
	PublishBytesPerSecond int
	PublishBurstBytes     int
	// TokenURL is where the embedded web app fetches a token when the
	// server requires one (GET, same origin, cookies included; it answers
	// {"token":"<jwt>"}); the app learns it from GET /auth.json. If empty,
	// /api/dev-token with DevTokens, else none (the app then connects
	// anonymously).
	TokenURL string
	// DevTokens serves GET /api/dev-token?name=N, which mints an HS256
	// token for anyone who asks (sub and name N, DevTokenChannels and
	// DevTokenPublish, DevTokenTTL): for development only, never in
	// production. Without TokenSecret a random secret is made at start.
	// Default false.
	DevTokens bool
	// DevTokenChannels and DevTokenPublish are the globs of dev tokens. If
	// empty, "*" (every channel).
	DevTokenChannels []string
	DevTokenPublish  []string
	// DevTokenTTL is the lifetime of dev tokens. If zero, 10 minutes.
	DevTokenTTL time.Duration

	// Logger receives the server's logs. If nil, slog.Default().
	Logger *slog.Logger
}

// CompressionMode is Config.Compression.
type CompressionMode uint8

const (
	// CompressionDefault is the zero value: CompressionOn.
	CompressionDefault CompressionMode = iota
	// CompressionOff declines every permessage-deflate offer.
	CompressionOff
	// CompressionOn accepts a valid permessage-deflate offer.
	CompressionOn
)

func (c Config) withDefaults() Config {
	if c.Compression == CompressionDefault {
		c.Compression = CompressionOn
	}
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
	if c.PublishBytesPerSecond == 0 {
		c.PublishBytesPerSecond = 1 << 20
	}
	if c.PublishBurstBytes <= 0 {
		c.PublishBurstBytes = 4 * max(c.PublishBytesPerSecond, 0)
	}
	c.PublishBurstBytes = max(c.PublishBurstBytes, c.MaxMessageBytes)
	if c.DevTokenTTL <= 0 {
		c.DevTokenTTL = 10 * time.Minute
	}
	if len(c.DevTokenChannels) == 0 {
		c.DevTokenChannels = []string{"*"}
	}
	if len(c.DevTokenPublish) == 0 {
		c.DevTokenPublish = []string{"*"}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
