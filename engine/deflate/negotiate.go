package deflate

import (
	"bytes"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws/wsflate"
)

// accepted is the one answer the server gives to an offer it accepts.
var accepted = wsflate.Parameters{
	ServerNoContextTakeover: true,
	ClientNoContextTakeover: true,
}.Option()

// Negotiator negotiates permessage-deflate for one handshake; its zero
// value accepts. Use a new one (its zero value) for each handshake.
type Negotiator struct {
	// Off declines every offer (compression disabled).
	Off      bool
	accepted bool
}

// Accepted reports whether n accepted an offer.
func (n *Negotiator) Accepted() bool { return n.accepted }

// Negotiate answers one extension offer of a Sec-WebSocket-Extensions
// header (ws.Upgrader.Negotiate calls it once per offer, in the client's
// order of preference); once an offer is accepted, later ones (the
// client's fallbacks) are declined. It returns the option to put in the response, or
// the zero option to decline the offer; it never fails the handshake, so
// a bad offer costs the client compression, not its connection.
//
// Declined: other extensions; an offer whose parameters RFC 7692 forbids
// (unknown, repeated, or out of range: Parameters.Parse); and one asking for
// server_max_window_bits below 15, because the server compresses each
// publication once for every subscriber with Go's compress/flate, whose
// window is always 32 KiB (RFC 7692 7.1.2.1 lets a server decline such an
// offer; clients that want it send a fallback offer after it, which is then
// accepted). client_max_window_bits, with or without a value, is accepted
// and not echoed: the server inflates with a full window whatever the
// client uses.
func (n *Negotiator) Negotiate(opt httphead.Option) (httphead.Option, error) {
	if n.Off || n.accepted || !bytes.Equal(opt.Name, wsflate.ExtensionNameBytes) {
		return httphead.Option{}, nil
	}
	var p wsflate.Parameters
	if err := p.Parse(opt); err != nil {
		return httphead.Option{}, nil
	}
	if p.ServerMaxWindowBits.Defined() && p.ServerMaxWindowBits < 15 {
		return httphead.Option{}, nil
	}
	n.accepted = true
	return accepted, nil
}
