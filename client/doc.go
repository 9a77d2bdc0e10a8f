// Package client owns fanout's Go client: a connection to a fanout server
// that speaks the public wire protocol (PROTOCOL.md) and survives
// disconnects.
//
// Dial connects, waits for the server's connected push and returns a Client.
// A Client multiplexes commands (Publish, Presence, History, Ping) and
// subscriptions over one WebSocket connection at a time. When the connection
// is lost it reconnects with exponential backoff and full jitter (or after the
// delay a close 1012 asks for), resubscribes every active Subscription with
// recover from the last position it delivered, drops duplicates and delivers
// publications in offset order, so that the application sees no gap. When the
// server cannot recover what was missed, the Subscription reports a
// *GapError (errors.Is(err, ErrHistoryLost)) and continues from the new
// position.
//
// Options.URLs lists more servers (the other nodes of a cluster): a failed
// connection attempt moves on to the next one, so a client whose node dies
// reconnects to another and recovers its subscriptions there from the
// cluster's shared history.
//
// Error replies become *Error values that match the sentinels ErrBadRequest,
// ErrUnknownOp, ErrUnauthorized, ErrForbidden, ErrRateLimited, ErrTooLarge
// and ErrInternal with errors.Is; the end of a connection is a *CloseError.
//
// The package knows the server only through the wire protocol. It uses codec
// for the protocol types and encodings and github.com/gobwas/ws as the
// transport, and must not import engine or anything under it.
package client
