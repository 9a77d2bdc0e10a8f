package wsframe

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
)

// MaxHeaderLen is the longest header of an unmasked server frame: 2 bytes of
// flags and length, 8 bytes of extended length.
const MaxHeaderLen = 10

// Frame is one complete server-to-client WebSocket frame held in a pooled
// buffer. It is reference counted: every queue that holds it owns one
// reference and calls Release when the bytes have been written (or dropped).
// The buffer returns to the pool after the last Release.
//
// Build a frame with Get, append the payload to B, then call Finish. After
// Finish the frame is immutable and safe to share between goroutines.
type Frame struct {
	// B is the buffer being filled. It starts with MaxHeaderLen reserved
	// bytes; append the payload after them. Do not touch B after Finish.
	B []byte

	bb    *bytebufferpool.ByteBuffer
	start int
	refs  atomic.Int32

	// age, when set by Track, receives the seconds from born (monotonic
	// nanoseconds since clockBase) to the last Release (track.go).
	age  Observer
	born int64
}

var (
	bufferPool bytebufferpool.Pool
	framePool  = sync.Pool{New: func() any { return new(Frame) }}

	// built counts frames finished since process start (see Built).
	built atomic.Uint64
	// live counts frames taken with Get and not yet released for the last
	// time (see Live).
	live atomic.Int64
)

var reserved [MaxHeaderLen]byte

// Get returns an empty frame holding one reference, with B ready for the
// payload to be appended.
func Get() *Frame {
	f := framePool.Get().(*Frame)
	f.bb = bufferPool.Get()
	f.B = append(f.bb.B[:0], reserved[:]...)
	f.start = 0
	f.refs.Store(1)
	live.Add(1)
	return f
}

// Finish writes the header for a final (FIN) frame of the given opcode in
// front of the payload appended to B and returns f. The header is written
// right-aligned into the reserved space, so no byte of the payload moves.
func (f *Frame) Finish(op ws.OpCode) *Frame {
	n := len(f.B) - MaxHeaderLen
	var hl int
	switch {
	case n <= 125:
		hl = 2
	case n <= 0xffff:
		hl = 4
	default:
		hl = 10
	}
	f.start = MaxHeaderLen - hl
	h := f.B[f.start:MaxHeaderLen]
	h[0] = 0x80 | byte(op)
	switch hl {
	case 2:
		h[1] = byte(n)
	case 4:
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	built.Add(1)
	return f
}

// FinishCompressed is Finish for a payload compressed with
// permessage-deflate: the header also has RSV1 set (RFC 7692 6).
func (f *Frame) FinishCompressed(op ws.OpCode) *Frame {
	f.Finish(op)
	f.B[f.start] |= rsv1
	return f
}

// rsv1 is the first header byte's "per-message compressed" bit.
const rsv1 = 0x40

// OpCode is the opcode of a finished frame.
func (f *Frame) OpCode() ws.OpCode { return ws.OpCode(f.B[f.start] & 0x0f) }

// Compressed reports whether a finished frame is marked compressed (RSV1).
func (f *Frame) Compressed() bool { return f.B[f.start]&rsv1 != 0 }

// FinishRaw marks f as raw bytes to be written as they are, with no frame
// header: the HTTP response of a handshake travels through the same queue.
func (f *Frame) FinishRaw() *Frame {
	f.start = MaxHeaderLen
	return f
}

// Bytes returns the complete frame, header included. Valid until the last
// Release; callers must not modify it.
func (f *Frame) Bytes() []byte { return f.B[f.start:] }

// Payload returns the frame's payload (the bytes after the header).
func (f *Frame) Payload() []byte { return f.B[MaxHeaderLen:] }

// Len is the length of the complete frame in bytes.
func (f *Frame) Len() int { return len(f.B) - f.start }

// Retain adds n references, typically once per batch of receivers rather
// than once per receiver to keep the shared counter off the hot path.
func (f *Frame) Retain(n int) { f.refs.Add(int32(n)) }

// Release drops one reference. The last one returns the buffer to the pool.
func (f *Frame) Release() {
	switch r := f.refs.Add(-1); {
	case r > 0:
		return
	case r < 0:
		panic("wsframe: Release of a frame with no references")
	}
	// Put sees the used length: bytebufferpool calibrates its size classes
	// from it and would drop every buffer as oversized if it saw zero.
	live.Add(-1)
	if f.age != nil {
		f.observeAge()
	}
	f.bb.B = f.B
	bufferPool.Put(f.bb)
	f.bb, f.B = nil, nil
	framePool.Put(f)
}

// Live reports how many frames are held: taken with Get and not yet
// released by their last holder. Leak checks compare it before and after.
func Live() int64 { return live.Load() }

// Built reports how many frames have been finished since the process
// started. Tests use it to prove that a broadcast is encoded once.
func Built() uint64 { return built.Load() }

// New builds a finished frame with a copy of payload. For control frames and
// one-off replies; hot paths append into Get().B instead.
func New(op ws.OpCode, payload []byte) *Frame {
	f := Get()
	f.B = append(f.B, payload...)
	return f.Finish(op)
}

// Close builds a close frame carrying code and reason. The reason is cut to
// fit the 125-byte limit of control frames without splitting a UTF-8 rune.
func Close(code uint16, reason string) *Frame {
	f := Get()
	f.B = binary.BigEndian.AppendUint16(f.B, code)
	if len(reason) > 123 {
		cut := 123
		for cut > 0 && reason[cut]&0xc0 == 0x80 {
			cut--
		}
		reason = reason[:cut]
	}
	f.B = append(f.B, reason...)
	return f.Finish(ws.OpClose)
}
