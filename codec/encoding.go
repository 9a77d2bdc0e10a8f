package codec

import (
	"errors"
	"strconv"
)

// MaxDepth is the deepest nesting of arrays and objects (maps) that the
// decoders and Transcode accept in a value. Deeper values are treated as
// malformed: ErrTooDeep from Transcode, ErrNotObject from DecodeCommand.
const MaxDepth = 1000

// PushUnknown is what DecodeServerMessage reports for a push kind that this
// version of the package does not know (the protocol may add new ones);
// clients should ignore such pushes.
const PushUnknown PushKind = 255

// Errors of Transcode and of data validation. ErrUnsupported is wrapped by
// the specific reasons (errors.Is(err, ErrUnsupported) holds for them).
var (
	// ErrMalformed: the input is not one complete, well-formed value.
	ErrMalformed = errors.New("codec: malformed or truncated value")
	// ErrTooDeep: the value nests deeper than MaxDepth.
	ErrTooDeep = errors.New("codec: value nested too deeply")
	// ErrUnsupported: the value is well-formed but cannot be expressed in
	// both encodings.
	ErrUnsupported = errors.New("codec: value not expressible in both encodings")
	// ErrEncoding: the Encoding argument is neither JSON nor Msgpack.
	ErrEncoding = errors.New("codec: unknown encoding")
)

// Specific reasons wrapping ErrUnsupported.
var (
	errLoneSurrogate = newUnsupported("string with a lone UTF-16 surrogate escape")
	errNumberRange   = newUnsupported("number out of float64 range")
	errInvalidUTF8   = newUnsupported("msgpack string is not valid UTF-8")
	errExt           = newUnsupported("msgpack ext type")
	errMapKey        = newUnsupported("msgpack map key is not a string")
	errNonFinite     = newUnsupported("float NaN or infinity")
)

// unsupportedError is one reason for ErrUnsupported. cmd is the error
// DecodeCommand returns when publish data has it (built once: the error path
// allocates nothing either).
type unsupportedError struct {
	reason string
	cmd    *CommandError
}

func newUnsupported(reason string) *unsupportedError {
	return &unsupportedError{reason, &CommandError{CodeBadRequest, "data: " + reason}}
}

// commandError returns the *CommandError of a data validation error.
func commandError(err error) *CommandError {
	if u, ok := err.(*unsupportedError); ok {
		return u.cmd
	}
	return &CommandError{CodeBadRequest, "data: " + err.Error()}
}

func (e *unsupportedError) Error() string { return "codec: unsupported value: " + e.reason }
func (e *unsupportedError) Unwrap() error { return ErrUnsupported }

// String returns "json" or "msgpack".
func (e Encoding) String() string {
	switch e {
	case JSON:
		return "json"
	case Msgpack:
		return "msgpack"
	}
	return "Encoding(" + strconv.Itoa(int(e)) + ")"
}

// Subprotocol returns the Sec-WebSocket-Protocol name of e ("" when e is
// neither JSON nor Msgpack).
func (e Encoding) Subprotocol() string {
	switch e {
	case JSON:
		return SubprotocolJSON
	case Msgpack:
		return SubprotocolMsgpack
	}
	return ""
}

// EncodingFromSubprotocol maps a subprotocol name to its encoding.
func EncodingFromSubprotocol(name string) (Encoding, bool) {
	switch name {
	case SubprotocolJSON:
		return JSON, true
	case SubprotocolMsgpack:
		return Msgpack, true
	}
	return 0, false
}

var opNames = [...]string{
	OpUnknown:     "",
	OpSubscribe:   "subscribe",
	OpUnsubscribe: "unsubscribe",
	OpPublish:     "publish",
	OpPresence:    "presence",
	OpHistory:     "history",
	OpPing:        "ping",
	OpConnect:     "connect",
	OpRefresh:     "refresh",
}

// String returns the op's wire name ("subscribe", ...), "" for OpUnknown
// (and for values that are not an Op).
func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return ""
}

// opFromName returns the Op of a wire name, OpUnknown if none.
func opFromName(name []byte) Op {
	switch string(name) {
	case "subscribe":
		return OpSubscribe
	case "unsubscribe":
		return OpUnsubscribe
	case "publish":
		return OpPublish
	case "presence":
		return OpPresence
	case "history":
		return OpHistory
	case "ping":
		return OpPing
	case "connect":
		return OpConnect
	case "refresh":
		return OpRefresh
	}
	return OpUnknown
}

// channelChar marks the bytes allowed in a channel name.
var channelChar = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-:./" {
		t[c] = true
	}
	return t
}()

// ValidChannel reports whether name is 1-255 characters of A-Z a-z 0-9 _ - : . /
func ValidChannel(name []byte) bool {
	if len(name) == 0 || len(name) > 255 {
		return false
	}
	for _, c := range name {
		if !channelChar[c] {
			return false
		}
	}
	return true
}
