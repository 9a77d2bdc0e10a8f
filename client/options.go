package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Defaults of the Options fields.
const (
	DefaultMinBackoff       = 250 * time.Millisecond
	DefaultMaxBackoff       = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultPingInterval     = 25 * time.Second
	DefaultPingTimeout      = 10 * time.Second
	DefaultBuffer           = 64
)

// Options configure a Client. The zero value is ready to use: JSON,
// anonymous, reconnecting with the default backoff, pinging every 25s.
type Options struct {
	// Encoding is the wire encoding, negotiated as the Sec-WebSocket-Protocol:
	// codec.JSON (fanout.v1.json) or codec.Msgpack (fanout.v1.msgpack).
	// Default (zero): codec.JSON.
	Encoding codec.Encoding

	// Token, when not empty, is sent on every connection attempt as
	// "Authorization: Bearer <Token>". Default: none (anonymous).
	Token string

	// Header holds extra HTTP headers for the upgrade request, sent on every
	// connection attempt (an Authorization header here is replaced by Token
	// when Token is set). Default: none.
	Header http.Header

	// URLs are more servers to connect to, after the url given to Dial: the
	// other nodes of a cluster (docs/CLUSTER.md), so that the client
	// survives the loss of the node it is on. Dial tries each in turn until
	// one connects. After a lost connection the client first tries the
	// server it was on again; each failed attempt moves on to the next URL
	// (round-robin, with the usual backoff before every attempt), and
	// subscriptions recover on whichever server it lands on: the servers
	// must share one broker, or recovery reports a *GapError. Default: none.
	URLs []string

	// Reconnect configures reconnection after a lost connection. Default:
	// enabled, 250ms to 30s.
	Reconnect ReconnectOptions

	// Dialer configures each connection attempt.
	Dialer DialerOptions

	// PingInterval is how often the client sends the application-level ping
	// command, which keeps the server's idle timeout from firing and detects
	// a dead connection. Default (zero): 25s. Negative: no pings.
	PingInterval time.Duration

	// PingTimeout is how long the client waits for a ping reply, and for one
	// frame to be written, before it considers the connection dead and
	// reconnects. Default (zero): 10s.
	PingTimeout time.Duration

	// OnStateChange, when set, is called on every change of the client's
	// State, in order, from a goroutine of the client's own. It must not
	// block for long; it may call the Client's methods. Default: none.
	OnStateChange func(StateChange)

	// Logger receives connection events (connects, disconnects, reconnect
	// delays, protocol errors). Default: discard.
	Logger *slog.Logger
}

// ReconnectOptions configure reconnection. The zero value reconnects forever
// with exponential backoff and full jitter: the n-th consecutive attempt
// waits a random duration in [0, min(MaxBackoff, MinBackoff*2^n)]. A close
// 1012 whose reason carries retry_after_ms=<N> is honoured instead: the next
// attempt waits N ms plus a random jitter of up to max(MinBackoff, N/2)
// (capped at MaxBackoff). The backoff sequence starts again once a connection
// stays up for 10s. A handshake refused with HTTP 400, 401, 403 or 404 is
// not retried: the client closes (StateClosed) with that *HandshakeError.
type ReconnectOptions struct {
	// Disabled turns reconnection off: when the connection is lost the
	// Client closes, and its calls fail with ErrClosed. Default: false.
	Disabled bool
	// MinBackoff is the first backoff ceiling. Default (zero): 250ms.
	MinBackoff time.Duration
	// MaxBackoff caps the backoff ceiling. Default (zero): 30s.
	MaxBackoff time.Duration
}

// DialerOptions configure each connection attempt.
type DialerOptions struct {
	// HandshakeTimeout bounds one attempt: TCP connect, TLS, the WebSocket
	// upgrade and the server's connected push. Default (zero): 10s.
	HandshakeTimeout time.Duration
	// TLSConfig is used for wss:// URLs. Default: the zero tls.Config, with
	// ServerName set from the URL.
	TLSConfig *tls.Config
	// NetDial, when set, replaces net.Dialer.DialContext to open the TCP
	// connection. Default: net.Dialer.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() (Options, error) {
	switch o.Encoding {
	case 0:
		o.Encoding = codec.JSON
	case codec.JSON, codec.Msgpack:
	default:
		return o, fmt.Errorf("fanout: unknown encoding %d", o.Encoding)
	}
	if o.Reconnect.MinBackoff <= 0 {
		o.Reconnect.MinBackoff = DefaultMinBackoff
	}
	if o.Reconnect.MaxBackoff <= 0 {
		o.Reconnect.MaxBackoff = DefaultMaxBackoff
	}
	if o.Reconnect.MaxBackoff < o.Reconnect.MinBackoff {
		o.Reconnect.MaxBackoff = o.Reconnect.MinBackoff
	}
	if o.Dialer.HandshakeTimeout <= 0 {
		o.Dialer.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.PingInterval == 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = DefaultPingTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

// State is the state of a Client's connection.
type State int32

const (
	// StateConnecting: a connection attempt is in progress.
	StateConnecting State = iota
	// StateConnected: a connection is up and the connected push received.
	StateConnected
	// StateDisconnected: the connection was lost (or an attempt failed) and
	// the client waits before the next attempt. Commands wait meanwhile.
	StateDisconnected
	// StateClosed: the client is closed for good; calls fail with ErrClosed.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// StateChange is one transition reported to Options.OnStateChange.
type StateChange struct {
	From, To State
	// Err says why: for StateDisconnected, the *CloseError that ended the
	// connection or the error of the failed attempt; for StateClosed, nil
	// after Close, otherwise what ended the client (reconnection disabled, or
	// a handshake refused for good such as HTTP 401).
	Err error
	// Delay is, for StateDisconnected, how long the client waits before its
	// next attempt (0 when it will not reconnect).
	Delay time.Duration
}

// SubscribeOptions configure one subscription. The zero value subscribes from
// the channel's current position, without presence, delivering on C().
type SubscribeOptions struct {
	// Presence asks for the channel's join and leave events, delivered on
	// Presence() (or to OnPresence). Default: false.
	Presence bool
	// Recover, when set, is a position the application saw before (for
	// example a Publication's Epoch and Offset, or a History position):
	// the subscription starts by delivering everything published after it
	// that the server's history still holds, and reports a *GapError if
	// some of it is gone. Default: nil, start from the current position.
	Recover *codec.StreamPosition
	// Buffer is the capacity of the C(), Presence() channels. Default (zero):
	// 64. The client queues without limit behind them, so a slow reader never
	// stalls other subscriptions or replies; an application that stops
	// reading must Unsubscribe.
	Buffer int
	// OnPublication, when set, receives the publications instead of C(),
	// which is then nil. It is called from the subscription's own
	// goroutine, one publication at a time, in offset order.
	OnPublication func(Publication)
	// OnPresence, when set, receives the join and leave events instead of
	// Presence(), from the same goroutine as OnPublication, in order with
	// the publications.
	OnPresence func(PresenceEvent)
	// OnGap, when set, receives the gaps instead of Gaps(), from the same
	// goroutine as OnPublication, in order with the publications: it is
	// called before the first publication after the gap.
	OnGap func(*GapError)
}
