package codec

import (
	"math"
	"math/bits"
	"strconv"
	"unicode/utf8"
)

// This file holds the JSON output primitives. Strings are escaped so that the
// output is valid JSON and safe to embed anywhere: '"', '\\' and control
// characters are escaped (\n \r \t \b \f short forms, others as \u00XX) and
// so are U+2028 and U+2029, which are line terminators in JavaScript source.
// Other characters, '<', '>' and '&' included, are written as UTF-8.

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a quoted JSON string. Invalid UTF-8 bytes are
// written as \ufffd (the output is always valid JSON).
func appendJSONString(dst []byte, s string) []byte {
	dst, _ = appendJSONStr(dst, s, false)
	return dst
}

// appendJSONStr appends s as a quoted JSON string. With strict, invalid UTF-8
// makes it return false (dst then holds a partial string); otherwise invalid
// bytes are replaced with \ufffd.
func appendJSONStr(dst []byte, s string, strict bool) ([]byte, bool) {
	i := plainPrefix(s)
	if i == len(s) { // nothing to escape: the common case
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"'), true
	}
	return appendJSONStrSlow(append(dst, '"'), s, i, strict)
}

// plainPrefix returns the length of the longest prefix of s made of bytes
// that need no escaping.
func plainPrefix(s string) int {
	i := 0
	for i+8 <= len(s) {
		if t := special8(loadString8(s, i)); t != 0 {
			return i + bits.TrailingZeros64(t)>>3
		}
		i += 8
	}
	for i < len(s) && jsonPlain[s[i]] {
		i++
	}
	return i
}

// appendJSONStrSlow goes on from s[i], the first byte that may need
// escaping; the opening quote is already in dst.
func appendJSONStrSlow(dst []byte, s string, i int, strict bool) ([]byte, bool) {
	start := 0
	for i < len(s) {
		i += plainPrefix(s[i:])
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			if strict {
				return dst, false
			}
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"'), true
}

func loadString8(s string, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// appendJSONFloat appends f like encoding/json does for a float64: the
// shortest representation that round-trips, in exponent form only for very
// large or small magnitudes. f must be finite.
func appendJSONFloat(dst []byte, f float64) []byte {
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// appendJSONBool appends true or false.
func appendJSONBool(dst []byte, v bool) []byte {
	if v {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}
