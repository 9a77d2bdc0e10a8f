package deflate

import (
	"compress/flate"
	"errors"
	"io"
	"sync"

	"github.com/fanout-dev/fanout/engine/wsframe"
)

// Defaults of Compressor.
const (
	// DefaultMinBytes: payloads shorter than this are not compressed. Below
	// a few hundred bytes deflate saves little (its block header and the
	// lack of a shared context eat most of it) and costs a compressor
	// reset per message.
	DefaultMinBytes = 256
	// DefaultLevel is flate.BestSpeed: see bench/README.md
	// ("permessage-deflate") for the levels measured.
	DefaultLevel = flate.BestSpeed
)

// Compressor compresses finished frames. Its zero value uses the defaults;
// it is safe for concurrent use.
type Compressor struct {
	// MinBytes: a payload shorter than this is sent as it is. If zero,
	// DefaultMinBytes; if negative, every payload is compressed.
	MinBytes int
	// Level is the compress/flate level, 1 (BestSpeed) to 9
	// (BestCompression). If zero, DefaultLevel.
	Level int
}

func (c Compressor) minBytes() int {
	switch {
	case c.MinBytes == 0:
		return DefaultMinBytes
	case c.MinBytes < 0:
		return 0
	}
	return c.MinBytes
}

// writers pools compressors per level (index level-1).
var writers [flate.BestCompression]sync.Pool

// frameWriter appends what the compressor writes to a frame's buffer.
type frameWriter struct{ f *wsframe.Frame }

func (w *frameWriter) Write(p []byte) (int, error) {
	w.f.B = append(w.f.B, p...)
	return len(p), nil
}

type pooledWriter struct {
	fw frameWriter
	zw *flate.Writer
}

// syncTail ends every sync flush; RFC 7692 7.2.1 removes it from the
// message and the receiver puts it back.
var syncTail = []byte{0x00, 0x00, 0xff, 0xff}

// Frame returns plain, a finished data frame (text or binary, FIN set),
// as a compressed frame (RSV1 set) holding one reference, or nil when plain
// is not worth compressing: its payload is under MinBytes, or compressed
// it would not be shorter. plain is left as it is, references included.
func (c Compressor) Frame(plain *wsframe.Frame) *wsframe.Frame {
	payload := plain.Payload()
	if len(payload) < c.minBytes() {
		return nil
	}
	level := c.Level
	if level < flate.BestSpeed || level > flate.BestCompression {
		level = DefaultLevel
	}
	pw, _ := writers[level-1].Get().(*pooledWriter)
	f := wsframe.Get()
	if pw == nil {
		pw = &pooledWriter{}
		pw.fw.f = f
		pw.zw, _ = flate.NewWriter(&pw.fw, level) // level is valid
	} else {
		pw.fw.f = f
		pw.zw.Reset(&pw.fw)
	}
	_, err := pw.zw.Write(payload)
	if err == nil {
		err = pw.zw.Flush()
	}
	pw.fw.f = nil
	writers[level-1].Put(pw)
	n := len(f.B) - len(syncTail)
	if err != nil || n < wsframe.MaxHeaderLen || string(f.B[n:]) != string(syncTail) ||
		n-wsframe.MaxHeaderLen >= len(payload) {
		f.Release()
		return nil
	}
	f.B = f.B[:n]
	return f.FinishCompressed(plain.OpCode())
}

// Sentinel errors of Inflate.
var (
	// ErrTooLarge: the message inflates to more than the limit.
	ErrTooLarge = errors.New("deflate: message too large once inflated")
	// ErrCorrupt: the message is not a valid DEFLATE stream (or uses a
	// context the server told the client not to keep).
	ErrCorrupt = errors.New("deflate: invalid compressed data")
	// ErrNoRoom: Inflate's reserve refused the next bytes.
	ErrNoRoom = errors.New("deflate: no room for the inflated message")
)

// inflateTail follows a message's bytes: the sync-flush tail RFC 7692
// removed, then an empty final stored block so that the reader ends with
// io.EOF instead of waiting for more.
var inflateTail = []byte{0x00, 0x00, 0xff, 0xff, 0x01, 0x00, 0x00, 0xff, 0xff}

// source feeds a message and inflateTail to the decompressor. It is an
// io.ByteReader, so flate reads it directly instead of through a bufio
// reader of its own (an allocation per message).
type source struct {
	msg  []byte
	tail []byte
}

func (s *source) Read(p []byte) (int, error) {
	if len(s.msg) > 0 {
		n := copy(p, s.msg)
		s.msg = s.msg[n:]
		return n, nil
	}
	if len(s.tail) > 0 {
		n := copy(p, s.tail)
		s.tail = s.tail[n:]
		return n, nil
	}
	return 0, io.EOF
}

func (s *source) ReadByte() (byte, error) {
	if len(s.msg) > 0 {
		b := s.msg[0]
		s.msg = s.msg[1:]
		return b, nil
	}
	if len(s.tail) > 0 {
		b := s.tail[0]
		s.tail = s.tail[1:]
		return b, nil
	}
	return 0, io.EOF
}

type pooledReader struct {
	src source
	zr  io.ReadCloser
}

var readers sync.Pool

// inflateChunk is the most Inflate grows its output by at a time, so that a
// small message that claims to be large does not make it reserve much.
const inflateChunk = 32 << 10

// Inflate appends the inflation of msg, one compressed message without its
// sync-flush tail (RFC 7692 7.2.2), to dst and returns it. It stops as
// soon as the output would pass limit bytes (ErrTooLarge), so a deflate
// bomb costs at most limit bytes and the time to inflate them. The
// decompressor starts with no context: the server negotiated
// client_no_context_takeover.
//
// reserve, when not nil, is asked for the output's bytes before they are
// inflated (in steps of at most 32 KiB, never more than limit+1 in all): a
// false answer stops with ErrNoRoom. It lets the caller count what a few
// bytes on the wire turn into against a budget before it is in memory.
func Inflate(dst []byte, msg []byte, limit int, reserve func(n int) bool) ([]byte, error) {
	pr, _ := readers.Get().(*pooledReader)
	if pr == nil {
		pr = &pooledReader{}
		pr.src = source{msg: msg, tail: inflateTail}
		pr.zr = flate.NewReader(&pr.src)
	} else {
		pr.src = source{msg: msg, tail: inflateTail}
		_ = pr.zr.(flate.Resetter).Reset(&pr.src, nil)
	}
	defer func() {
		pr.src = source{}
		readers.Put(pr)
	}()
	start, reserved := len(dst), 0
	for {
		if len(dst) == cap(dst) {
			grow := min(max(cap(dst)-start, 512), inflateChunk)
			dst = append(dst, make([]byte, grow)...)[:len(dst)]
		}
		room := min(cap(dst)-len(dst), limit+1-(len(dst)-start), inflateChunk)
		if need := len(dst) - start + room - reserved; reserve != nil && need > 0 {
			if !reserve(need) {
				return dst, ErrNoRoom
			}
			reserved += need
		}
		n, err := pr.zr.Read(dst[len(dst) : len(dst)+room])
		dst = dst[:len(dst)+n]
		if len(dst)-start > limit {
			return dst, ErrTooLarge
		}
		switch {
		case err == io.EOF:
			return dst, nil
		case err != nil:
			return dst, ErrCorrupt
		}
	}
}
