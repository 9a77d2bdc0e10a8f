// Package conformance owns fanout's RFC 6455 conformance suite: the case
// families of the Autobahn|TestSuite fuzzing client, run in Go against a
// real engine.Server in Echo mode (Config{Echo: true}) over raw TCP
// sockets. The package has no code of its own beyond this comment; the
// suite is its test files, and it uses only engine's exported API.
//
// Every case is a subtest named after its Autobahn id and what it does
// ("1.1.3/text-126", "6.4.1/fail-fast-invalid-fragment"), so that a failure reads
// like an Autobahn report. The client is written here, byte by byte
// (client_test.go): it builds frames the way a fuzzer does (any RSV bits,
// opcode, length encoding, fragmentation, writes in chunks with pauses) and
// checks every frame the server sends (unmasked, RSV clear, control frames
// final and at most 125 bytes, close reasons valid UTF-8, the TCP
// connection closed by the server after its close frame).
//
// Families covered (see each file for the cases):
//
//	1.x  framing: text and binary of 0..65536 bytes, written whole, in
//	     chunks of several sizes, the header byte by byte       framing_test.go
//	2.x  pings and pongs                                         framing_test.go
//	3.x  reserved bits (RSV1 too, on connections that did not
//	     negotiate permessage-deflate)                           framing_test.go
//	4.x  reserved opcodes                                        framing_test.go
//	5.x  fragmentation                                           fragment_test.go
//	6.x  UTF-8: valid and invalid text, fail-fast                utf8_test.go
//	7.x  close handling and codes                                close_test.go
//	9.x  large messages to a slow reader                         large_test.go
//	10.x auto-fragmentation                                      large_test.go
//	12.x compressed echo, 16 B to 128 KiB, four kinds of payload compression_test.go
//	13.x every offer a client can make (server_max_window_bits
//	     absent or 8..15 x client_max_window_bits absent, bare or
//	     8..15 x both context-takeover flags), and fallback lists  compression_test.go
//	12.6-12.7 (not in Autobahn) offers declined without failing the
//	     handshake; corrupt compressed data (1007), deflate bombs
//	     (1009), RSV1 on a continuation or control frame (1002)   compression_test.go
//
// Cases marked "not in Autobahn" extend a family with what RFC 6455
// requires and Autobahn does not check (unmasked frames, frames around
// the server's 16 KiB read size, RSV1 on a continuation, the server's TCP
// close after its close frame, 1009 past MaxMessageBytes, pongs queued
// behind a large echo); their ids continue the family's numbering (1.3.x,
// 1.4.x, 6.24.x, 9.9.x, 9.10.x...). Every UTF-8 sequence of 6.5-6.24 is
// sent three ways: in one frame, one byte per fragment, and inside a
// fragmented message; an invalid one must fail the connection at the
// fragment that makes it invalid (deadAt computes where), the rest of the
// message unsent.
//
// After each family the server must hold no connection (its
// fanout_connections gauge on /metrics): every closing handshake ends with
// the TCP connection released.
//
// FANOUT_CONFORMANCE_URL=ws://host:port/path runs the suite against a
// server already listening there (fanout --echo --max-message-bytes
// 16777216, a proxy in front of one, or another server to compare with).
//
// What the suite expects where the RFC leaves a choice: a connection the
// server fails is closed with a close frame carrying 1002 (protocol error)
// or 1007 (invalid UTF-8), then the server closes the TCP connection; a
// close frame without a code is answered 1000; a valid code is echoed.
// Invalid UTF-8 in a fragmented text message fails the connection at the
// fragment that makes it invalid, without waiting for the final one. A
// single frame is validated once all of it has arrived (Autobahn's
// "non-strict" for 6.4.3/6.4.4, which the RFC allows).
//
// Compression: the client offers permessage-deflate where a case says so,
// checks the server's answer against RFC 7692 7.1, inflates what the
// server sends compressed (keeping the inflate context unless the server
// promised server_no_context_takeover), and compresses what it sends
// without context. Against fanout itself the suite also checks fanout's
// choices: both no_context_takeover parameters in every answer, offers
// asking for server_max_window_bits below 15 declined.
//
// Autobahn has no 8.x or 11.x family. Not covered: compressed messages
// under a server_max_window_bits below 15 (fanout declines such offers,
// so its compressed frames never need a smaller window).
package conformance
