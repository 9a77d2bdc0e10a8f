package codec

import (
	"encoding/binary"
	"math"
	"math/bits"
	"strconv"
	"unicode/utf8"
	"unsafe"
)

// This file is the hand-written JSON scanner shared by the decoders and
// Transcode. Positions are byte indexes into the input; a negative result
// means a syntax error. The scanner accepts exactly RFC 8259 JSON in UTF-8:
// raw bytes in strings must be valid UTF-8 and control characters must be
// escaped. A \u escape of a lone UTF-16 surrogate (\ud800 without a following
// low surrogate, or a lone \udc00) is syntactically valid JSON but names no
// Unicode character, so it cannot become a msgpack string: the scanner flags
// it (strLone) and the callers reject the value as unsupported.

// String scan flags.
const (
	strEscaped uint8 = 1 << iota // contains at least one backslash escape
	strLone                      // contains a lone surrogate escape
)

// isSpace reports JSON whitespace.
func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

// skipWS returns the index of the first non-whitespace byte at or after i.
func skipWS(b []byte, i int) int {
	for i < len(b) {
		c := b[i]
		if c > ' ' || !isSpace(c) {
			break
		}
		i++
	}
	return i
}

// jsonPlain marks bytes that stand for themselves inside a JSON string and
// need no escaping on output: printable ASCII other than '"' and '\\'.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

const (
	lsb8 = 0x0101010101010101
	msb8 = 0x8080808080808080
)

// special8 flags the bytes of x (8 bytes, little-endian) that are not
// jsonPlain: < 0x20, '"', '\\' or >= 0x80. The lowest flagged byte is exact
// (borrows only propagate upwards, from a byte that is itself special), so
// bits.TrailingZeros64(special8(x))/8 is the index of the first special byte;
// flags above it may be spurious.
func special8(x uint64) uint64 {
	return ((x - 0x20*lsb8) | ((x ^ '"'*lsb8) - lsb8) | ((x ^ '\\'*lsb8) - lsb8) | x) & msb8
}

// plain8 reports whether all 8 bytes of x are jsonPlain.
func plain8(x uint64) bool { return special8(x) == 0 }

// scanString scans the rest of a string whose opening quote is at i-1. It
// returns the index after the closing quote and flags, or -1 on a syntax
// error (unterminated, bad escape, raw control character, invalid UTF-8).
func scanString(b []byte, i int) (int, uint8) {
	var flags uint8
	n := len(b)
	for {
		if i+8 <= n {
			t := special8(binary.LittleEndian.Uint64(b[i:]))
			if t == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(t) >> 3
		} else {
			for i < n && jsonPlain[b[i]] {
				i++
			}
			if i >= n {
				return -1, 0
			}
		}
		c := b[i]
		switch {
		case c == '"':
			return i + 1, flags
		case c == '\\':
			if i+1 >= n {
				return -1, 0
			}
			flags |= strEscaped
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				r := hex4(b, i+2)
				if r < 0 {
					return -1, 0
				}
				i += 6
				if r >= 0xD800 && r < 0xDC00 {
					if i+6 <= n && b[i] == '\\' && b[i+1] == 'u' {
						r2 := hex4(b, i+2)
						if r2 < 0 {
							return -1, 0
						}
						if r2 >= 0xDC00 && r2 < 0xE000 {
							i += 6
							continue
						}
					}
					flags |= strLone
				} else if r >= 0xDC00 && r < 0xE000 {
					flags |= strLone
				}
			default:
				return -1, 0
			}
		case c < 0x20:
			return -1, 0
		default: // >= 0x80
			if c < 0xC2 { // continuation byte or overlong lead
				return -1, 0
			}
			r, size := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && size == 1 {
				return -1, 0
			}
			i += size
		}
	}
}

// hex4 decodes the 4 hex digits at b[i:], -1 if there are not 4.
func hex4(b []byte, i int) rune {
	if i+4 > len(b) {
		return -1
	}
	var r rune
	for _, c := range b[i : i+4] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return -1
		}
		r = r<<4 | rune(d)
	}
	return r
}

// appendUnescaped appends the content of a scanned string (between the
// quotes, known to be well-formed) with its escapes decoded. A lone
// surrogate becomes U+FFFD.
func appendUnescaped(dst, s []byte) []byte {
	for i := 0; i < len(s); {
		j := i
		for j < len(s) && s[j] != '\\' {
			j++
		}
		dst = append(dst, s[i:j]...)
		if j >= len(s) {
			break
		}
		switch c := s[j+1]; c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r := hex4(s, j+2)
			j += 4
			if r >= 0xD800 && r < 0xDC00 && j+8 <= len(s) && s[j+2] == '\\' && s[j+3] == 'u' {
				if r2 := hex4(s, j+4); r2 >= 0xDC00 && r2 < 0xE000 {
					r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
					j += 6
				}
			}
			dst = utf8.AppendRune(dst, r) // surrogates become U+FFFD
		default: // '"', '\\', '/'
			dst = append(dst, c)
		}
		i = j + 2
	}
	return dst
}

// Number kinds of scanNumber.
const (
	numInt   = iota // -?digits
	numFloat        // with fraction or exponent
)

// scanNumber scans a number starting at i. It returns the end index (-1 on
// a syntax error), its kind, and whether it might be out of float64 range
// (exponent present or more than 308 integer digits).
func scanNumber(b []byte, i int) (end int, kind int, big bool) {
	n := len(b)
	if i < n && b[i] == '-' {
		i++
	}
	if i >= n {
		return -1, 0, false
	}
	start := i
	if b[i] == '0' {
		i++
	} else if b[i] >= '1' && b[i] <= '9' {
		i++
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	} else {
		return -1, 0, false
	}
	big = i-start > 308
	kind = numInt
	if i < n && b[i] == '.' {
		i++
		d := i
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return -1, 0, false
		}
		kind = numFloat
	}
	if i < n && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < n && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < n && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			return -1, 0, false
		}
		kind = numFloat
		big = true
	}
	return i, kind, big
}

// parseUintDigits parses a string of decimal digits (no sign), reporting
// overflow of uint64.
func parseUintDigits(b []byte) (uint64, bool) {
	var v uint64
	for _, c := range b {
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// bytesString views b as a string without copying; the caller must not
// keep the string past b's lifetime or let b change while it is in use.
func bytesString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// parseFloat parses a scanned JSON number.
func parseFloat(b []byte) float64 {
	f, _ := strconv.ParseFloat(bytesString(b), 64)
	return f
}

// jscan validates JSON values. err is the fatal error (ErrMalformed or
// ErrTooDeep) when a method returns -1; unsup records the first value that
// is well-formed but not expressible in msgpack (lone surrogate, number out
// of range), and scanning goes on after it.
type jscan struct {
	b     []byte
	err   error
	unsup error
}

func (s *jscan) fail() int {
	if s.err == nil {
		s.err = ErrMalformed
	}
	return -1
}

// value validates the value starting exactly at i (no leading whitespace)
// and returns the index after it.
func (s *jscan) value(i, depth int) int {
	b := s.b
	if i >= len(b) {
		return s.fail()
	}
	switch c := b[i]; c {
	case '"':
		end, fl := scanString(b, i+1)
		if end < 0 {
			return s.fail()
		}
		if fl&strLone != 0 && s.unsup == nil {
			s.unsup = errLoneSurrogate
		}
		return end
	case '{':
		return s.object(i+1, depth+1)
	case '[':
		return s.array(i+1, depth+1)
	case 't':
		return s.lit(i, "true")
	case 'f':
		return s.lit(i, "false")
	case 'n':
		return s.lit(i, "null")
	default:
		end, _, big := scanNumber(b, i)
		if end < 0 {
			return s.fail()
		}
		if big && s.unsup == nil && math.IsInf(parseFloat(b[i:end]), 0) {
			s.unsup = errNumberRange
		}
		return end
	}
}

func (s *jscan) lit(i int, word string) int {
	if len(s.b)-i < len(word) || string(s.b[i:i+len(word)]) != word {
		return s.fail()
	}
	return i + len(word)
}

// object validates an object whose '{' is at i-1.
func (s *jscan) object(i, depth int) int {
	if depth > MaxDepth {
		s.err = ErrTooDeep
		return -1
	}
	b := s.b
	i = skipWS(b, i)
	if i < len(b) && b[i] == '}' {
		return i + 1
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return s.fail()
		}
		end, fl := scanString(b, i+1)
		if end < 0 {
			return s.fail()
		}
		if fl&strLone != 0 && s.unsup == nil {
			s.unsup = errLoneSurrogate
		}
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return s.fail()
		}
		i = s.value(skipWS(b, i+1), depth)
		if i < 0 {
			return -1
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return s.fail()
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return i + 1
		default:
			return s.fail()
		}
	}
}

// array validates an array whose '[' is at i-1.
func (s *jscan) array(i, depth int) int {
	if depth > MaxDepth {
		s.err = ErrTooDeep
		return -1
	}
	b := s.b
	i = skipWS(b, i)
	if i < len(b) && b[i] == ']' {
		return i + 1
	}
	for {
		i = s.value(i, depth)
		if i < 0 {
			return -1
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return s.fail()
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case ']':
			return i + 1
		default:
			return s.fail()
		}
	}
}
