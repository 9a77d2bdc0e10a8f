// Package deflate owns fanout's side of permessage-deflate (RFC 7692):
// which offers a client may make and what the server answers
// (Negotiate), compressing a finished server frame into a compressed one
// (Compressor.Frame), and inflating a client's compressed message within a
// size bound (Inflate).
//
// The server always answers server_no_context_takeover and
// client_no_context_takeover. The first lets one compressed frame of a
// publication be shared by every subscriber that negotiated compression
// (a frame compressed with context takeover would depend on what else that
// connection was sent); the second means the server keeps no inflate
// window per connection: an idle connection costs nothing more with
// compression than without, and each message is inflated on its own with a
// pooled decompressor.
//
// It must not import engine or engine/hub (both import it); it knows
// frames (wsframe) and bytes, never the protocol.
package deflate
