package client

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/fanout-dev/fanout/codec"
	"github.com/vmihailenco/msgpack/v5"
)

// Publication is one message of a channel, as a Subscription or History
// delivers it.
type Publication struct {
	Channel string
	Epoch   string
	Offset  uint64
	// Data is the published value, raw in Encoding (the connection's
	// encoding): a JSON value or a msgpack value. Decode unmarshals it.
	Data []byte
	// Encoding is the encoding of Data.
	Encoding codec.Encoding
	// Info names the publisher's connection.
	Info codec.ClientInfo
}

// Position is the publication's place in its channel's history, suitable for
// SubscribeOptions.Recover.
func (p Publication) Position() codec.StreamPosition {
	return codec.StreamPosition{Epoch: p.Epoch, Offset: p.Offset}
}

// Decode unmarshals Data into v with encoding/json or msgpack (v5) according
// to Encoding. msgpack honours `json` struct tags when no `msgpack` tag is
// present, so one struct serves both encodings.
func (p Publication) Decode(v any) error {
	return unmarshal(p.Encoding, p.Data, v)
}

// PresenceKind says whether a PresenceEvent is a join or a leave.
type PresenceKind uint8

const (
	Join PresenceKind = iota + 1
	Leave
)

func (k PresenceKind) String() string {
	switch k {
	case Join:
		return "join"
	case Leave:
		return "leave"
	}
	return fmt.Sprintf("PresenceKind(%d)", uint8(k))
}

// PresenceEvent is a join or leave of a channel, delivered to subscriptions
// made with Presence: true.
type PresenceEvent struct {
	Channel string
	Kind    PresenceKind
	Info    codec.ClientInfo
}

// publication converts a decoded codec publication.
func publication(enc codec.Encoding, p *codec.Publication) Publication {
	data := p.JSON
	if enc == codec.Msgpack {
		data = p.Msgpack
	}
	return Publication{
		Channel:  p.Channel,
		Epoch:    p.Epoch,
		Offset:   p.Offset,
		Data:     data,
		Encoding: enc,
		Info:     p.Info,
	}
}

// marshal encodes v in enc.
func marshal(enc codec.Encoding, v any) ([]byte, error) {
	if enc == codec.Msgpack {
		var buf bytes.Buffer
		e := msgpack.NewEncoder(&buf)
		e.SetCustomStructTag("json")
		if err := e.Encode(v); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return json.Marshal(v)
}

// unmarshal decodes data, one value in enc, into v.
func unmarshal(enc codec.Encoding, data []byte, v any) error {
	if enc == codec.Msgpack {
		d := msgpack.NewDecoder(bytes.NewReader(data))
		d.SetCustomStructTag("json")
		return d.Decode(v)
	}
	return json.Unmarshal(data, v)
}

// validValue reports whether data is exactly one complete value in enc.
func validValue(enc codec.Encoding, data []byte) bool {
	if enc == codec.Msgpack {
		r := bytes.NewReader(data)
		d := msgpack.NewDecoder(r)
		return len(data) > 0 && d.Skip() == nil && r.Len() == 0
	}
	return json.Valid(data)
}
