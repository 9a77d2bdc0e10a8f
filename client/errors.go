package client

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Error is an error reply from the server (or a request the client refuses to
// send for the same reason). errors.Is matches it against the sentinel of its
// code: errors.Is(err, ErrForbidden) is true for any *Error with code
// "forbidden".
type Error struct {
	Code    string // one of the codec.Code* words, e.g. "bad_request"
	Message string // the server's readable reason
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "fanout: " + e.Code
	}
	return "fanout: " + e.Code + ": " + e.Message
}

// Is reports whether target is an *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels of the error reply codes (PROTOCOL.md), for errors.Is.
var (
	ErrBadRequest   = &Error{Code: codec.CodeBadRequest, Message: "bad request"}
	ErrUnknownOp    = &Error{Code: codec.CodeUnknownOp, Message: "unknown op"}
	ErrUnauthorized = &Error{Code: codec.CodeUnauthorized, Message: "unauthorized"}
	ErrForbidden    = &Error{Code: codec.CodeForbidden, Message: "forbidden"}
	ErrRateLimited  = &Error{Code: codec.CodeRateLimited, Message: "rate limited"}
	ErrTooLarge     = &Error{Code: codec.CodeTooLarge, Message: "too large"}
	ErrInternal     = &Error{Code: codec.CodeInternal, Message: "internal error"}
	// ErrUnavailable: the server's cluster broker is unreachable; the
	// command may succeed later.
	ErrUnavailable = &Error{Code: codec.CodeUnavailable, Message: "broker unavailable"}
)

var (
	// ErrClosed is returned by calls on a closed Client (after Close, or
	// after the connection was lost with reconnection disabled) and ends its
	// subscriptions.
	ErrClosed = errors.New("fanout: client closed")
	// ErrConnectionLost is returned by Publish (and PublishRaw) when the
	// connection was lost after the command was sent and before its reply
	// came: the publication may or may not have happened. Other commands
	// are sent again on the next connection instead. The error also wraps
	// the *CloseError that ended the connection.
	ErrConnectionLost = errors.New("fanout: connection lost before the reply")
	// ErrHistoryLost is matched (errors.Is) by every *GapError.
	ErrHistoryLost = errors.New("fanout: history lost")
	// ErrAlreadySubscribed is returned by Subscribe for a channel the Client
	// already has an active Subscription to.
	ErrAlreadySubscribed = errors.New("fanout: already subscribed")
)

// Close codes of RFC 6455 that the client reports (PROTOCOL.md lists the
// server's).
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001
	CloseNoStatus       = 1005 // a close frame without a code
	CloseAbnormal       = 1006 // no close frame: the connection just ended
	ClosePolicy         = 1008
	CloseServiceRestart = 1012
)

// CloseError says why a connection ended: the code and reason of the close
// frame the server sent, or CloseAbnormal with the transport error in Err
// when the connection ended without one.
type CloseError struct {
	Code   int
	Reason string
	// RetryAfter is the delay a close 1012 asked for with
	// "retry_after_ms=<N>" in its reason; zero otherwise.
	RetryAfter time.Duration
	// Err is the underlying error when the connection ended without a close
	// frame (Code CloseAbnormal), or what the client detected (for example a
	// ping timeout).
	Err error
}

func (e *CloseError) Error() string {
	var b strings.Builder
	b.WriteString("fanout: connection closed: ")
	b.WriteString(strconv.Itoa(e.Code))
	if e.Reason != "" {
		b.WriteString(" ")
		b.WriteString(e.Reason)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *CloseError) Unwrap() error { return e.Err }

// newCloseError builds the *CloseError of a close frame, parsing
// retry_after_ms=<N> from the reason of a 1012.
func newCloseError(code int, reason string) *CloseError {
	e := &CloseError{Code: code, Reason: reason}
	if code == CloseServiceRestart {
		e.RetryAfter, _ = parseRetryAfter(reason)
	}
	return e
}

// parseRetryAfter finds "retry_after_ms=<N>" among the reason's words
// (separated by spaces, commas or semicolons).
func parseRetryAfter(reason string) (time.Duration, bool) {
	for _, f := range strings.FieldsFunc(reason, func(r rune) bool {
		return r == ' ' || r == ',' || r == ';'
	}) {
		v, ok := strings.CutPrefix(f, "retry_after_ms=")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return 0, false
		}
		return time.Duration(n) * time.Millisecond, true
	}
	return 0, false
}

// HandshakeError is a connection attempt the server refused with an HTTP
// status instead of upgrading. errors.Is matches 400 to ErrBadRequest, 401
// to ErrUnauthorized, 403 to ErrForbidden, 413 to ErrTooLarge, 429 to
// ErrRateLimited and 503 (server full, draining or short of memory) to
// ErrUnavailable.
type HandshakeError struct {
	StatusCode int
	Body       string // the start of the response body, if any
}

func (e *HandshakeError) Error() string {
	s := fmt.Sprintf("fanout: handshake refused: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// Is matches the sentinel of the status code.
func (e *HandshakeError) Is(target error) bool {
	var s *Error
	switch e.StatusCode {
	case http.StatusBadRequest:
		s = ErrBadRequest
	case http.StatusUnauthorized:
		s = ErrUnauthorized
	case http.StatusForbidden:
		s = ErrForbidden
	case http.StatusRequestEntityTooLarge:
		s = ErrTooLarge
	case http.StatusTooManyRequests:
		s = ErrRateLimited
	case http.StatusServiceUnavailable:
		s = ErrUnavailable
	default:
		return false
	}
	return s.Is(target)
}

// permanent reports whether retrying the handshake cannot help.
func (e *HandshakeError) permanent() bool {
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// GapError reports publications a Subscription could not deliver: the
// server's history no longer held them when the subscription recovered (or
// it lost its history, which shows as a new epoch). Delivery continues after
// it. errors.Is(err, ErrHistoryLost) is true.
type GapError struct {
	Channel string
	// From is the last position delivered before the gap.
	From codec.StreamPosition
	// To is the position delivery continues after: the next publication
	// delivered has a greater offset in To.Epoch.
	To codec.StreamPosition
	// Missing is how many publications were not delivered, when Known.
	Missing uint64
	// Known is false when the number is unknown (the epoch changed).
	Known bool
}

func (e *GapError) Error() string {
	if e.Known {
		return fmt.Sprintf("fanout: history lost on channel %q: %d publications missing after offset %d",
			e.Channel, e.Missing, e.From.Offset)
	}
	return fmt.Sprintf("fanout: history lost on channel %q: epoch changed from %q to %q, an unknown number of publications may be missing",
		e.Channel, e.From.Epoch, e.To.Epoch)
}

// Is matches ErrHistoryLost.
func (e *GapError) Is(target error) bool { return target == ErrHistoryLost }

// merge folds a later gap g into e (for the coalescing Gaps channel).
func (e *GapError) merge(g *GapError) *GapError {
	m := *e
	m.To = g.To
	m.Known = e.Known && g.Known
	if m.Known {
		m.Missing = e.Missing + g.Missing
	} else {
		m.Missing = 0
	}
	return &m
}

// replyError converts an error reply.
func replyError(m *codec.ServerMessage) error {
	if m.ErrorCode == "" {
		return nil
	}
	return &Error{Code: m.ErrorCode, Message: m.ErrorMessage}
}
