package engine

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// maxClientHeaderLen is the longest header a client frame can have: flags
// and length (2), extended length (8) and the masking key (4).
const maxClientHeaderLen = 14

// frameHeader is a parsed client frame header.
type frameHeader struct {
	fin    bool
	op     ws.OpCode
	length int64
	mask   [4]byte
	size   int  // header length in bytes
	rsv1   bool // compressed (permessage-deflate)
}

// parseHeader parses the header of a client frame from the start of b.
// When b is too short it returns need > 0: the number of bytes the header
// needs in total. Otherwise it validates the header against RFC 6455, and
// RFC 7692 when deflate (the connection negotiated permessage-deflate), and
// returns a *CloseError for a frame that must close the connection. The
// payload of a compressed frame may be a little longer than maxPayload
// (compressedLimit): the bound that matters is on its inflated size.
func parseHeader(b []byte, maxPayload int, deflate bool) (h frameHeader, need int, err *CloseError) {
	if len(b) < 2 {
		return h, 2, nil
	}
	b0, b1 := b[0], b[1]
	h.fin = b0&0x80 != 0
	h.op = ws.OpCode(b0 & 0x0f)
	masked := b1&0x80 != 0
	size := 2
	switch l := b1 & 0x7f; l {
	case 126:
		size += 2
	case 127:
		size += 8
	default:
		h.length = int64(l)
	}
	if masked {
		size += 4
	}
	if len(b) < size {
		return h, size, nil
	}
	h.size = size

	switch rsv := b0 & 0x70; {
	case rsv == 0:
	case rsv == 0x40 && deflate:
		h.rsv1 = true
	default:
		return h, 0, errReservedBits
	}
	switch h.op {
	case ws.OpText, ws.OpBinary:
	case ws.OpContinuation:
		if h.rsv1 {
			return h, 0, errMisplacedRSV1
		}
	case ws.OpClose, ws.OpPing, ws.OpPong:
		if !h.fin {
			return h, 0, errControlFragment
		}
		if h.rsv1 {
			return h, 0, errMisplacedRSV1
		}
	default:
		return h, 0, errReservedOpcode
	}
	if !masked {
		return h, 0, errUnmasked
	}
	switch b1 & 0x7f {
	case 126:
		h.length = int64(binary.BigEndian.Uint16(b[2:4]))
		if h.length < 126 {
			return h, 0, errBadLength // RFC 6455 5.2: minimal encoding
		}
	case 127:
		u := binary.BigEndian.Uint64(b[2:10])
		if u>>63 != 0 || u <= 0xffff {
			return h, 0, errBadLength
		}
		h.length = int64(u)
	}
	if h.op.IsControl() && h.length > 125 {
		return h, 0, errControlTooLong
	}
	if h.length > int64(maxPayload) && (!deflate || h.length > int64(compressedLimit(maxPayload))) {
		return h, 0, errTooBig
	}
	copy(h.mask[:], b[size-4:size])
	return h, 0, nil
}

// compressedLimit bounds the compressed bytes of a message that may
// inflate to at most max: deflate grows incompressible data by 5 bytes per
// 64 KiB stored block, which max/8192 + 64 covers with room to spare.
// (A compressed continuation frame is only known to be compressed from
// the message's first frame, so the header check applies this bound to
// every frame of a connection that negotiated deflate; the reassembly
// check applies the exact one.)
func compressedLimit(max int) int { return max + max/8192 + 64 }
