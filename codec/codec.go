package codec

import "errors"

// Encoding is the wire encoding negotiated for one connection.
type Encoding uint8

const (
	// JSON is fanout.v1.json: text frames, one JSON object per message.
	JSON Encoding = iota + 1
	// Msgpack is fanout.v1.msgpack: binary frames, one msgpack map per message.
	Msgpack
)

// Subprotocol names of the two encodings (Sec-WebSocket-Protocol).
const (
	SubprotocolJSON    = "fanout.v1.json"
	SubprotocolMsgpack = "fanout.v1.msgpack"
)

// Op is a client command's operation.
type Op uint8

const (
	OpUnknown Op = iota
	OpSubscribe
	OpUnsubscribe
	OpPublish
	OpPresence
	OpHistory
	OpPing
	// OpConnect authenticates a connection that upgraded without a token
	// (browsers): {"op":"connect","token":T} or, where anonymous access is
	// allowed, {"op":"connect","name":N}.
	OpConnect
	// OpRefresh replaces a live connection's token: {"op":"refresh","token":T}.
	OpRefresh
)

// Error codes of error replies (PROTOCOL.md).
const (
	CodeBadRequest   = "bad_request"
	CodeUnknownOp    = "unknown_op"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeRateLimited  = "rate_limited"
	CodeTooLarge     = "too_large"
	CodeInternal     = "internal"
	// CodeUnavailable: the cluster broker cannot be reached; retry later.
	CodeUnavailable = "unavailable"
)

// Push kinds of server pushes.
type PushKind uint8

const (
	PushNone PushKind = iota // a reply, not a push
	PushConnected
	PushPub
	PushJoin
	PushLeave
	// PushRefresh asks the client to send a fresh token (op refresh) before
	// its token expires: {"push":"refresh"}.
	PushRefresh
)

// ErrNotObject is returned when a message does not decode as an object of the
// connection's encoding. The server closes such a connection with 1007.
var ErrNotObject = errors.New("codec: message is not an object")

// CommandError is a message that decodes but is not a valid command. The
// server answers it with an error reply and keeps the connection.
type CommandError struct {
	Code    string // one of the Code* constants
	Message string // readable reason
}

func (e *CommandError) Error() string { return e.Code + ": " + e.Message }

// StreamPosition is a place in a channel's history.
type StreamPosition struct {
	Epoch  string
	Offset uint64
}

// ClientInfo names the connection behind a publication or presence entry.
type ClientInfo struct {
	Client string
	User   string
	// Name is the optional display name, written as "name" in info objects
	// (and in the connected push) only when it is not empty. With User set
	// it comes from the user's token; with User empty it is what an
	// anonymous client called itself, unverified.
	Name string
}

// Publication is one message published to a channel. It is immutable once
// built and carries its data in both encodings so that it can be encoded for
// any subscriber without decoding it again.
type Publication struct {
	Channel string
	Epoch   string
	Offset  uint64
	Info    ClientInfo
	JSON    []byte // data as a JSON value
	Msgpack []byte // the same data as a msgpack value
}

// Command is a decoded client command (or, for clients, one to encode).
// Byte slices returned by DecodeCommand alias the decoded message and are
// valid only as long as it is.
type Command struct {
	Op    Op
	ID    uint64
	HasID bool
	// Channel is the channel name, validated by DecodeCommand.
	Channel []byte
	// Data is the publish payload, a complete value in the message's encoding.
	Data []byte
	// Recover is set by subscribe with "recover".
	HasRecover    bool
	RecoverEpoch  []byte
	RecoverOffset uint64
	// Presence asks for join/leave pushes on subscribe.
	Presence bool
	// Limit of a history command; 0 when absent.
	Limit int
	// Token is the JWT of connect (optional) and refresh (required).
	Token []byte
	// Name is the display name an anonymous client gives in connect or
	// subscribe (optional).
	Name []byte

	// scratch holds the unescaped text of JSON strings written with
	// backslash escapes (rare: Channel or RecoverEpoch then alias it instead
	// of the message). DecodeCommand reuses it, so such slices are valid
	// until the next DecodeCommand into the same Command.
	scratch []byte
}

// ServerMessage is a decoded reply or push, as a client sees it. Strings and
// slices are copies: safe to keep.
type ServerMessage struct {
	Push  PushKind
	ID    uint64
	HasID bool
	OK    bool
	// Error reply (ErrorCode empty when the message is not an error).
	ErrorCode    string
	ErrorMessage string
	// connected push: the connection's identity; join/leave: who.
	Info ClientInfo
	// pub, join, leave pushes.
	Channel string
	// pub push. Pub.JSON or Pub.Msgpack (whichever the encoding is) holds data.
	Pub Publication
	// subscribe, history, publish replies.
	Epoch        string
	Offset       uint64
	Recovered    bool
	Publications []Publication
	// Truncated: a history reply left older publications out to stay
	// under the server's reply size bound (optional field "truncated").
	Truncated bool
	// presence reply.
	Count   int
	Clients []ClientInfo
}
