// Package codec owns fanout's wire protocol (PROTOCOL.md) as Go types and
// its two encodings, JSON and msgpack: decoding client commands, encoding
// server replies and pushes by appending to caller-owned buffers, the reverse
// pair for clients, and transcoding publication data between the encodings.
//
// Hot paths (command decode, pub encode) are hand-written and allocate
// nothing per message; both encodings decode to the same values.
//
// It must not import engine, engine/hub, client or any networking package.
package codec
