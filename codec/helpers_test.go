package codec

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// This file holds the test helpers: reference decoding with encoding/json and
// msgpack/v5 and a normal form in which both encodings of one value are equal.

// intNum is the normal form of an integral number that fits in int64 or
// uint64 (decimal text); other numbers normalize to float64.
type intNum string

// normNumber gives the normal form of a number, mirroring Transcode: an
// integral value within int64/uint64 range is an intNum, anything else a
// float64.
func normNumber(t testing.TB, text string) any {
	t.Helper()
	if i, ok := new(big.Int).SetString(text, 10); ok {
		if i.IsInt64() || i.IsUint64() {
			return intNum(i.String())
		}
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil {
		t.Fatalf("number %q: %v", text, err)
	}
	return normFloat(f)
}

func normFloat(f float64) any {
	if f == math.Trunc(f) && !math.IsInf(f, 0) {
		if f >= -(1<<63) && f < 1<<63 {
			return intNum(strconv.FormatInt(int64(f), 10))
		}
		if f >= 0 && f < 1<<64 {
			return intNum(strconv.FormatUint(uint64(f), 10))
		}
	}
	return f
}

// norm returns the normal form of a value decoded by encoding/json (with
// UseNumber) or by msgpack/v5: numbers as above, bin as its base64 string.
func norm(t testing.TB, v any) any {
	t.Helper()
	switch v := v.(type) {
	case nil, bool, string:
		return v
	case json.Number:
		return normNumber(t, string(v))
	case float64:
		return normFloat(v)
	case float32:
		return normFloat(float64(v))
	case int8, int16, int32, int64, int:
		return intNum(fmt.Sprint(v))
	case uint8, uint16, uint32, uint64, uint:
		return intNum(fmt.Sprint(v))
	case []byte:
		return base64.StdEncoding.EncodeToString(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = norm(t, e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = norm(t, e)
		}
		return out
	}
	t.Fatalf("norm: unexpected %T", v)
	return nil
}

// refDecode decodes one value of enc with the reference decoder
// (encoding/json with UseNumber, msgpack/v5 into interface{}).
func refDecode(t testing.TB, enc Encoding, b []byte) (any, error) {
	t.Helper()
	var v any
	if enc == JSON {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
		if d.More() {
			return nil, fmt.Errorf("trailing data")
		}
		return v, nil
	}
	r := bytes.NewReader(b)
	if err := msgpack.NewDecoder(r).Decode(&v); err != nil {
		return nil, err
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("trailing data")
	}
	return v, nil
}

// mustNorm decodes b with the reference decoder and normalizes it.
func mustNorm(t testing.TB, enc Encoding, b []byte) any {
	t.Helper()
	v, err := refDecode(t, enc, b)
	if err != nil {
		t.Fatalf("reference %v decode of %q: %v", enc, b, err)
	}
	return norm(t, v)
}

// sameValue fails unless a and b (in encodings ea and eb) decode with the
// reference decoders to the same normal form.
func sameValue(t testing.TB, ea Encoding, a []byte, eb Encoding, b []byte) {
	t.Helper()
	va, vb := mustNorm(t, ea, a), mustNorm(t, eb, b)
	if !reflect.DeepEqual(va, vb) {
		t.Fatalf("values differ:\n%v %q -> %#v\n%v %q -> %#v", ea, a, va, eb, b, vb)
	}
}

// mp encodes v with msgpack/v5 (the reference encoder).
func mp(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// other returns the other encoding.
func other(e Encoding) Encoding {
	if e == JSON {
		return Msgpack
	}
	return JSON
}

var encodings = []Encoding{JSON, Msgpack}

// asMap decodes a server message with the reference decoder into a
// normalized map.
func asMap(t testing.TB, enc Encoding, b []byte) map[string]any {
	t.Helper()
	v := mustNorm(t, enc, b)
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%v %q is %T, not a map", enc, b, v)
	}
	return m
}
