// Package wsframe owns the server's outbound WebSocket frames: complete,
// unmasked RFC 6455 frames built once into pooled, reference-counted buffers
// so that one encoded publication can be queued to any number of connections
// without copying.
//
// It must not import engine, engine/hub or codec: it knows bytes and opcodes,
// never the protocol that fills them.
package wsframe
