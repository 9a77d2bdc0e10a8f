package codec

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
)

// Transcode appends src, one complete value in encoding from, to dst in
// encoding to. It fails on values the other encoding cannot express.
//
// JSON to msgpack: objects become maps with str keys, arrays arrays, strings
// str, true/false/null bool/nil; a number becomes an integer (the shortest
// msgpack int or uint format) when its value is integral and fits in int64
// or uint64 (1.0 and 1e2 included), else a float64; negative zero (-0, -0.0)
// stays a float64 -0 so that its sign survives the round trip (JavaScript
// tells them apart). A lone surrogate escape
// such as "\ud800" (no Unicode character, so no UTF-8 string) and a number
// beyond float64 range (1e400) are ErrUnsupported.
//
// Msgpack to JSON: ints and uints in decimal, floats (float32 included,
// widened exactly to float64) in the shortest form that reads back as the
// same float64, except that integral floats within int64/uint64 range are
// written as their exact integer (so that they come back as that integer), str as JSON strings (escaped; invalid UTF-8 is
// ErrUnsupported), bin as a standard base64 string with padding (so it comes
// back from JSON as a str: the one non-reversible mapping), nil/bool as
// null/true/false. Ext values (the timestamp type included), map keys that
// are not str and NaN or infinite floats are ErrUnsupported.
//
// With from == to the value is validated exactly as for a conversion (so
// Transcode(x, e, e) succeeds if and only if Transcode(x, e, other) does) and
// copied unchanged; JSON is copied without surrounding whitespace.
//
// Leading and trailing JSON whitespace is allowed; anything else after the
// value is ErrMalformed. Errors wrap ErrMalformed, ErrTooDeep or
// ErrUnsupported (errors.Is); on error dst is returned unchanged (its length
// restored).
func Transcode(dst []byte, from, to Encoding, src []byte) ([]byte, error) {
	if (from != JSON && from != Msgpack) || (to != JSON && to != Msgpack) {
		return dst, ErrEncoding
	}
	if from == JSON {
		start := skipWS(src, 0)
		if to == JSON {
			s := jscan{b: src}
			end := s.value(start, 0)
			if end < 0 {
				return dst, s.err
			}
			if skipWS(src, end) != len(src) {
				return dst, ErrMalformed
			}
			if s.unsup != nil {
				return dst, s.unsup
			}
			return append(dst, src[start:end]...), nil
		}
		t := j2m{b: src, out: dst}
		end := t.value(start, 0)
		if end >= 0 && skipWS(src, end) != len(src) {
			end, t.err = -1, ErrMalformed
		}
		if end < 0 {
			return dst, t.err
		}
		return t.out, nil
	}
	if to == Msgpack {
		s := mscan{b: src, check: true}
		end := s.value(0, 0)
		if end < 0 {
			return dst, s.err
		}
		if end != len(src) {
			return dst, ErrMalformed
		}
		if s.unsup != nil {
			return dst, s.unsup
		}
		return append(dst, src...), nil
	}
	t := m2j{b: src, out: dst}
	end := t.value(0, 0)
	if end >= 0 && end != len(src) {
		end, t.err = -1, ErrMalformed
	}
	if end < 0 {
		return dst, t.err
	}
	return t.out, nil
}

// j2m converts JSON to msgpack, appending to out. A method returns -1 and
// sets err on any failure.
type j2m struct {
	b   []byte
	out []byte
	err error
}

func (t *j2m) fail(err error) int {
	if t.err == nil {
		t.err = err
	}
	return -1
}

func (t *j2m) value(i, depth int) int {
	b := t.b
	if i >= len(b) {
		return t.fail(ErrMalformed)
	}
	switch c := b[i]; c {
	case '"':
		return t.str(i)
	case '{':
		return t.object(i+1, depth+1)
	case '[':
		return t.array(i+1, depth+1)
	case 't':
		return t.lit(i, "true", mpTrue)
	case 'f':
		return t.lit(i, "false", mpFalse)
	case 'n':
		return t.lit(i, "null", mpNil)
	}
	end, kind, big := scanNumber(b, i)
	if end < 0 {
		return t.fail(ErrMalformed)
	}
	num := b[i:end]
	if kind == numInt && !big {
		if num[0] == '-' {
			if v, ok := parseUintDigits(num[1:]); ok && v <= 1<<63 && v != 0 {
				t.out = mpAppendInt(t.out, int64(-v))
				return end
			}
		} else if v, ok := parseUintDigits(num); ok {
			t.out = mpAppendUint(t.out, v)
			return end
		}
	}
	f := parseFloat(num)
	switch {
	case math.IsInf(f, 0):
		return t.fail(errNumberRange)
	case f != math.Trunc(f), f == 0 && math.Signbit(f):
		t.out = mpAppendFloat64(t.out, f)
	case f >= -(1<<63) && f < 1<<63:
		t.out = mpAppendInt(t.out, int64(f))
	case f >= 0 && f < 1<<64:
		t.out = mpAppendUint(t.out, uint64(f))
	default:
		t.out = mpAppendFloat64(t.out, f)
	}
	return end
}

func (t *j2m) lit(i int, word string, code byte) int {
	if len(t.b)-i < len(word) || string(t.b[i:i+len(word)]) != word {
		return t.fail(ErrMalformed)
	}
	t.out = append(t.out, code)
	return i + len(word)
}

// str converts the string whose opening quote is at i.
func (t *j2m) str(i int) int {
	end, fl := scanString(t.b, i+1)
	if end < 0 {
		return t.fail(ErrMalformed)
	}
	if fl&strLone != 0 {
		return t.fail(errLoneSurrogate)
	}
	raw := t.b[i+1 : end-1]
	if fl&strEscaped == 0 {
		t.out = mpAppendStrBytes(t.out, raw)
		return end
	}
	// The unescaped text is no longer than raw: reserve raw's header size,
	// unescape, then shrink the header if the text needs a smaller one.
	h := mpStrHeaderSize(len(raw))
	start := len(t.out)
	t.out = append(t.out, make([]byte, h)...)
	t.out = appendUnescaped(t.out, raw)
	n := len(t.out) - start - h
	if h2 := mpStrHeaderSize(n); h2 < h {
		copy(t.out[start+h2:], t.out[start+h:])
		t.out = t.out[:len(t.out)-(h-h2)]
		h = h2
	}
	mpAppendStrHeader(t.out[start:start:start+h], n) // writes in place
	return end
}

// mpStrHeaderSize is the size of the shortest str header for n bytes.
func mpStrHeaderSize(n int) int {
	switch {
	case n < 32:
		return 1
	case n <= math.MaxUint8:
		return 2
	case n <= math.MaxUint16:
		return 3
	}
	return 5
}

// fixHeader rewrites the one-byte placeholder at pos as the header of a
// container with n elements: fix (fixCode|n) or 16/32-bit (code16, code16+1),
// moving the content after it when the header needs more room.
func (t *j2m) fixHeader(pos, n int, fixCode, code16 byte) {
	if n < 16 {
		t.out[pos] = fixCode | byte(n)
		return
	}
	extra := 2
	if n > math.MaxUint16 {
		extra = 4
	}
	old := len(t.out)
	t.out = append(t.out, make([]byte, extra)...)
	copy(t.out[pos+1+extra:], t.out[pos+1:old])
	if extra == 2 {
		t.out[pos] = code16
		binary.BigEndian.PutUint16(t.out[pos+1:], uint16(n))
	} else {
		t.out[pos] = code16 + 1
		binary.BigEndian.PutUint32(t.out[pos+1:], uint32(n))
	}
}

// object converts an object whose '{' is at i-1.
func (t *j2m) object(i, depth int) int {
	if depth > MaxDepth {
		return t.fail(ErrTooDeep)
	}
	b := t.b
	pos := len(t.out)
	t.out = append(t.out, 0x80)
	n := 0
	i = skipWS(b, i)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return t.fail(ErrMalformed)
		}
		if i = t.str(i); i < 0 {
			return -1
		}
		i = skipWS(b, i)
		if i >= len(b) || b[i] != ':' {
			return t.fail(ErrMalformed)
		}
		if i = t.value(skipWS(b, i+1), depth); i < 0 {
			return -1
		}
		n++
		i = skipWS(b, i)
		if i >= len(b) {
			return t.fail(ErrMalformed)
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			t.fixHeader(pos, n, 0x80, mpMap16)
			return i + 1
		default:
			return t.fail(ErrMalformed)
		}
	}
}

// array converts an array whose '[' is at i-1.
func (t *j2m) array(i, depth int) int {
	if depth > MaxDepth {
		return t.fail(ErrTooDeep)
	}
	b := t.b
	pos := len(t.out)
	t.out = append(t.out, 0x90)
	n := 0
	i = skipWS(b, i)
	if i < len(b) && b[i] == ']' {
		return i + 1
	}
	for {
		if i = t.value(i, depth); i < 0 {
			return -1
		}
		n++
		i = skipWS(b, i)
		if i >= len(b) {
			return t.fail(ErrMalformed)
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case ']':
			t.fixHeader(pos, n, 0x90, mpArray16)
			return i + 1
		default:
			return t.fail(ErrMalformed)
		}
	}
}

// m2j converts msgpack to JSON, appending to out.
type m2j struct {
	b   []byte
	out []byte
	err error
}

func (t *m2j) fail(err error) int {
	if t.err == nil {
		t.err = err
	}
	return -1
}

// need returns whether n bytes follow i.
func (t *m2j) need(i, n int) bool { return n >= 0 && len(t.b)-i >= n }

func (t *m2j) value(i, depth int) int {
	b := t.b
	if i >= len(b) {
		return t.fail(ErrMalformed)
	}
	c := b[i]
	switch {
	case c <= 0x7f:
		t.out = strconv.AppendUint(t.out, uint64(c), 10)
		return i + 1
	case c >= 0xe0:
		t.out = strconv.AppendInt(t.out, int64(int8(c)), 10)
		return i + 1
	case c <= 0x8f:
		return t.mapBody(i+1, int(c&0x0f), depth+1)
	case c <= 0x9f:
		return t.arrayBody(i+1, int(c&0x0f), depth+1)
	case c <= 0xbf:
		return t.str(i+1, int(c&0x1f))
	}
	switch c {
	case mpNil:
		t.out = append(t.out, "null"...)
		return i + 1
	case mpFalse:
		t.out = append(t.out, "false"...)
		return i + 1
	case mpTrue:
		t.out = append(t.out, "true"...)
		return i + 1
	case mpBin8, mpBin16, mpBin32:
		h := 1 << (c - mpBin8)
		n := mpLen(b, i+1, h)
		i += 1 + h
		if !t.need(i, n) {
			return t.fail(ErrMalformed)
		}
		t.out = append(t.out, '"')
		t.out = base64.StdEncoding.AppendEncode(t.out, b[i:i+n])
		t.out = append(t.out, '"')
		return i + n
	case mpExt8, mpExt16, mpExt32, mpFixExt1, mpFixExt1 + 1, mpFixExt1 + 2, mpFixExt1 + 3, mpFixExt16:
		return t.fail(errExt)
	case mpFloat32:
		if !t.need(i+1, 4) {
			return t.fail(ErrMalformed)
		}
		return t.float(i+5, float64(math.Float32frombits(binary.BigEndian.Uint32(b[i+1:]))))
	case mpFloat64:
		if !t.need(i+1, 8) {
			return t.fail(ErrMalformed)
		}
		return t.float(i+9, math.Float64frombits(binary.BigEndian.Uint64(b[i+1:])))
	case mpUint8, mpUint16, mpUint32, mpUint64, mpInt8, mpInt16, mpInt32, mpInt64:
		v, next, kind := mpInt(b, i)
		if next < 0 {
			return t.fail(ErrMalformed)
		}
		if kind == mpIntNeg {
			t.out = strconv.AppendInt(t.out, int64(v), 10)
		} else {
			t.out = strconv.AppendUint(t.out, v, 10)
		}
		return next
	case mpStr8, mpStr16, mpStr32:
		h := 1 << (c - mpStr8)
		return t.str(i+1+h, mpLen(b, i+1, h))
	case mpArray16, mpArray32:
		h := 2 << (c - mpArray16)
		n := mpLen(b, i+1, h)
		if n < 0 {
			return t.fail(ErrMalformed)
		}
		return t.arrayBody(i+1+h, n, depth+1)
	case mpMap16, mpMap32:
		h := 2 << (c - mpMap16)
		n := mpLen(b, i+1, h)
		if n < 0 {
			return t.fail(ErrMalformed)
		}
		return t.mapBody(i+1+h, n, depth+1)
	}
	return t.fail(ErrMalformed) // 0xc1
}

func (t *m2j) float(next int, f float64) int {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return t.fail(errNonFinite)
	case f != math.Trunc(f) || f == 0 && math.Signbit(f):
		t.out = appendJSONFloat(t.out, f)
	case f >= -(1<<63) && f < 1<<63:
		// Integral: the exact integer, which reads back as the same
		// float64 and, unlike the shortest form of large values
		// (40973926021566848 is shortest as 40973926021566850), as the
		// same integer.
		t.out = strconv.AppendInt(t.out, int64(f), 10)
	case f >= 0 && f < 1<<64:
		t.out = strconv.AppendUint(t.out, uint64(f), 10)
	default:
		t.out = appendJSONFloat(t.out, f)
	}
	return next
}

// str converts the n-byte str body at i.
func (t *m2j) str(i, n int) int {
	if !t.need(i, n) {
		return t.fail(ErrMalformed)
	}
	var ok bool
	t.out, ok = appendJSONStr(t.out, bytesString(t.b[i:i+n]), true)
	if !ok {
		return t.fail(errInvalidUTF8)
	}
	return i + n
}

func (t *m2j) arrayBody(i, n, depth int) int {
	if depth > MaxDepth {
		return t.fail(ErrTooDeep)
	}
	t.out = append(t.out, '[')
	for k := 0; k < n; k++ {
		if k > 0 {
			t.out = append(t.out, ',')
		}
		if i = t.value(i, depth); i < 0 {
			return -1
		}
	}
	t.out = append(t.out, ']')
	return i
}

func (t *m2j) mapBody(i, n, depth int) int {
	if depth > MaxDepth {
		return t.fail(ErrTooDeep)
	}
	b := t.b
	t.out = append(t.out, '{')
	for k := 0; k < n; k++ {
		if k > 0 {
			t.out = append(t.out, ',')
		}
		if i >= len(b) {
			return t.fail(ErrMalformed)
		}
		c := b[i]
		if c >= 0xa0 && c <= 0xbf {
			i = t.str(i+1, int(c&0x1f))
		} else if c >= mpStr8 && c <= mpStr32 {
			h := 1 << (c - mpStr8)
			i = t.str(i+1+h, mpLen(b, i+1, h))
		} else {
			return t.fail(errMapKey)
		}
		if i < 0 {
			return -1
		}
		t.out = append(t.out, ':')
		if i = t.value(i, depth); i < 0 {
			return -1
		}
	}
	t.out = append(t.out, '}')
	return i
}
