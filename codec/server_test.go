package codec

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// testPub builds a publication with data given as JSON, both encodings set.
func testPub(t testing.TB, channel string, offset uint64, data string) *Publication {
	t.Helper()
	m, err := Transcode(nil, JSON, Msgpack, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return &Publication{Channel: channel, Epoch: "ep1", Offset: offset, Info: ClientInfo{Client: "cli-1", User: "alice"}, JSON: []byte(data), Msgpack: m}
}

// serverCase is one server encoder call with its exact JSON output; the
// msgpack output must decode to the same value and transcode back to
// exactly that JSON (same field order).
type serverCase struct {
	name   string
	encode func(dst []byte, enc Encoding) []byte
	json   string
}

func serverCases(t testing.TB) []serverCase {
	p1 := testPub(t, "chat:1", 7, `{"text":"hi","n":[1,2.5,-3],"ok":true,"z":null}`)
	p2 := testPub(t, "chat:1", 8, `"plain \"string\" \u2028"`)
	info := ClientInfo{Client: "c1", User: "bob"}
	return []serverCase{
		{"connected", func(d []byte, e Encoding) []byte { return AppendConnected(d, e, info) },
			`{"push":"connected","client":"c1","user":"bob"}`},
		{"connected anonymous", func(d []byte, e Encoding) []byte { return AppendConnected(d, e, ClientInfo{Client: "c2"}) },
			`{"push":"connected","client":"c2","user":""}`},
		{"pub", func(d []byte, e Encoding) []byte { return AppendPub(d, e, p1) },
			`{"push":"pub","channel":"chat:1","epoch":"ep1","offset":7,"data":{"text":"hi","n":[1,2.5,-3],"ok":true,"z":null},"info":{"client":"cli-1","user":"alice"}}`},
		{"pub string data", func(d []byte, e Encoding) []byte { return AppendPub(d, e, p2) },
			`{"push":"pub","channel":"chat:1","epoch":"ep1","offset":8,"data":"plain \"string\" \u2028","info":{"client":"cli-1","user":"alice"}}`},
		{"pub empty data", func(d []byte, e Encoding) []byte { return AppendPub(d, e, &Publication{Channel: "c", Offset: 1}) },
			`{"push":"pub","channel":"c","epoch":"","offset":1,"data":null,"info":{"client":"","user":""}}`},
		{"join", func(d []byte, e Encoding) []byte { return AppendJoin(d, e, "room", info) },
			`{"push":"join","channel":"room","info":{"client":"c1","user":"bob"}}`},
		{"leave", func(d []byte, e Encoding) []byte { return AppendLeave(d, e, "room", info) },
			`{"push":"leave","channel":"room","info":{"client":"c1","user":"bob"}}`},
		{"ok", func(d []byte, e Encoding) []byte { return AppendOK(d, e, 42) }, `{"id":42,"ok":true}`},
		{"ok big id", func(d []byte, e Encoding) []byte { return AppendOK(d, e, 1<<64-1) }, `{"id":18446744073709551615,"ok":true}`},
		{"publish ok", func(d []byte, e Encoding) []byte { return AppendPublishOK(d, e, 3, 1<<40) },
			`{"id":3,"ok":true,"offset":1099511627776}`},
		{"subscribe ok", func(d []byte, e Encoding) []byte {
			return AppendSubscribeOK(d, e, 5, StreamPosition{"ep1", 8}, true, []*Publication{p1, nil, p2})
		}, `{"id":5,"ok":true,"epoch":"ep1","offset":8,"recovered":true,"publications":[` +
			`{"channel":"chat:1","epoch":"ep1","offset":7,"data":{"text":"hi","n":[1,2.5,-3],"ok":true,"z":null},"info":{"client":"cli-1","user":"alice"}},` +
			`{"channel":"chat:1","epoch":"ep1","offset":8,"data":"plain \"string\" \u2028","info":{"client":"cli-1","user":"alice"}}]}`},
		{"subscribe ok empty", func(d []byte, e Encoding) []byte {
			return AppendSubscribeOK(d, e, 6, StreamPosition{"ep", 0}, false, nil)
		}, `{"id":6,"ok":true,"epoch":"ep","offset":0,"recovered":false,"publications":[]}`},
		{"history ok", func(d []byte, e Encoding) []byte {
			return AppendHistoryOK(d, e, 7, StreamPosition{"ep1", 8}, []*Publication{p2})
		}, `{"id":7,"ok":true,"epoch":"ep1","offset":8,"publications":[` +
			`{"channel":"chat:1","epoch":"ep1","offset":8,"data":"plain \"string\" \u2028","info":{"client":"cli-1","user":"alice"}}]}`},
		{"history ok empty", func(d []byte, e Encoding) []byte { return AppendHistoryOK(d, e, 8, StreamPosition{}, []*Publication{}) },
			`{"id":8,"ok":true,"epoch":"","offset":0,"publications":[]}`},
		{"history reply truncated", func(d []byte, e Encoding) []byte {
			return AppendHistoryReply(d, e, 7, StreamPosition{"ep1", 8}, []*Publication{p2}, true)
		}, `{"id":7,"ok":true,"epoch":"ep1","offset":8,"publications":[` +
			`{"channel":"chat:1","epoch":"ep1","offset":8,"data":"plain \"string\" \u2028","info":{"client":"cli-1","user":"alice"}}],"truncated":true}`},
		{"history reply not truncated", func(d []byte, e Encoding) []byte {
			return AppendHistoryReply(d, e, 8, StreamPosition{}, nil, false)
		}, `{"id":8,"ok":true,"epoch":"","offset":0,"publications":[]}`},
		{"presence ok", func(d []byte, e Encoding) []byte {
			return AppendPresenceOK(d, e, 9, []ClientInfo{info, {Client: "c3", User: ""}})
		}, `{"id":9,"ok":true,"count":2,"clients":[{"client":"c1","user":"bob"},{"client":"c3","user":""}]}`},
		{"presence ok empty", func(d []byte, e Encoding) []byte { return AppendPresenceOK(d, e, 10, nil) },
			`{"id":10,"ok":true,"count":0,"clients":[]}`},
		{"error", func(d []byte, e Encoding) []byte {
			return AppendError(d, e, 11, true, CodeForbidden, "not allowed: \"x\"")
		},
			`{"id":11,"error":{"code":"forbidden","message":"not allowed: \"x\""}}`},
		{"error without id", func(d []byte, e Encoding) []byte { return AppendError(d, e, 99, false, CodeBadRequest, "bad") },
			`{"error":{"code":"bad_request","message":"bad"}}`},
		{"escaped strings", func(d []byte, e Encoding) []byte {
			return AppendConnected(d, e, ClientInfo{Client: "a\"b\\c", User: "new\nline\t\x01\u2029</script>"})
		}, `{"push":"connected","client":"a\"b\\c","user":"new\nline\t\u0001\u2029</script>"}`},
	}
}

func TestServerEncoders(t *testing.T) {
	for _, tc := range serverCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			js := tc.encode([]byte("pre"), JSON)
			if string(js[:3]) != "pre" {
				t.Fatal("dst prefix lost")
			}
			js = js[3:]
			if string(js) != tc.json {
				t.Fatalf("JSON\n got %s\nwant %s", js, tc.json)
			}
			var ref map[string]any
			if err := json.Unmarshal(js, &ref); err != nil {
				t.Fatalf("encoding/json rejects %s: %v", js, err)
			}
			m := tc.encode(nil, Msgpack)
			// Same values under the reference decoders.
			if a, b := asMap(t, JSON, js), asMap(t, Msgpack, m); !reflect.DeepEqual(a, b) {
				t.Fatalf("msgpack value differs:\n%#v\n%#v", b, a)
			}
			// Same field order: msgpack transcodes to exactly the JSON.
			back, err := Transcode(nil, Msgpack, JSON, m)
			if err != nil {
				t.Fatal(err)
			}
			if string(back) != tc.json {
				t.Fatalf("msgpack field order\n got %s\nwant %s", back, tc.json)
			}
		})
	}
}

func TestServerEncodersAllocs(t *testing.T) {
	for _, tc := range serverCases(t) {
		for _, enc := range encodings {
			buf := make([]byte, 0, 4096)
			if n := testing.AllocsPerRun(100, func() { buf = tc.encode(buf[:0], enc) }); n != 0 {
				t.Errorf("%s/%v: %v allocs", tc.name, enc, n)
			}
		}
	}
}

func TestJSONStringEscaping(t *testing.T) {
	var all strings.Builder
	for c := 0; c < 0x80; c++ {
		all.WriteByte(byte(c))
	}
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "hello world", `"hello world"`},
		{"empty", "", `""`},
		{"quote backslash slash", `a"b\c/d`, `"a\"b\\c/d"`},
		{"short escapes", "\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"other controls", "\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f" + `"`},
		{"html kept", "<a href='x'>&</a>", `"<a href='x'>&</a>"`},
		{"line separators", "a\u2028b\u2029c", `"a\u2028b\u2029c"`},
		{"unicode", "日本語 é 😀", `"日本語 é 😀"`},
		{"invalid utf8", "a\xffb\xc3", `"a\ufffdb\ufffd"`},
		{"surrogate bytes", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
		{"long plain", strings.Repeat("abcdefgh", 10) + "\"", `"` + strings.Repeat("abcdefgh", 10) + `\""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := string(appendJSONString(nil, tc.in))
			if got != tc.want {
				t.Fatalf("got %s want %s", got, tc.want)
			}
			var s string
			if err := json.Unmarshal([]byte(got), &s); err != nil {
				t.Fatal(err)
			}
			if utf8.ValidString(tc.in) && s != tc.in {
				t.Fatalf("decodes to %q", s)
			}
		})
	}
	// Every ASCII character, against encoding/json's reading.
	out := appendJSONString(nil, all.String())
	var s string
	if err := json.Unmarshal(out, &s); err != nil || s != all.String() {
		t.Fatalf("ASCII round trip: %v %q", err, s)
	}
}

func TestAppendJSONFloat(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0, "0"}, {1, "1"}, {-1.5, "-1.5"}, {0.1, "0.1"}, {1e20, "100000000000000000000"},
		{1e21, "1e+21"}, {1e-7, "1e-7"}, {1.5e-7, "1.5e-7"}, {0.000001, "0.000001"}, {123456789.125, "123456789.125"},
		{5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"},
	} {
		got := string(appendJSONFloat(nil, tc.f))
		want, _ := json.Marshal(tc.f)
		if got != tc.want || got != string(want) {
			t.Errorf("appendJSONFloat(%v) = %s, want %s (encoding/json %s)", tc.f, got, tc.want, want)
		}
	}
}

// TestServerEncodersReference decodes pushes and replies with encoding/json
// and msgpack/v5 into map[string]any and compares with literal values.
func TestServerEncodersReference(t *testing.T) {
	p := testPub(t, "news", 3, `{"title":"x","tags":["a"],"score":-1.5}`)
	for _, tc := range []struct {
		name   string
		encode func(dst []byte, enc Encoding) []byte
		want   map[string]any
	}{
		{"pub", func(d []byte, e Encoding) []byte { return AppendPub(d, e, p) }, map[string]any{
			"push": "pub", "channel": "news", "epoch": "ep1", "offset": intNum("3"),
			"data": map[string]any{"title": "x", "tags": []any{"a"}, "score": -1.5},
			"info": map[string]any{"client": "cli-1", "user": "alice"},
		}},
		{"history", func(d []byte, e Encoding) []byte {
			return AppendHistoryOK(d, e, 1, StreamPosition{"ep1", 3}, []*Publication{p})
		}, map[string]any{
			"id": intNum("1"), "ok": true, "epoch": "ep1", "offset": intNum("3"),
			"publications": []any{map[string]any{
				"channel": "news", "epoch": "ep1", "offset": intNum("3"),
				"data": map[string]any{"title": "x", "tags": []any{"a"}, "score": -1.5},
				"info": map[string]any{"client": "cli-1", "user": "alice"},
			}},
		}},
		{"error", func(d []byte, e Encoding) []byte { return AppendError(d, e, 0, false, CodeInternal, "oops") }, map[string]any{
			"error": map[string]any{"code": "internal", "message": "oops"},
		}},
		{"presence", func(d []byte, e Encoding) []byte {
			return AppendPresenceOK(d, e, 2, []ClientInfo{{Client: "a", User: "b"}})
		}, map[string]any{
			"id": intNum("2"), "ok": true, "count": intNum("1"), "clients": []any{map[string]any{"client": "a", "user": "b"}},
		}},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				if got := asMap(t, enc, tc.encode(nil, enc)); !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got  %#v\nwant %#v", got, tc.want)
				}
			})
		}
	}
}
