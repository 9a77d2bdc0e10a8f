package main

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gobwas/ws"
)

// protocol builds and parses the messages of one --protocol.
//
// raw: a data message is a binary frame whose payload is an 8-byte
// big-endian send time (unix nanoseconds), a 4-byte big-endian publisher
// tag, then padding up to --size. Time 0 marks a readiness probe.
//
// fanout-json / fanout-msgpack: PROTOCOL.md. Publish data is the object
// {"t": send time in unix nanoseconds, "p": padding}, padded so that the
// encoded value is --size bytes (or as small as it can be).
type protocol struct {
	raw  bool
	enc  codec.Encoding
	size int
}

func newProtocol(cfg *Config) *protocol {
	p := &protocol{raw: cfg.Protocol == protoRaw, size: cfg.Size}
	switch cfg.Protocol {
	case protoFanoutJSON:
		p.enc = codec.JSON
	case protoFanoutMsgpack:
		p.enc = codec.Msgpack
	}
	return p
}

// subprotocol is the Sec-WebSocket-Protocol to offer.
func (p *protocol) subprotocol() string {
	switch {
	case p.raw:
		return ""
	case p.enc == codec.Msgpack:
		return codec.SubprotocolMsgpack
	}
	return codec.SubprotocolJSON
}

// opcode is the frame opcode of data messages.
func (p *protocol) opcode() ws.OpCode {
	if p.enc == codec.JSON {
		return ws.OpText
	}
	return ws.OpBinary
}

// appendRaw appends a raw payload.
func (p *protocol) appendRaw(dst []byte, t int64, tag uint32) []byte {
	n := p.size
	start := len(dst)
	dst = append(dst, make([]byte, n)...)
	b := dst[start:]
	binary.BigEndian.PutUint64(b[0:8], uint64(t))
	if n >= 12 {
		binary.BigEndian.PutUint32(b[8:12], tag)
		for i := 12; i < n; i++ {
			b[i] = 'x'
		}
	}
	return dst
}

// parseRaw returns a raw payload's send time and tag (tag 0 when absent).
func parseRaw(b []byte) (t int64, tag uint32, ok bool) {
	if len(b) < 8 {
		return 0, 0, false
	}
	t = int64(binary.BigEndian.Uint64(b[0:8]))
	if len(b) >= 12 {
		tag = binary.BigEndian.Uint32(b[8:12])
	}
	return t, tag, true
}

// appendData appends the publish data value {"t":t,"p":"xx.."} in the
// connection's encoding.
func (p *protocol) appendData(dst []byte, t int64) []byte {
	if p.enc == codec.Msgpack {
		// fixmap(2), "t", int64, "p": 14 bytes, then the str header.
		r := p.size - 14
		var pad int
		switch {
		case r-1 <= 31:
			pad = r - 1
		case r-2 <= 0xff:
			pad = r - 2
		case r-3 <= 0xffff:
			pad = r - 3
		default:
			pad = r - 5
		}
		if pad < 0 {
			pad = 0
		}
		dst = append(dst, 0x82, 0xa1, 't', 0xd3)
		dst = binary.BigEndian.AppendUint64(dst, uint64(t))
		dst = append(dst, 0xa1, 'p')
		switch {
		case pad <= 31:
			dst = append(dst, 0xa0|byte(pad))
		case pad <= 0xff:
			dst = append(dst, 0xd9, byte(pad))
		case pad <= 0xffff:
			dst = append(dst, 0xda, byte(pad>>8), byte(pad))
		default:
			dst = append(dst, 0xdb)
			dst = binary.BigEndian.AppendUint32(dst, uint32(pad))
		}
		return appendPad(dst, pad)
	}
	start := len(dst)
	dst = append(dst, `{"t":`...)
	dst = strconv.AppendInt(dst, t, 10)
	dst = append(dst, `,"p":"`...)
	pad := p.size - (len(dst) - start) - 2
	if pad < 0 {
		pad = 0
	}
	dst = appendPad(dst, pad)
	return append(dst, `"}`...)
}

func appendPad(dst []byte, n int) []byte {
	for ; n > 0; n-- {
		dst = append(dst, 'x')
	}
	return dst
}

// appendPublish appends a fanout publish command.
func (p *protocol) appendPublish(dst, scratch []byte, channel []byte, id uint64, t int64) ([]byte, []byte) {
	scratch = p.appendData(scratch[:0], t)
	cmd := codec.Command{Op: codec.OpPublish, ID: id, HasID: true, Channel: channel, Data: scratch}
	return codec.AppendCommand(dst, p.enc, &cmd), scratch
}

// appendSubscribe appends a fanout subscribe command, with recover when
// hasPos.
func (p *protocol) appendSubscribe(dst []byte, channel []byte, id uint64, hasPos bool, epoch string, offset uint64) []byte {
	cmd := codec.Command{Op: codec.OpSubscribe, ID: id, HasID: true, Channel: channel}
	if hasPos {
		cmd.HasRecover = true
		cmd.RecoverEpoch = []byte(epoch)
		cmd.RecoverOffset = offset
	}
	return codec.AppendCommand(dst, p.enc, &cmd)
}

// dataTime extracts "t" from a publication's data in encoding enc.
func dataTime(enc codec.Encoding, data []byte) (int64, bool) {
	if enc == codec.Msgpack {
		return msgpackMapInt(data, "t")
	}
	return jsonObjectInt(data, "t")
}

// jsonObjectInt finds key's integer value in a flat JSON object such as
// {"t":123,"p":"xx"}. It is a scan, not a parser: in JSON a quote inside a
// string is escaped, so `"t"` followed by ':' can only be a key. (It looks
// for key and checks the quotes around it rather than building `"t"`: a
// string built per message cost more than the scan.)
func jsonObjectInt(b []byte, key string) (int64, bool) {
	for i := 0; ; {
		j := bytes.Index(b[i:], []byte(key))
		if j < 0 {
			return 0, false
		}
		start := i + j
		k := start + len(key)
		if start == 0 || b[start-1] != '"' || k >= len(b) || b[k] != '"' {
			i = start + 1
			continue
		}
		k++
		for k < len(b) && isJSONSpace(b[k]) {
			k++
		}
		if k < len(b) && b[k] == ':' {
			k++
			for k < len(b) && isJSONSpace(b[k]) {
				k++
			}
			neg := false
			if k < len(b) && b[k] == '-' {
				neg = true
				k++
			}
			var v int64
			n := 0
			for k < len(b) && b[k] >= '0' && b[k] <= '9' && n < 19 {
				v = v*10 + int64(b[k]-'0')
				k++
				n++
			}
			if n == 0 {
				return 0, false
			}
			if neg {
				v = -v
			}
			return v, true
		}
		i = k
	}
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// msgpackMapInt finds key's integer value in a msgpack map with string keys.
func msgpackMapInt(b []byte, key string) (int64, bool) {
	n, i, ok := mpMapLen(b, 0)
	if !ok {
		return 0, false
	}
	for ; n > 0; n-- {
		k, next, ok := mpStr(b, i)
		if !ok {
			return 0, false
		}
		i = next
		if string(k) == key {
			v, _, ok := mpInt(b, i)
			return v, ok
		}
		if i, ok = mpSkip(b, i); !ok {
			return 0, false
		}
	}
	return 0, false
}

func mpMapLen(b []byte, i int) (n, next int, ok bool) {
	if i >= len(b) {
		return 0, 0, false
	}
	c := b[i]
	switch {
	case c&0xf0 == 0x80:
		return int(c & 0x0f), i + 1, true
	case c == 0xde && i+3 <= len(b):
		return int(binary.BigEndian.Uint16(b[i+1:])), i + 3, true
	case c == 0xdf && i+5 <= len(b):
		return int(binary.BigEndian.Uint32(b[i+1:])), i + 5, true
	}
	return 0, 0, false
}

func mpStr(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) {
		return nil, 0, false
	}
	c := b[i]
	var n, h int
	switch {
	case c&0xe0 == 0xa0:
		n, h = int(c&0x1f), 1
	case c == 0xd9 && i+2 <= len(b):
		n, h = int(b[i+1]), 2
	case c == 0xda && i+3 <= len(b):
		n, h = int(binary.BigEndian.Uint16(b[i+1:])), 3
	case c == 0xdb && i+5 <= len(b):
		n, h = int(binary.BigEndian.Uint32(b[i+1:])), 5
	default:
		return nil, 0, false
	}
	if i+h+n > len(b) {
		return nil, 0, false
	}
	return b[i+h : i+h+n], i + h + n, true
}

func mpInt(b []byte, i int) (v int64, next int, ok bool) {
	if i >= len(b) {
		return 0, 0, false
	}
	c := b[i]
	need := func(n int) bool { return i+1+n <= len(b) }
	switch {
	case c <= 0x7f:
		return int64(c), i + 1, true
	case c >= 0xe0:
		return int64(int8(c)), i + 1, true
	case c == 0xcc && need(1):
		return int64(b[i+1]), i + 2, true
	case c == 0xcd && need(2):
		return int64(binary.BigEndian.Uint16(b[i+1:])), i + 3, true
	case c == 0xce && need(4):
		return int64(binary.BigEndian.Uint32(b[i+1:])), i + 5, true
	case c == 0xcf && need(8):
		return int64(binary.BigEndian.Uint64(b[i+1:])), i + 9, true
	case c == 0xd0 && need(1):
		return int64(int8(b[i+1])), i + 2, true
	case c == 0xd1 && need(2):
		return int64(int16(binary.BigEndian.Uint16(b[i+1:]))), i + 3, true
	case c == 0xd2 && need(4):
		return int64(int32(binary.BigEndian.Uint32(b[i+1:]))), i + 5, true
	case c == 0xd3 && need(8):
		return int64(binary.BigEndian.Uint64(b[i+1:])), i + 9, true
	}
	return 0, 0, false
}

// mpSkip skips one scalar value (enough for our own data objects).
func mpSkip(b []byte, i int) (int, bool) {
	if _, next, ok := mpInt(b, i); ok {
		return next, true
	}
	if _, next, ok := mpStr(b, i); ok {
		return next, true
	}
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == 0xc0 || c == 0xc2 || c == 0xc3:
		return i + 1, true
	case c == 0xca:
		return i + 5, i+5 <= len(b)
	case c == 0xcb:
		return i + 9, i+9 <= len(b)
	case c == 0xc4 && i+2 <= len(b):
		n := i + 2 + int(b[i+1])
		return n, n <= len(b)
	case c == 0xc5 && i+3 <= len(b):
		n := i + 3 + int(binary.BigEndian.Uint16(b[i+1:]))
		return n, n <= len(b)
	case c == 0xc6 && i+5 <= len(b):
		n := i + 5 + int(binary.BigEndian.Uint32(b[i+1:]))
		return n, n <= len(b)
	}
	return 0, false
}
