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
	// If zero, 1 MiB.
	MaxMessageBytes int
	// IdleTimeout closes a connection (1001) that sent no frame for this
	// long; a ping is sent half-way through. If zero, 60 s.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the time from accept to a complete upgrade
	// request. If zero, 5 s.
	HandshakeTimeout time.Duration
	// FrameTimeout bounds the time to receive the rest of a frame once its
	// first byte arrived. If zero, 10 s.
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
	// SendBufferBytes sets SO_SNDBUF on each accepted socket, bounding the
	// kernel memory one connection can hold. If zero, the kernel's default
	// (autotuned up to net.ipv4.tcp_wmem).
	SendBufferBytes int
	// AllowedOrigins lists the browser origins (scheme://host[:port]) other
	// than the server's own host that may open WebSockets; "*" allows any.
	// If empty, only same-host origins (and non-browser clients) may connect.
	AllowedOrigins []string

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
	// HistoryTTL drops publications older than this. If zero, never.
	HistoryTTL time.Duration
	// Broker connects the hub to other nodes. If nil, the in-memory broker.
	Broker hub.Broker
	// APIKey enables POST /api/publish for requests bearing it. If empty,
	// the endpoint answers 404.
	APIKey string

	// Pprof mounts net/http/pprof under /debug/pprof/ on the server's port.
	// Default false: profiles expose internals.
	Pprof bool

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
	if c.WriteQueueBytes <= 0 {
		c.WriteQueueBytes = 1 << 20
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
