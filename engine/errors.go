package engine

import (
	"errors"
	"strconv"
)

// Close codes the server sends (PROTOCOL.md). closeCodeFor is the one place
// that maps a reason for closing to its code.
const (
	CloseNormal         uint16 = 1000
	CloseGoingAway      uint16 = 1001 // idle timeout
	CloseProtocolError  uint16 = 1002
	CloseUnsupported    uint16 = 1003 // wrong frame kind for the encoding
	CloseInvalidPayload uint16 = 1007 // bad UTF-8, undecodable message
	ClosePolicy         uint16 = 1008 // slow consumer, abuse, token expired
	CloseTooBig         uint16 = 1009
	CloseInternal       uint16 = 1011
	CloseRestart        uint16 = 1012 // drain; reason carries retry_after_ms
)

// CloseError is why a connection was closed: the code and reason sent in the
// close frame. Every close the server initiates is described by one.
type CloseError struct {
	Code   uint16
	Reason string
}

func (e *CloseError) Error() string {
	return "websocket close " + strconv.Itoa(int(e.Code)) + ": " + e.Reason
}

// Sentinel errors.
var (
	// ErrServerClosed is returned by Start after Shutdown or Close.
	ErrServerClosed = errors.New("engine: server closed")
	// ErrAlreadyStarted is returned by a second Start.
	ErrAlreadyStarted = errors.New("engine: server already started")
)

// Reasons for closing, each with its code. Values, not constructors, so the
// hot path allocates nothing to describe a close.
var (
	errIdle         = &CloseError{CloseGoingAway, "idle timeout"}
	errReservedBits = &CloseError{CloseProtocolError, "reserved bits set"}
	// errMisplacedRSV1: RFC 7692 6 allows the compressed bit only on the
	// first frame of a data message.
	errMisplacedRSV1    = &CloseError{CloseProtocolError, "compressed bit (RSV1) on a control or continuation frame"}
	errReservedOpcode   = &CloseError{CloseProtocolError, "reserved opcode"}
	errUnmasked         = &CloseError{CloseProtocolError, "client frame not masked"}
	errControlTooLong   = &CloseError{CloseProtocolError, "control frame payload over 125 bytes"}
	errControlFragment  = &CloseError{CloseProtocolError, "fragmented control frame"}
	errBadLength        = &CloseError{CloseProtocolError, "invalid payload length"}
	errUnexpectedCont   = &CloseError{CloseProtocolError, "continuation frame without a message to continue"}
	errExpectedCont     = &CloseError{CloseProtocolError, "new data frame inside a fragmented message"}
	errBadCloseCode     = &CloseError{CloseProtocolError, "invalid close code"}
	errBadClosePayload  = &CloseError{CloseProtocolError, "close payload of one byte"}
	errFrameTimeout     = &CloseError{CloseProtocolError, "frame or fragmented message not completed in time"}
	errWrongKindJSON    = &CloseError{CloseUnsupported, "binary frame on a fanout.v1.json connection"}
	errWrongKindMsgpack = &CloseError{CloseUnsupported, "text frame on a fanout.v1.msgpack connection"}
	errBadUTF8          = &CloseError{CloseInvalidPayload, "invalid UTF-8 in text message"}
	errBadCloseReason   = &CloseError{CloseInvalidPayload, "invalid UTF-8 in close reason"}
	errNotObject        = &CloseError{CloseInvalidPayload, "message does not decode as an object"}
	errSlowConsumer     = &CloseError{ClosePolicy, "slow consumer"}
	errRateLimit        = &CloseError{ClosePolicy, "rate limit exceeded"}
	errTooBig           = &CloseError{CloseTooBig, "message too big"}
	// errInflatedTooBig: a compressed message inflates past
	// MaxMessageBytes (a deflate bomb, or just a large message).
	errInflatedTooBig = &CloseError{CloseTooBig, "message too big once inflated"}
	errBadDeflate     = &CloseError{CloseInvalidPayload, "invalid compressed data"}
	// errReassemblyBudget: the server-wide MaxReassemblyBytes is spent.
	// 1009 ("a message that is too big for it to process", RFC 6455
	// 7.4.1), not 1008: the server cannot take this message now, but the
	// client broke no policy, and its remedy is that of any 1009.
	errReassemblyBudget = &CloseError{CloseTooBig, "message too big for the server's reassembly budget"}
)

// validCloseCode reports whether a client may send code in a close frame
// (RFC 6455 7.4: 1005, 1006 and 1015 are never sent on the wire).
func validCloseCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}
