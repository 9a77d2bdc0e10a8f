package codec

import (
	"encoding/binary"
	"math"
	"unicode/utf8"
)

// This file holds the hand-written msgpack reader and writer primitives.
// Positions are byte indexes into the input; a negative result means the
// input is malformed or truncated.

// msgpack format bytes.
const (
	mpNil      = 0xc0
	mpNever    = 0xc1
	mpFalse    = 0xc2
	mpTrue     = 0xc3
	mpBin8     = 0xc4
	mpBin16    = 0xc5
	mpBin32    = 0xc6
	mpExt8     = 0xc7
	mpExt16    = 0xc8
	mpExt32    = 0xc9
	mpFloat32  = 0xca
	mpFloat64  = 0xcb
	mpUint8    = 0xcc
	mpUint16   = 0xcd
	mpUint32   = 0xce
	mpUint64   = 0xcf
	mpInt8     = 0xd0
	mpInt16    = 0xd1
	mpInt32    = 0xd2
	mpInt64    = 0xd3
	mpFixExt1  = 0xd4
	mpFixExt16 = 0xd8
	mpStr8     = 0xd9
	mpStr16    = 0xda
	mpStr32    = 0xdb
	mpArray16  = 0xdc
	mpArray32  = 0xdd
	mpMap16    = 0xde
	mpMap32    = 0xdf
)

// mpLen reads an n-byte (1, 2 or 4) big-endian length at b[i:]; -1 if
// truncated.
func mpLen(b []byte, i, n int) int {
	if len(b)-i < n {
		return -1
	}
	switch n {
	case 1:
		return int(b[i])
	case 2:
		return int(binary.BigEndian.Uint16(b[i:]))
	default:
		return int(binary.BigEndian.Uint32(b[i:]))
	}
}

// mpStr reads a str at i. ok is false when the value at i is not a str
// (next is then i); next is -1 when it is a truncated str.
func mpStr(b []byte, i int) (s []byte, next int, ok bool) {
	if i >= len(b) {
		return nil, -1, false
	}
	c := b[i]
	var n, h int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n, h = int(c&0x1f), 1
	case c == mpStr8:
		n, h = mpLen(b, i+1, 1), 2
	case c == mpStr16:
		n, h = mpLen(b, i+1, 2), 3
	case c == mpStr32:
		n, h = mpLen(b, i+1, 4), 5
	default:
		return nil, i, false
	}
	if n < 0 || len(b)-i-h < n {
		return nil, -1, true
	}
	i += h
	return b[i : i+n : i+n], i + n, true
}

// mpMapLen reads a map header at i; ok is false when the value is not a map.
func mpMapLen(b []byte, i int) (n, next int, ok bool) {
	if i >= len(b) {
		return 0, -1, false
	}
	switch c := b[i]; {
	case c >= 0x80 && c <= 0x8f:
		return int(c & 0x0f), i + 1, true
	case c == mpMap16:
		n = mpLen(b, i+1, 2)
		if n < 0 {
			return 0, -1, true
		}
		return n, i + 3, true
	case c == mpMap32:
		n = mpLen(b, i+1, 4)
		if n < 0 {
			return 0, -1, true
		}
		return n, i + 5, true
	}
	return 0, i, false
}

// mpArrayLen reads an array header at i; ok is false when it is not an array.
func mpArrayLen(b []byte, i int) (n, next int, ok bool) {
	if i >= len(b) {
		return 0, -1, false
	}
	switch c := b[i]; {
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f), i + 1, true
	case c == mpArray16:
		n = mpLen(b, i+1, 2)
		if n < 0 {
			return 0, -1, true
		}
		return n, i + 3, true
	case c == mpArray32:
		n = mpLen(b, i+1, 4)
		if n < 0 {
			return 0, -1, true
		}
		return n, i + 5, true
	}
	return 0, i, false
}

// Integer read results.
const (
	mpIntOK  = iota // an unsigned value (or a non-negative signed one)
	mpIntNeg        // a negative integer (v holds it as int64 bits)
	mpIntNot        // not an integer: nothing consumed
	mpIntNil        // nil: consumed
)

// mpInt reads an integer of any width at i. next is -1 when truncated.
func mpInt(b []byte, i int) (v uint64, next int, kind int) {
	if i >= len(b) {
		return 0, -1, mpIntNot
	}
	c := b[i]
	if c <= 0x7f {
		return uint64(c), i + 1, mpIntOK
	}
	if c >= 0xe0 {
		return uint64(int64(int8(c))), i + 1, mpIntNeg
	}
	var size int
	switch c {
	case mpNil:
		return 0, i + 1, mpIntNil
	case mpUint8, mpInt8:
		size = 1
	case mpUint16, mpInt16:
		size = 2
	case mpUint32, mpInt32:
		size = 4
	case mpUint64, mpInt64:
		size = 8
	default:
		return 0, i, mpIntNot
	}
	if len(b)-i-1 < size {
		return 0, -1, mpIntNot
	}
	p := b[i+1:]
	switch c {
	case mpUint8:
		v = uint64(p[0])
	case mpUint16:
		v = uint64(binary.BigEndian.Uint16(p))
	case mpUint32:
		v = uint64(binary.BigEndian.Uint32(p))
	case mpUint64:
		v = binary.BigEndian.Uint64(p)
	case mpInt8:
		v = uint64(int64(int8(p[0])))
	case mpInt16:
		v = uint64(int64(int16(binary.BigEndian.Uint16(p))))
	case mpInt32:
		v = uint64(int64(int32(binary.BigEndian.Uint32(p))))
	case mpInt64:
		v = binary.BigEndian.Uint64(p)
	}
	kind = mpIntOK
	if c >= mpInt8 && int64(v) < 0 {
		kind = mpIntNeg
	}
	return v, i + 1 + size, kind
}

// mscan validates msgpack values. err is the fatal error (ErrMalformed or
// ErrTooDeep) when a method returns -1. With check set it also records in
// unsup the first value that JSON cannot express (ext, non-string map key,
// invalid UTF-8 in a str, NaN or infinite float) and goes on scanning.
type mscan struct {
	b     []byte
	check bool
	err   error
	unsup error
}

func (s *mscan) fail() int {
	if s.err == nil {
		s.err = ErrMalformed
	}
	return -1
}

func (s *mscan) note(err error) {
	if s.check && s.unsup == nil {
		s.unsup = err
	}
}

// skipBytes returns i+n if the input holds n more bytes after i, else -1.
func (s *mscan) skipBytes(i, n int) int {
	if n < 0 || len(s.b)-i < n {
		return s.fail()
	}
	return i + n
}

// value validates the value at i and returns the index after it.
func (s *mscan) value(i, depth int) int {
	b := s.b
	if i >= len(b) {
		return s.fail()
	}
	c := b[i]
	switch {
	case c <= 0x7f || c >= 0xe0:
		return i + 1
	case c <= 0x8f:
		return s.mapBody(i+1, int(c&0x0f), depth+1)
	case c <= 0x9f:
		return s.arrayBody(i+1, int(c&0x0f), depth+1)
	case c <= 0xbf:
		return s.str(i+1, int(c&0x1f))
	}
	switch c {
	case mpNil, mpFalse, mpTrue:
		return i + 1
	case mpBin8, mpBin16, mpBin32:
		h := 1 << (c - mpBin8)
		return s.skipBytes(i+1+h, mpLen(b, i+1, h))
	case mpExt8, mpExt16, mpExt32:
		h := 1 << (c - mpExt8)
		s.note(errExt)
		return s.skipBytes(i+2+h, mpLen(b, i+1, h))
	case mpFloat32:
		if len(b)-i < 5 {
			return s.fail()
		}
		f := math.Float32frombits(binary.BigEndian.Uint32(b[i+1:]))
		if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
			s.note(errNonFinite)
		}
		return i + 5
	case mpFloat64:
		if len(b)-i < 9 {
			return s.fail()
		}
		f := math.Float64frombits(binary.BigEndian.Uint64(b[i+1:]))
		if math.IsNaN(f) || math.IsInf(f, 0) {
			s.note(errNonFinite)
		}
		return i + 9
	case mpUint8, mpInt8:
		return s.skipBytes(i+1, 1)
	case mpUint16, mpInt16:
		return s.skipBytes(i+1, 2)
	case mpUint32, mpInt32:
		return s.skipBytes(i+1, 4)
	case mpUint64, mpInt64:
		return s.skipBytes(i+1, 8)
	case mpFixExt1, mpFixExt1 + 1, mpFixExt1 + 2, mpFixExt1 + 3, mpFixExt16:
		s.note(errExt)
		return s.skipBytes(i+2, 1<<(c-mpFixExt1))
	case mpStr8, mpStr16, mpStr32:
		h := 1 << (c - mpStr8)
		return s.str(i+1+h, mpLen(b, i+1, h))
	case mpArray16, mpArray32:
		h := 2 << (c - mpArray16)
		n := mpLen(b, i+1, h)
		if n < 0 {
			return s.fail()
		}
		return s.arrayBody(i+1+h, n, depth+1)
	case mpMap16, mpMap32:
		h := 2 << (c - mpMap16)
		n := mpLen(b, i+1, h)
		if n < 0 {
			return s.fail()
		}
		return s.mapBody(i+1+h, n, depth+1)
	}
	return s.fail() // 0xc1
}

// str validates the n bytes of a str body at i (the header is before i).
func (s *mscan) str(i, n int) int {
	end := s.skipBytes(i, n)
	if end >= 0 && s.check && !validUTF8(s.b[i:end]) {
		s.note(errInvalidUTF8)
	}
	return end
}

func (s *mscan) arrayBody(i, n, depth int) int {
	if depth > MaxDepth {
		s.err = ErrTooDeep
		return -1
	}
	for ; n > 0 && i >= 0; n-- {
		i = s.value(i, depth)
	}
	return i
}

func (s *mscan) mapBody(i, n, depth int) int {
	if depth > MaxDepth {
		s.err = ErrTooDeep
		return -1
	}
	for ; n > 0 && i >= 0; n-- {
		if i < len(s.b) {
			if c := s.b[i]; !(c >= 0xa0 && c <= 0xbf) && (c < mpStr8 || c > mpStr32) {
				s.note(errMapKey)
			}
		}
		i = s.value(i, depth)
		if i >= 0 {
			i = s.value(i, depth)
		}
	}
	return i
}

// Writers.

func mpAppendMapHeader(dst []byte, n int) []byte {
	switch {
	case n < 16:
		return append(dst, 0x80|byte(n))
	case n <= math.MaxUint16:
		return append(dst, mpMap16, byte(n>>8), byte(n))
	}
	return append(dst, mpMap32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func mpAppendArrayHeader(dst []byte, n int) []byte {
	switch {
	case n < 16:
		return append(dst, 0x90|byte(n))
	case n <= math.MaxUint16:
		return append(dst, mpArray16, byte(n>>8), byte(n))
	}
	return append(dst, mpArray32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func mpAppendStrHeader(dst []byte, n int) []byte {
	switch {
	case n < 32:
		return append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		return append(dst, mpStr8, byte(n))
	case n <= math.MaxUint16:
		return append(dst, mpStr16, byte(n>>8), byte(n))
	}
	return append(dst, mpStr32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func mpAppendBinHeader(dst []byte, n int) []byte {
	switch {
	case n <= math.MaxUint8:
		return append(dst, mpBin8, byte(n))
	case n <= math.MaxUint16:
		return append(dst, mpBin16, byte(n>>8), byte(n))
	}
	return append(dst, mpBin32, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

func mpAppendStr(dst []byte, s string) []byte {
	return append(mpAppendStrHeader(dst, len(s)), s...)
}

func mpAppendStrBytes(dst []byte, s []byte) []byte {
	return append(mpAppendStrHeader(dst, len(s)), s...)
}

// mpAppendUint appends v in its shortest form.
func mpAppendUint(dst []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= math.MaxUint8:
		return append(dst, mpUint8, byte(v))
	case v <= math.MaxUint16:
		return append(dst, mpUint16, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		return append(dst, mpUint32, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, mpUint64), v)
}

// mpAppendInt appends v in its shortest form (unsigned formats when v >= 0).
func mpAppendInt(dst []byte, v int64) []byte {
	if v >= 0 {
		return mpAppendUint(dst, uint64(v))
	}
	switch {
	case v >= -32:
		return append(dst, byte(v))
	case v >= math.MinInt8:
		return append(dst, mpInt8, byte(v))
	case v >= math.MinInt16:
		return append(dst, mpInt16, byte(v>>8), byte(v))
	case v >= math.MinInt32:
		return append(dst, mpInt32, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, mpInt64), uint64(v))
}

func mpAppendFloat64(dst []byte, f float64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, mpFloat64), math.Float64bits(f))
}

func mpAppendBool(dst []byte, v bool) []byte {
	if v {
		return append(dst, mpTrue)
	}
	return append(dst, mpFalse)
}

// validUTF8 is utf8.Valid with a fast path for the short ASCII strings
// that make up most keys and values.
func validUTF8(b []byte) bool {
	if len(b) <= 16 {
		for _, c := range b {
			if c >= utf8.RuneSelf {
				return utf8.Valid(b)
			}
		}
		return true
	}
	return utf8.Valid(b)
}
