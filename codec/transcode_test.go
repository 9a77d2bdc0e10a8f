package codec

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// roundTrip checks one value of enc: it converts to the other encoding and
// back, the reference decoders see the same value at every step (bin as
// base64), and a second conversion reproduces the first byte for byte.
// It returns the converted value.
func roundTrip(t testing.TB, enc Encoding, src []byte) []byte {
	t.Helper()
	out, err := Transcode(nil, enc, other(enc), src)
	if err != nil {
		t.Fatalf("Transcode(%v->%v, %q): %v", enc, other(enc), src, err)
	}
	sameValue(t, enc, src, other(enc), out)
	back, err := Transcode(nil, other(enc), enc, out)
	if err != nil {
		t.Fatalf("Transcode back (%q): %v", out, err)
	}
	sameValue(t, enc, src, enc, back)
	again, err := Transcode(nil, enc, other(enc), back)
	if err != nil || !bytes.Equal(again, out) {
		t.Fatalf("second conversion differs: %q %v, first %q", again, err, out)
	}
	same, err := Transcode(nil, enc, enc, src)
	if err != nil {
		t.Fatalf("same-encoding Transcode: %v", err)
	}
	if enc == Msgpack && !bytes.Equal(same, src) || enc == JSON && string(same) != strings.TrimSpace(string(src)) {
		t.Fatalf("same-encoding Transcode changed the value: %q", same)
	}
	return out
}

func TestTranscodeJSON(t *testing.T) {
	long := strings.Repeat("x", 70000)
	var manyKeys, manyItems strings.Builder
	manyKeys.WriteString("{")
	manyItems.WriteString("[")
	for i := 0; i < 70000; i++ {
		if i > 0 {
			manyKeys.WriteString(",")
			manyItems.WriteString(",")
		}
		fmt.Fprintf(&manyKeys, `"k%d":%d`, i, i)
		fmt.Fprintf(&manyItems, "%d", i%300-150)
	}
	manyKeys.WriteString("}")
	manyItems.WriteString("]")
	for _, tc := range []struct {
		name, json string
		msgpack    string // expected msgpack in hex, if given
	}{
		{"null", `null`, "c0"},
		{"true", `true`, "c3"},
		{"false", ` false `, "c2"},
		{"zero", `0`, "00"},
		{"negative zero", `-0`, "cb8000000000000000"},
		{"negative zero float", `-0.0e5`, "cb8000000000000000"},
		{"fixint", `127`, "7f"},
		{"uint8", `255`, "ccff"},
		{"uint16", `300`, "cd012c"},
		{"uint32", `70000`, "ce00011170"},
		{"uint64", `18446744073709551615`, "cfffffffffffffffff"},
		{"negfixint", `-32`, "e0"},
		{"int8", `-33`, "d0df"},
		{"int16", `-200`, "d1ff38"},
		{"int32", `-70000`, "d2fffeee90"},
		{"int64 min", `-9223372036854775808`, "d38000000000000000"},
		{"below int64 rounds to it", `-9223372036854775809`, "d38000000000000000"},
		{"below int64", `-9223372036854777856`, "cbc3e0000000000001"},
		{"above uint64", `18446744073709551616`, "cb43f0000000000000"},
		{"integral float", `1.0`, "01"},
		{"integral exponent", `1e2`, "64"},
		{"negative integral float", `-2.0e0`, "fe"},
		{"big integral float", `1e19`, "cf8ac7230489e80000"},
		{"float", `1.5`, "cb3ff8000000000000"},
		{"small float", `-1.5e-300`, ""},
		{"huge float", `1e300`, ""},
		{"underflow", `1e-400`, "00"},
		{"long integer digits", strings.Repeat("9", 300), ""},
		{"empty string", `""`, "a0"},
		{"fixstr 31", `"` + strings.Repeat("a", 31) + `"`, ""},
		{"str8 32", `"` + strings.Repeat("a", 32) + `"`, ""},
		{"str16", `"` + strings.Repeat("a", 256) + `"`, ""},
		{"str32", `"` + long + `"`, ""},
		{"escapes shrink header str8 to fixstr", `"` + strings.Repeat(`\u0041`, 10) + `"`, "aa" + strings.Repeat("41", 10)},
		{"escapes shrink header str16 to str8", `"` + strings.Repeat(`\n`, 200) + `"`, "d9c8" + strings.Repeat("0a", 200)},
		{"escapes shrink header str32 to str16", `"` + strings.Repeat(`\"`, 40000) + `"`, "da9c40" + strings.Repeat("22", 40000)},
		{"escapes", `"a\"b\\c\/d\b\f\n\r\t\u0000\u00e9\u2028\ud83d\ude00"`, ""},
		{"raw unicode", `"日本語 😀"`, ""},
		{"empty object", `{}`, "80"},
		{"empty array", `[ ]`, "90"},
		{"object", `{"a":1,"b":[true,null,"x"],"c":{"d":-1.25}}`, ""},
		{"escaped keys", `{"\u0061":1,"b\"":2}`, "82a16101a2622202"},
		{"15 keys", objectN(15), ""},
		{"16 keys", objectN(16), ""},
		{"70000 keys", manyKeys.String(), ""},
		{"16 items", "[" + strings.Repeat("1,", 15) + "1]", "dc0010" + strings.Repeat("01", 16)},
		{"70000 items", manyItems.String(), ""},
		{"nested", `[[[[{"a":[[{}]]}]]]]`, ""},
		{"nested headers", `[` + objectN(20) + `,` + objectN(3) + `,[` + strings.Repeat("0,", 20) + `0]]`, ""},
		{"duplicate keys kept", `{"a":1,"a":2}`, "82a16101a16102"},
		{"whitespace", " \n\t{ \"a\" : [ 1 , 2 ] } \r\n", "81a1619201" + "02"},
		{"max depth", strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := roundTrip(t, JSON, []byte(tc.json))
			if tc.msgpack != "" && hex.EncodeToString(m) != tc.msgpack {
				t.Fatalf("msgpack %x, want %s", m, tc.msgpack)
			}
		})
	}
}

func objectN(n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"key%d":"value %d"`, i, i)
	}
	b.WriteString("}")
	return b.String()
}

func TestTranscodeMsgpack(t *testing.T) {
	bigMap := map[string]any{}
	for i := 0; i < 70000; i++ {
		bigMap[fmt.Sprint("k", i)] = i
	}
	for _, tc := range []struct {
		name string
		v    any
		json string // expected JSON, if given
	}{
		{"nil", nil, "null"},
		{"bools", []any{true, false}, "[true,false]"},
		{"ints", []any{int8(-128), int16(-32768), int32(math.MinInt32), int64(math.MinInt64), -1, 0, 127},
			"[-128,-32768,-2147483648,-9223372036854775808,-1,0,127]"},
		{"uints", []any{uint8(255), uint16(65535), uint32(math.MaxUint32), uint64(math.MaxUint64)},
			"[255,65535,4294967295,18446744073709551615]"},
		{"float64", []any{1.5, -0.1, 1e21, 1e-7, 3.0, 0.0, math.MaxFloat64, math.SmallestNonzeroFloat64},
			"[1.5,-0.1,1e+21,1e-7,3,0,1.7976931348623157e+308,5e-324]"},
		{"float32 exact", []any{float32(0.1), float32(1.5), float32(-3)}, "[0.10000000149011612,1.5,-3]"},
		{"negative zero", math.Copysign(0, -1), "-0"},
		{"large integral floats", []any{40973926021566848.0, -9223372036854775808.0, 18446744073709549568.0, 18446744073709551616.0},
			"[40973926021566848,-9223372036854775808,18446744073709549568,18446744073709552000]"},
		{"strings", []any{"", "a\"\\\n\x00\u2028é😀", strings.Repeat("y", 70000)}, ""},
		{"bin", []byte("hello\x00\xff"), `"aGVsbG8A/w=="`},
		{"bin empty", []byte{}, `""`},
		{"bin16", bytes.Repeat([]byte{1, 2, 3}, 1000), ""},
		{"map", map[string]any{"a": map[string]any{"b": []any{1, "x", nil}}}, `{"a":{"b":[1,"x",null]}}`},
		{"big map", bigMap, ""},
		{"big array", make([]any, 70000), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := mp(t, tc.v)
			j := roundTrip(t, Msgpack, src)
			if tc.json != "" && string(j) != tc.json {
				t.Fatalf("JSON %s, want %s", j, tc.json)
			}
		})
	}
}

func TestTranscodeErrors(t *testing.T) {
	f64 := func(f float64) string { return "\xcb" + string(mpAppendFloat64(nil, f)[1:]) }
	for _, tc := range []struct {
		name string
		from Encoding
		src  string
		want error
	}{
		{"json empty", JSON, "", ErrMalformed},
		{"json spaces", JSON, "  ", ErrMalformed},
		{"json trailing", JSON, "1 2", ErrMalformed},
		{"json two values", JSON, "{}{}", ErrMalformed},
		{"json truncated", JSON, `{"a":[1,2`, ErrMalformed},
		{"json bad literal", JSON, `nul`, ErrMalformed},
		{"json trailing comma", JSON, `[1,]`, ErrMalformed},
		{"json invalid utf8", JSON, "\"\xff\"", ErrMalformed},
		{"json control char", JSON, "\"\x01\"", ErrMalformed},
		{"json lone surrogate", JSON, `"\ud800"`, ErrUnsupported},
		{"json lone surrogate key", JSON, `{"\udfff":1}`, ErrUnsupported},
		{"json number range", JSON, `-1e309`, ErrUnsupported},
		{"json too deep", JSON, strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1), ErrTooDeep},
		{"json too deep objects", JSON, strings.Repeat(`{"a":`, MaxDepth+1) + "1" + strings.Repeat("}", MaxDepth+1), ErrTooDeep},
		{"msgpack empty", Msgpack, "", ErrMalformed},
		{"msgpack trailing", Msgpack, "\x01\x02", ErrMalformed},
		{"msgpack c1", Msgpack, "\xc1", ErrMalformed},
		{"msgpack truncated array", Msgpack, "\x92\x01", ErrMalformed},
		{"msgpack truncated str", Msgpack, "\xd9\x05abc", ErrMalformed},
		{"msgpack truncated str32 header", Msgpack, "\xdb\x00\x00", ErrMalformed},
		{"msgpack truncated map32", Msgpack, "\xdf\xff\xff\xff\xff\xa1a", ErrMalformed},
		{"msgpack truncated uint64", Msgpack, "\xcf\x00", ErrMalformed},
		{"msgpack truncated float32", Msgpack, "\xca\x00", ErrMalformed},
		{"msgpack truncated bin", Msgpack, "\xc5\x00\x10ab", ErrMalformed},
		{"msgpack ext", Msgpack, "\xc7\x01\x05a", ErrUnsupported},
		{"msgpack fixext", Msgpack, "\xd5\x05ab", ErrUnsupported},
		{"msgpack timestamp", Msgpack, "\xd6\xff\x00\x00\x00\x00", ErrUnsupported},
		{"msgpack int key", Msgpack, "\x81\x01\x02", ErrUnsupported},
		{"msgpack bin key", Msgpack, "\x81\xc4\x01a\x02", ErrUnsupported},
		{"msgpack nil key", Msgpack, "\x81\xc0\x02", ErrUnsupported},
		{"msgpack invalid utf8", Msgpack, "\xa1\xff", ErrUnsupported},
		{"msgpack invalid utf8 key", Msgpack, "\x81\xa1\xff\x01", ErrUnsupported},
		{"msgpack NaN", Msgpack, f64(math.NaN()), ErrUnsupported},
		{"msgpack +Inf", Msgpack, f64(math.Inf(1)), ErrUnsupported},
		{"msgpack float32 NaN", Msgpack, "\xca\x7f\xc0\x00\x00", ErrUnsupported},
		{"msgpack too deep", Msgpack, strings.Repeat("\x91", MaxDepth+1) + "\xc0", ErrTooDeep},
	} {
		for _, to := range encodings {
			t.Run(fmt.Sprintf("%s/to=%v", tc.name, to), func(t *testing.T) {
				dst := []byte("keep")
				out, err := Transcode(dst, tc.from, to, []byte(tc.src))
				if !errors.Is(err, tc.want) {
					t.Fatalf("Transcode(%q) = %q, %v; want %v", tc.src, out, err, tc.want)
				}
				if string(out) != "keep" {
					t.Fatalf("dst changed on error: %q", out)
				}
			})
		}
	}
	if _, err := Transcode(nil, JSON, 0, []byte("1")); err != ErrEncoding {
		t.Fatal(err)
	}
}

func TestTranscodeAllocs(t *testing.T) {
	js := []byte(`{"user":"alice","text":"hello \"world\"","tags":["a","b"],"n":12345,"f":0.5,"ok":true,"nil":null,"big":` + objectN(20) + `}`)
	m, err := Transcode(nil, JSON, Msgpack, js)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		from, to Encoding
		src      []byte
	}{{JSON, Msgpack, js}, {Msgpack, JSON, m}, {JSON, JSON, js}, {Msgpack, Msgpack, m}} {
		buf := make([]byte, 0, 8192)
		if n := testing.AllocsPerRun(100, func() { buf, _ = Transcode(buf[:0], tc.from, tc.to, tc.src) }); n != 0 {
			t.Errorf("%v->%v: %v allocs", tc.from, tc.to, n)
		}
	}
}
