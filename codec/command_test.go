package codec

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestEncodingNames(t *testing.T) {
	for _, tc := range []struct {
		enc       Encoding
		name, sub string
	}{
		{JSON, "json", SubprotocolJSON},
		{Msgpack, "msgpack", SubprotocolMsgpack},
	} {
		if got := tc.enc.String(); got != tc.name {
			t.Errorf("%d.String() = %q, want %q", tc.enc, got, tc.name)
		}
		if got := tc.enc.Subprotocol(); got != tc.sub {
			t.Errorf("%v.Subprotocol() = %q, want %q", tc.enc, got, tc.sub)
		}
		if got, ok := EncodingFromSubprotocol(tc.sub); !ok || got != tc.enc {
			t.Errorf("EncodingFromSubprotocol(%q) = %v, %v", tc.sub, got, ok)
		}
	}
	if _, ok := EncodingFromSubprotocol("fanout.v1.xml"); ok {
		t.Error("unknown subprotocol accepted")
	}
	if Encoding(0).Subprotocol() != "" || Encoding(9).String() != "Encoding(9)" {
		t.Error("invalid encoding names")
	}
}

func TestOpNames(t *testing.T) {
	want := map[Op]string{OpUnknown: "", OpSubscribe: "subscribe", OpUnsubscribe: "unsubscribe",
		OpPublish: "publish", OpPresence: "presence", OpHistory: "history", OpPing: "ping", OpConnect: "connect", OpRefresh: "refresh", Op(200): ""}
	for op, name := range want {
		if got := op.String(); got != name {
			t.Errorf("Op(%d).String() = %q, want %q", op, got, name)
		}
		if op != Op(200) && opFromName([]byte(name)) != op {
			t.Errorf("opFromName(%q) != %d", name, op)
		}
	}
}

func TestValidChannel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"chat:room-1/sub_2.x", true},
		{"ABCxyz0189_-:./", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{strings.Repeat("a", 256), false},
		{"a b", false},
		{"a*", false},
		{"é", false},
		{"a\x00", false},
		{"a#b", false},
	} {
		if got := ValidChannel([]byte(tc.name)); got != tc.ok {
			t.Errorf("ValidChannel(%q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

// jsonToMsgpack re-encodes a JSON text with msgpack/v5 (numbers as int64,
// uint64 or float64), for tests that state a message once.
func jsonToMsgpack(t testing.TB, s string) []byte {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return mp(t, numbersForMsgpack(v))
}

func numbersForMsgpack(v any) any {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		if f, err := v.Float64(); err == nil {
			return f
		}
		return string(v)
	case []any:
		for i, e := range v {
			v[i] = numbersForMsgpack(e)
		}
	case map[string]any:
		for k, e := range v {
			v[k] = numbersForMsgpack(e)
		}
	}
	return v
}

// wantCommand compares a decoded command with the expected one; Data is
// compared as a value (w.Data is JSON text).
func wantCommand(t *testing.T, enc Encoding, got, want *Command) {
	t.Helper()
	if got.Op != want.Op || got.ID != want.ID || got.HasID != want.HasID ||
		!bytes.Equal(got.Channel, want.Channel) || got.HasRecover != want.HasRecover ||
		!bytes.Equal(got.RecoverEpoch, want.RecoverEpoch) || got.RecoverOffset != want.RecoverOffset ||
		got.Presence != want.Presence || got.Limit != want.Limit || (got.Data == nil) != (want.Data == nil) ||
		!bytes.Equal(got.Token, want.Token) || !bytes.Equal(got.Name, want.Name) {
		t.Fatalf("%v: got %+v\nwant %+v", enc, got, want)
	}
	if want.Data != nil {
		sameValue(t, enc, got.Data, JSON, want.Data)
	}
}

func TestCommandRoundTrip(t *testing.T) {
	data := `{"text":"héllo \"world\"\n","n":[1,-2,3.5,18446744073709551615,-9223372036854775808],"ok":true,"nil":null,"o":{}}`
	for _, tc := range []struct {
		name string
		cmd  Command
	}{
		{"ping", Command{Op: OpPing}},
		{"ping with id", Command{Op: OpPing, ID: 1, HasID: true}},
		{"subscribe", Command{Op: OpSubscribe, ID: 2, HasID: true, Channel: []byte("chat:1")}},
		{"subscribe recover presence", Command{Op: OpSubscribe, ID: math.MaxUint64, HasID: true, Channel: []byte("a/b.c"),
			HasRecover: true, RecoverEpoch: []byte("ep-\"1\""), RecoverOffset: math.MaxUint64, Presence: true}},
		{"recover from 0 with empty epoch", Command{Op: OpSubscribe, Channel: []byte("c"), HasRecover: true, RecoverEpoch: []byte{}}},
		{"unsubscribe", Command{Op: OpUnsubscribe, ID: 3, HasID: true, Channel: []byte("c")}},
		{"publish object", Command{Op: OpPublish, ID: 4, HasID: true, Channel: []byte("c"), Data: []byte(data)}},
		{"publish string", Command{Op: OpPublish, Channel: []byte("c"), Data: []byte(`"\u2028 \u0000 \ud83d\ude00"`)}},
		{"publish null", Command{Op: OpPublish, Channel: []byte("c"), Data: []byte(`null`)}},
		{"publish number", Command{Op: OpPublish, Channel: []byte("c"), Data: []byte(`-0.000001`)}},
		{"publish big array", Command{Op: OpPublish, Channel: []byte("c"), Data: []byte("[" + strings.Repeat(`"x",`, 70000) + `"y"]`)}},
		{"presence", Command{Op: OpPresence, ID: 5, HasID: true, Channel: []byte(strings.Repeat("x", 255))}},
		{"history", Command{Op: OpHistory, ID: 6, HasID: true, Channel: []byte("c")}},
		{"history limit", Command{Op: OpHistory, Channel: []byte("c"), Limit: 1 << 40}},
		{"connect token", Command{Op: OpConnect, ID: 7, HasID: true, Token: []byte("eyJ.eyJ.sig-_")}},
		{"connect name", Command{Op: OpConnect, ID: 8, HasID: true, Name: []byte("Ada \"Lovelace\" ☃")}},
		{"connect bare", Command{Op: OpConnect}},
		{"refresh", Command{Op: OpRefresh, ID: 9, HasID: true, Token: []byte("a.b.c")}},
		{"subscribe name", Command{Op: OpSubscribe, ID: 10, HasID: true, Channel: []byte("c"), Name: []byte("Bob")}},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				in := tc.cmd
				if in.Data != nil && enc == Msgpack {
					var err error
					if in.Data, err = Transcode(nil, JSON, Msgpack, in.Data); err != nil {
						t.Fatal(err)
					}
					sameValue(t, Msgpack, in.Data, JSON, tc.cmd.Data)
				}
				msg := AppendCommand([]byte("prefix"), enc, &in)
				if !bytes.HasPrefix(msg, []byte("prefix")) {
					t.Fatal("AppendCommand lost dst")
				}
				msg = msg[len("prefix"):]
				if _, err := refDecode(t, enc, msg); err != nil {
					t.Fatalf("reference decoder rejects %q: %v", msg, err)
				}
				var got Command
				if err := DecodeCommand(enc, msg, &got); err != nil {
					t.Fatalf("DecodeCommand(%q): %v", msg, err)
				}
				wantCommand(t, enc, &got, &tc.cmd)
			})
		}
	}
}

// cmdErrCase is one invalid message: want is ErrNotObject or a code.
type cmdErrCase struct {
	name    string
	msg     string // JSON text, or raw msgpack for msgpack-only cases
	want    string // "" for ErrNotObject, else the code
	message string // substring of the error message
	id      uint64
	hasID   bool
	op      Op
}

func checkCommandError(t *testing.T, enc Encoding, msg []byte, tc cmdErrCase) {
	t.Helper()
	var cmd Command
	err := DecodeCommand(enc, msg, &cmd)
	if tc.want == "" {
		if err != ErrNotObject {
			t.Fatalf("DecodeCommand(%v, %q) = %v, want ErrNotObject", enc, msg, err)
		}
		return
	}
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("DecodeCommand(%v, %q) = %v, want a %s CommandError", enc, msg, err, tc.want)
	}
	if ce.Code != tc.want || !strings.Contains(ce.Message, tc.message) {
		t.Fatalf("DecodeCommand(%v, %q) = %q %q, want %q containing %q", enc, msg, ce.Code, ce.Message, tc.want, tc.message)
	}
	if cmd.HasID != tc.hasID || cmd.ID != tc.id {
		t.Fatalf("DecodeCommand(%v, %q): id %d %v, want %d %v", enc, msg, cmd.ID, cmd.HasID, tc.id, tc.hasID)
	}
	if cmd.Op != tc.op {
		t.Fatalf("DecodeCommand(%v, %q): op %v, want %v", enc, msg, cmd.Op, tc.op)
	}
}

// Errors stated as JSON that is valid JSON: checked in both encodings.
var bothErrCases = []cmdErrCase{
	{name: "array", msg: `[]`},
	{name: "string", msg: `"op"`},
	{name: "number", msg: `12`},
	{name: "null", msg: `null`},
	{name: "empty object", msg: `{}`, want: CodeBadRequest, message: "missing op"},
	{name: "null op", msg: `{"op":null}`, want: CodeBadRequest, message: "missing op"},
	{name: "op number", msg: `{"op":1}`, want: CodeBadRequest, message: "op must be a string"},
	{name: "op object", msg: `{"op":{"x":[1]}}`, want: CodeBadRequest, message: "op must be a string"},
	{name: "unknown op", msg: `{"op":"nope","id":3}`, want: CodeUnknownOp, message: `"nope"`, id: 3, hasID: true},
	{name: "empty op", msg: `{"op":""}`, want: CodeUnknownOp, message: `unknown op ""`},
	{name: "op case", msg: `{"op":"Ping"}`, want: CodeUnknownOp, message: `"Ping"`},
	{name: "negative id", msg: `{"op":"ping","id":-1}`, want: CodeBadRequest, message: "id must be an unsigned integer"},
	{name: "float id", msg: `{"op":"ping","id":1.5}`, want: CodeBadRequest, message: "id must be an unsigned integer"},
	{name: "string id", msg: `{"op":"ping","id":"1"}`, want: CodeBadRequest, message: "id must be an unsigned integer"},
	{name: "bool id", msg: `{"op":"ping","id":true}`, want: CodeBadRequest, message: "id must be an unsigned integer"},
	{name: "id before op error", msg: `{"op":"bogus","id":-5}`, want: CodeBadRequest, message: "id must be"},
	{name: "subscribe no channel", msg: `{"op":"subscribe","id":7}`, want: CodeBadRequest, message: "missing channel", id: 7, hasID: true, op: OpSubscribe},
	{name: "unsubscribe no channel", msg: `{"op":"unsubscribe"}`, want: CodeBadRequest, message: "missing channel", op: OpUnsubscribe},
	{name: "publish no channel", msg: `{"op":"publish","data":1}`, want: CodeBadRequest, message: "missing channel", op: OpPublish},
	{name: "presence no channel", msg: `{"op":"presence"}`, want: CodeBadRequest, message: "missing channel", op: OpPresence},
	{name: "history no channel", msg: `{"op":"history","channel":null}`, want: CodeBadRequest, message: "missing channel", op: OpHistory},
	{name: "channel number", msg: `{"op":"subscribe","channel":5}`, want: CodeBadRequest, message: "channel must be a string", op: OpSubscribe},
	{name: "channel empty", msg: `{"op":"subscribe","channel":""}`, want: CodeBadRequest, message: "invalid channel", op: OpSubscribe},
	{name: "channel space", msg: `{"op":"publish","channel":"a b","data":1}`, want: CodeBadRequest, message: "invalid channel", op: OpPublish},
	{name: "channel unicode", msg: `{"op":"history","channel":"é"}`, want: CodeBadRequest, message: "invalid channel", op: OpHistory},
	{name: "channel too long", msg: `{"op":"presence","channel":"` + strings.Repeat("a", 256) + `"}`, want: CodeBadRequest, message: "invalid channel", op: OpPresence},
	{name: "publish no data", msg: `{"op":"publish","channel":"c","id":9}`, want: CodeBadRequest, message: "publish needs data", id: 9, hasID: true, op: OpPublish},
	{name: "recover number", msg: `{"op":"subscribe","channel":"c","recover":5}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover epoch number", msg: `{"op":"subscribe","channel":"c","recover":{"epoch":1,"offset":2}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover no offset", msg: `{"op":"subscribe","channel":"c","recover":{"epoch":"e"}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover no epoch", msg: `{"op":"subscribe","channel":"c","recover":{"offset":1}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover negative offset", msg: `{"op":"subscribe","channel":"c","recover":{"epoch":"e","offset":-1}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover float offset", msg: `{"op":"subscribe","channel":"c","recover":{"epoch":"e","offset":1.5}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "recover empty", msg: `{"op":"subscribe","channel":"c","recover":{}}`, want: CodeBadRequest, message: "recover must be", op: OpSubscribe},
	{name: "presence string", msg: `{"op":"subscribe","channel":"c","presence":"yes"}`, want: CodeBadRequest, message: "presence must be a boolean", op: OpSubscribe},
	{name: "presence number", msg: `{"op":"subscribe","channel":"c","presence":1}`, want: CodeBadRequest, message: "presence must be a boolean", op: OpSubscribe},
	{name: "limit negative", msg: `{"op":"history","channel":"c","limit":-1}`, want: CodeBadRequest, message: "limit must be", op: OpHistory},
	{name: "limit float", msg: `{"op":"history","channel":"c","limit":2.5}`, want: CodeBadRequest, message: "limit must be", op: OpHistory},
	{name: "limit string", msg: `{"op":"history","channel":"c","limit":"5"}`, want: CodeBadRequest, message: "limit must be", op: OpHistory},
	{name: "refresh no token", msg: `{"op":"refresh","id":4}`, want: CodeBadRequest, message: "refresh needs token", id: 4, hasID: true, op: OpRefresh},
	{name: "refresh null token", msg: `{"op":"refresh","token":null}`, want: CodeBadRequest, message: "refresh needs token", op: OpRefresh},
	{name: "refresh token number", msg: `{"op":"refresh","token":5}`, want: CodeBadRequest, message: "token must be a string", op: OpRefresh},
	{name: "connect token object", msg: `{"op":"connect","token":{"a":1}}`, want: CodeBadRequest, message: "token must be a string", op: OpConnect},
	{name: "connect name number", msg: `{"op":"connect","name":1}`, want: CodeBadRequest, message: "name must be a string", op: OpConnect},
	{name: "subscribe name bool", msg: `{"op":"subscribe","channel":"c","name":true}`, want: CodeBadRequest, message: "name must be a string", op: OpSubscribe},
}

// JSON-only errors (malformed JSON, JSON-specific values).
var jsonErrCases = []cmdErrCase{
	{name: "empty", msg: ``},
	{name: "spaces", msg: "  \n"},
	{name: "unterminated", msg: `{"op":"ping"`},
	{name: "trailing comma", msg: `{"op":"ping",}`},
	{name: "missing colon", msg: `{"op" "ping"}`},
	{name: "single quotes", msg: `{'op':'ping'}`},
	{name: "trailing garbage", msg: `{"op":"ping"}x`},
	{name: "two objects", msg: `{"op":"ping"}{}`},
	{name: "bad literal", msg: `{"op":"ping","presence":tru}`},
	{name: "leading zero", msg: `{"op":"ping","id":01}`},
	{name: "bare minus", msg: `{"op":"ping","id":-}`},
	{name: "bad fraction", msg: `{"op":"ping","id":1.}`},
	{name: "bad exponent", msg: `{"op":"ping","x":1e}`},
	{name: "plus number", msg: `{"op":"ping","x":+1}`},
	{name: "raw newline in string", msg: "{\"op\":\"pi\nng\"}"},
	{name: "raw tab in key", msg: "{\"o\tp\":\"ping\"}"},
	{name: "invalid utf8", msg: "{\"op\":\"ping\",\"x\":\"\xff\"}"},
	{name: "utf8 surrogate bytes", msg: "{\"op\":\"ping\",\"x\":\"\xed\xa0\x80\"}"},
	{name: "overlong utf8", msg: "{\"op\":\"ping\",\"x\":\"\xc0\xaf\"}"},
	{name: "truncated utf8", msg: "{\"op\":\"ping\",\"x\":\"\xe2\x82\"}"},
	{name: "bad escape", msg: `{"op":"ping","x":"\x41"}`},
	{name: "short unicode escape", msg: `{"op":"ping","x":"\u12"}`},
	{name: "bad hex escape", msg: `{"op":"ping","x":"\u12g4"}`},
	{name: "malformed data", msg: `{"op":"publish","channel":"c","data":[1,}`},
	{name: "malformed unknown field", msg: `{"op":"ping","x":{"a":}}`},
	{name: "deep data", msg: `{"op":"publish","channel":"c","data":` + strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth) + `}`},
	{name: "non-string key", msg: `{1:2}`},
	{name: "duplicate bad id then good", msg: `{"id":-1,"id":5,"op":"nope"}`, want: CodeUnknownOp, message: "nope", id: 5, hasID: true},
	{name: "duplicate good id then bad", msg: `{"id":5,"id":-1,"op":"ping"}`, want: CodeBadRequest, message: "id must be"},
	{name: "id overflow", msg: `{"op":"ping","id":18446744073709551616}`, want: CodeBadRequest, message: "id must be"},
	{name: "id exponent", msg: `{"op":"ping","id":1e3}`, want: CodeBadRequest, message: "id must be"},
	{name: "negative zero id", msg: `{"op":"ping","id":-0}`, want: CodeBadRequest, message: "id must be"},
	{name: "lone high surrogate", msg: `{"op":"publish","channel":"c","data":"\ud800"}`, want: CodeBadRequest, message: "surrogate", op: OpPublish},
	{name: "lone low surrogate", msg: `{"op":"publish","channel":"c","data":{"\udc00":1}}`, want: CodeBadRequest, message: "surrogate", op: OpPublish},
	{name: "reversed pair", msg: `{"op":"publish","channel":"c","data":"\udc00\ud800"}`, want: CodeBadRequest, message: "surrogate", op: OpPublish},
	{name: "high then non-surrogate", msg: `{"op":"publish","channel":"c","data":"\ud800\u0041"}`, want: CodeBadRequest, message: "surrogate", op: OpPublish},
	{name: "number out of range", msg: `{"op":"publish","channel":"c","data":[1e400]}`, want: CodeBadRequest, message: "range", op: OpPublish},
	{name: "long number out of range", msg: `{"op":"publish","channel":"c","data":` + strings.Repeat("9", 400) + `}`, want: CodeBadRequest, message: "range", op: OpPublish},
	{name: "escaped op unknown", msg: `{"\u006fp":"p\u0069ng!"}`, want: CodeUnknownOp, message: `"ping!"`},
	{name: "surrogate channel", msg: `{"op":"subscribe","channel":"\ud800"}`, want: CodeBadRequest, message: "invalid channel", op: OpSubscribe},
}

func TestDecodeCommandErrors(t *testing.T) {
	for _, tc := range bothErrCases {
		t.Run(tc.name+"/enc=json", func(t *testing.T) { checkCommandError(t, JSON, []byte(tc.msg), tc) })
		t.Run(tc.name+"/enc=msgpack", func(t *testing.T) { checkCommandError(t, Msgpack, jsonToMsgpack(t, tc.msg), tc) })
	}
	for _, tc := range jsonErrCases {
		t.Run(tc.name+"/enc=json", func(t *testing.T) { checkCommandError(t, JSON, []byte(tc.msg), tc) })
	}
	for _, tc := range msgpackErrCases(t) {
		t.Run(tc.name+"/enc=msgpack", func(t *testing.T) { checkCommandError(t, Msgpack, []byte(tc.msg), tc) })
	}
	if err := DecodeCommand(0, []byte(`{}`), new(Command)); err != ErrEncoding {
		t.Errorf("DecodeCommand with encoding 0: %v", err)
	}
}

// mpBuild concatenates msgpack pieces given as strings or byte slices.
func mpBuild(parts ...any) string {
	var b []byte
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			b = append(b, p...)
		case []byte:
			b = append(b, p...)
		case byte:
			b = append(b, p)
		case int:
			b = append(b, byte(p))
		}
	}
	return string(b)
}

// fs is a msgpack fixstr.
func fs(s string) string { return string(mpAppendStr(nil, s)) }

func msgpackErrCases(t testing.TB) []cmdErrCase {
	pub := fs("op") + fs("publish") + fs("channel") + fs("c") + fs("data")
	return []cmdErrCase{
		{name: "empty", msg: ""},
		{name: "array", msg: "\x91\xa1x"},
		{name: "str", msg: fs("op")},
		{name: "truncated map", msg: "\x82" + fs("op") + fs("ping")},
		{name: "truncated str", msg: "\x81" + fs("op") + "\xa4pin"},
		{name: "truncated map16 header", msg: "\xde\x00"},
		{name: "truncated map32 count", msg: "\xdf\xff\xff\xff\xff" + fs("op") + fs("ping")},
		{name: "trailing bytes", msg: "\x81" + fs("op") + fs("ping") + "\xc0"},
		{name: "never used code", msg: "\x82" + fs("op") + fs("ping") + fs("x") + "\xc1"},
		{name: "truncated data", msg: "\x83" + pub + "\x92\x01"},
		{name: "truncated bin data", msg: "\x83" + pub + "\xc4\x05ab"},
		{name: "truncated float", msg: "\x83" + pub + "\xcb\x00\x00"},
		{name: "truncated id", msg: "\x82" + fs("op") + fs("ping") + fs("id") + "\xcd\x01"},
		{name: "deep data", msg: "\x83" + pub + strings.Repeat("\x91", MaxDepth) + "\xc0"},
		{name: "negative id int8", msg: "\x82" + fs("op") + fs("ping") + fs("id") + "\xd0\xfe", want: CodeBadRequest, message: "id must be"},
		{name: "negative id fixint", msg: "\x82" + fs("op") + fs("ping") + fs("id") + "\xff", want: CodeBadRequest, message: "id must be"},
		{name: "float id", msg: "\x82" + fs("op") + fs("ping") + fs("id") + "\xcb" + string(binary.BigEndian.AppendUint64(nil, math.Float64bits(1))), want: CodeBadRequest, message: "id must be"},
		{name: "bin op", msg: "\x81" + fs("op") + "\xc4\x04ping", want: CodeBadRequest, message: "op must be a string"},
		{name: "ext data", msg: "\x83" + pub + "\xd4\x01\x00", want: CodeBadRequest, message: "ext", op: OpPublish},
		{name: "timestamp data", msg: "\x83" + pub + string(mp(t, map[string]any{"t": math.MaxInt32})[:0]) + "\xd6\xff\x00\x00\x00\x01", want: CodeBadRequest, message: "ext", op: OpPublish},
		{name: "int map key", msg: "\x83" + pub + "\x81\x01\x02", want: CodeBadRequest, message: "map key", op: OpPublish},
		{name: "nested int map key", msg: "\x83" + pub + "\x91\x81\xc0\x02", want: CodeBadRequest, message: "map key", op: OpPublish},
		{name: "invalid utf8 str", msg: "\x83" + pub + "\xa2\xff\xfe", want: CodeBadRequest, message: "UTF-8", op: OpPublish},
		{name: "NaN", msg: "\x83" + pub + "\xcb" + string(binary.BigEndian.AppendUint64(nil, math.Float64bits(math.NaN()))), want: CodeBadRequest, message: "NaN", op: OpPublish},
		{name: "Inf float32", msg: "\x83" + pub + "\xca" + string(binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(math.Inf(-1))))), want: CodeBadRequest, message: "NaN", op: OpPublish},
	}
}

func TestDecodeCommandJSONForms(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want Command
	}{
		{"whitespace", " \t\r\n{ \"op\" : \"publish\" ,\n\"channel\"\t:\"c\" , \"data\" : [ 1 , { \"a\" : null } ] , \"id\" : 12 } \n",
			Command{Op: OpPublish, ID: 12, HasID: true, Channel: []byte("c"), Data: []byte(`[1,{"a":null}]`)}},
		{"unknown fields", `{"x":{"op":"nope","y":[1,2,{"z":"\u00e9"}]},"op":"ping","extra":true,"n":-1.5e-3}`, Command{Op: OpPing}},
		{"duplicates last wins", `{"op":"nope","channel":"a b","op":"unsubscribe","channel":"good","id":-1,"id":4}`,
			Command{Op: OpUnsubscribe, ID: 4, HasID: true, Channel: []byte("good")}},
		{"nulls are absent", `{"op":"subscribe","id":null,"channel":"c","recover":null,"presence":null}`, Command{Op: OpSubscribe, Channel: []byte("c")}},
		{"data null", `{"op":"publish","channel":"c","data":null}`, Command{Op: OpPublish, Channel: []byte("c"), Data: []byte("null")}},
		{"escaped key and values", `{"\u006f\u0070":"sub\u0073cribe","\u0063hannel":"room\/1","recover":{"\u0065poch":"\u00e9\"p","offset":0}}`,
			Command{Op: OpSubscribe, Channel: []byte("room/1"), HasRecover: true, RecoverEpoch: []byte("é\"p")}},
		{"ignored fields for op", `{"op":"ping","channel":"bad channel","data":1,"recover":3,"limit":-1}`, Command{Op: OpPing}},
		{"presence false", `{"op":"subscribe","channel":"c","presence":false}`, Command{Op: OpSubscribe, Channel: []byte("c")}},
		{"limit zero", `{"op":"history","channel":"c","limit":0}`, Command{Op: OpHistory, Channel: []byte("c")}},
		{"limit huge clamps", `{"op":"history","channel":"c","limit":123456789012345678901234567890}`, Command{Op: OpHistory, Channel: []byte("c"), Limit: maxInt}},
		{"max id", `{"op":"ping","id":18446744073709551615}`, Command{Op: OpPing, ID: math.MaxUint64, HasID: true}},
		{"recover unknown fields", `{"op":"subscribe","channel":"c","recover":{"x":[{}],"offset":5,"epoch":"e","offset":6}}`,
			Command{Op: OpSubscribe, Channel: []byte("c"), HasRecover: true, RecoverEpoch: []byte("e"), RecoverOffset: 6}},
		{"data string with escapes", `{"op":"publish","channel":"c","data":"a\"b\\c\/d\b\f\n\r\t\u0000\ud83d\ude00"}`,
			Command{Op: OpPublish, Channel: []byte("c"), Data: []byte(`"a\"b\\c/d\b\f\n\r\t\u0000😀"`)}},
		{"raw utf8", `{"op":"publish","channel":"c","data":"日本語 ✓ 😀 \u2028"}`, Command{Op: OpPublish, Channel: []byte("c"), Data: []byte(`"日本語 ✓ 😀 \u2028"`)}},
		{"long escaped key is unknown", `{"op":"ping","` + strings.Repeat(`\u0061`, 20) + `":1}`, Command{Op: OpPing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := []byte(tc.msg)
			orig := bytes.Clone(msg)
			var cmd Command
			if err := DecodeCommand(JSON, msg, &cmd); err != nil {
				t.Fatalf("DecodeCommand(%q): %v", msg, err)
			}
			wantCommand(t, JSON, &cmd, &tc.want)
			if !bytes.Equal(msg, orig) {
				t.Fatal("DecodeCommand modified msg")
			}
		})
	}
}

func TestDecodeCommandDataIsRaw(t *testing.T) {
	msg := []byte(`{"op":"publish","channel":"c","data": {"b" : [1, 2.50]} ,"id":1}`)
	var cmd Command
	if err := DecodeCommand(JSON, msg, &cmd); err != nil {
		t.Fatal(err)
	}
	if string(cmd.Data) != `{"b" : [1, 2.50]}` {
		t.Fatalf("Data = %q", cmd.Data)
	}
	if &cmd.Data[0] != &msg[bytes.Index(msg, []byte(`{"b"`))] {
		t.Fatal("Data does not alias msg")
	}
	if cap(cmd.Data) != len(cmd.Data) || cap(cmd.Channel) != len(cmd.Channel) {
		t.Fatal("aliasing slices must not expose the rest of msg to append")
	}
	m := mp(t, map[string]any{"op": "publish", "channel": "c", "data": []byte{1, 2, 3}})
	if err := DecodeCommand(Msgpack, m, &cmd); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cmd.Data, []byte{mpBin8, 3, 1, 2, 3}) {
		t.Fatalf("bin data = %x", cmd.Data)
	}
}

func TestDecodeCommandMsgpackForms(t *testing.T) {
	ping := fs("op") + fs("ping")
	for _, tc := range []struct {
		name string
		msg  string
		want Command
	}{
		{"fixint id", "\x82" + ping + fs("id") + "\x7f", Command{Op: OpPing, ID: 127, HasID: true}},
		{"uint8 id", "\x82" + ping + fs("id") + "\xcc\xff", Command{Op: OpPing, ID: 255, HasID: true}},
		{"uint16 id", "\x82" + ping + fs("id") + "\xcd\x01\x00", Command{Op: OpPing, ID: 256, HasID: true}},
		{"uint32 id", "\x82" + ping + fs("id") + "\xce\x01\x00\x00\x00", Command{Op: OpPing, ID: 1 << 24, HasID: true}},
		{"uint64 id", "\x82" + ping + fs("id") + "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", Command{Op: OpPing, ID: math.MaxUint64, HasID: true}},
		{"int8 id", "\x82" + ping + fs("id") + "\xd0\x05", Command{Op: OpPing, ID: 5, HasID: true}},
		{"int16 id", "\x82" + ping + fs("id") + "\xd1\x00\x05", Command{Op: OpPing, ID: 5, HasID: true}},
		{"int32 id", "\x82" + ping + fs("id") + "\xd2\x00\x00\x00\x05", Command{Op: OpPing, ID: 5, HasID: true}},
		{"int64 id", "\x82" + ping + fs("id") + "\xd3\x7f\xff\xff\xff\xff\xff\xff\xff", Command{Op: OpPing, ID: math.MaxInt64, HasID: true}},
		{"nil id", "\x82" + ping + fs("id") + "\xc0", Command{Op: OpPing}},
		{"str8 op", "\x81" + fs("op") + "\xd9\x04ping", Command{Op: OpPing}},
		{"str16 op", "\x81" + fs("op") + "\xda\x00\x04ping", Command{Op: OpPing}},
		{"str32 op and key", "\x81\xdb\x00\x00\x00\x02op\xdb\x00\x00\x00\x04ping", Command{Op: OpPing}},
		{"map16", "\xde\x00\x01" + ping, Command{Op: OpPing}},
		{"map32", "\xdf\x00\x00\x00\x01" + ping, Command{Op: OpPing}},
		{"non-string keys ignored", "\x83\x01\x02" + ping + "\x92\x01\x02\x81\xc0\xc0", Command{Op: OpPing}},
		{"unknown fields", "\x83" + fs("x") + "\xd4\x01\x00" + ping + fs("y") + "\xc7\x02\x05ab", Command{Op: OpPing}},
		{"limit widths", "\x83" + fs("op") + fs("history") + fs("channel") + fs("c") + fs("limit") + "\xd2\x00\x00\x01\x00", Command{Op: OpHistory, Channel: []byte("c"), Limit: 256}},
		{"recover int widths", "\x83" + fs("op") + fs("subscribe") + fs("channel") + fs("c") + fs("recover") + "\x82" + fs("offset") + "\xd1\x01\x00" + fs("epoch") + "\xd9\x01e",
			Command{Op: OpSubscribe, Channel: []byte("c"), HasRecover: true, RecoverEpoch: []byte("e"), RecoverOffset: 256}},
		{"duplicates last wins", "\x84" + fs("op") + fs("nope") + fs("id") + "\xff" + ping + fs("id") + "\x01", Command{Op: OpPing, ID: 1, HasID: true}},
		{"float32 data", "\x83" + fs("op") + fs("publish") + fs("channel") + fs("c") + fs("data") + "\xca\x3f\xc0\x00\x00",
			Command{Op: OpPublish, Channel: []byte("c"), Data: []byte("1.5")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cmd Command
			if err := DecodeCommand(Msgpack, []byte(tc.msg), &cmd); err != nil {
				t.Fatalf("DecodeCommand(% x): %v", tc.msg, err)
			}
			wantCommand(t, Msgpack, &cmd, &tc.want)
		})
	}
}

func TestDecodeCommandReusesCommand(t *testing.T) {
	var cmd Command
	msgs := []string{
		`{"op":"subscribe","id":1,"channel":"r\/1","recover":{"epoch":"e","offset":4},"presence":true}`,
		`{"op":"history","channel":"h","limit":3}`,
		`{"op":"ping"}`,
	}
	if err := DecodeCommand(JSON, []byte(msgs[0]), &cmd); err != nil || string(cmd.Channel) != "r/1" {
		t.Fatal(err, string(cmd.Channel))
	}
	if err := DecodeCommand(JSON, []byte(msgs[1]), &cmd); err != nil {
		t.Fatal(err)
	}
	wantCommand(t, JSON, &cmd, &Command{Op: OpHistory, Channel: []byte("h"), Limit: 3})
	if err := DecodeCommand(Msgpack, jsonToMsgpack(t, msgs[2]), &cmd); err != nil {
		t.Fatal(err)
	}
	wantCommand(t, Msgpack, &cmd, &Command{Op: OpPing})
}

// TestCommandAgainstReference decodes commands encoded by msgpack/v5 and
// encoding/json from a struct, the way third-party clients build them.
func TestCommandAgainstReference(t *testing.T) {
	type recover struct {
		Epoch  string `json:"epoch" msgpack:"epoch"`
		Offset uint64 `json:"offset" msgpack:"offset"`
	}
	type command struct {
		ID       uint64   `json:"id,omitempty" msgpack:"id,omitempty"`
		Op       string   `json:"op" msgpack:"op"`
		Channel  string   `json:"channel,omitempty" msgpack:"channel,omitempty"`
		Data     any      `json:"data,omitempty" msgpack:"data,omitempty"`
		Recover  *recover `json:"recover,omitempty" msgpack:"recover,omitempty"`
		Presence bool     `json:"presence,omitempty" msgpack:"presence,omitempty"`
		Limit    int      `json:"limit,omitempty" msgpack:"limit,omitempty"`
	}
	in := command{ID: 300, Op: "subscribe", Channel: "news", Recover: &recover{"ep", 1 << 33}, Presence: true}
	pub := command{ID: 1 << 40, Op: "publish", Channel: "news", Data: map[string]any{"a": []any{1.25, "x", false}}}
	for _, enc := range encodings {
		for _, c := range []command{in, pub} {
			var msg []byte
			var err error
			if enc == JSON {
				msg, err = json.Marshal(c)
			} else {
				msg, err = msgpack.Marshal(c)
			}
			if err != nil {
				t.Fatal(err)
			}
			var cmd Command
			if err := DecodeCommand(enc, msg, &cmd); err != nil {
				t.Fatalf("%v %q: %v", enc, msg, err)
			}
			if cmd.ID != c.ID || cmd.Op.String() != c.Op || string(cmd.Channel) != c.Channel || cmd.Presence != c.Presence {
				t.Fatalf("%v: %+v from %+v", enc, cmd, c)
			}
			if c.Recover != nil && (!cmd.HasRecover || string(cmd.RecoverEpoch) != c.Recover.Epoch || cmd.RecoverOffset != c.Recover.Offset) {
				t.Fatalf("%v: recover %+v", enc, cmd)
			}
			if c.Data != nil {
				want, _ := json.Marshal(c.Data)
				sameValue(t, enc, cmd.Data, JSON, want)
			}
		}
	}
}

func TestDecodeCommandAllocs(t *testing.T) {
	data := `{"user":"alice","text":"hello, world","tags":["a","b"],"n":12345,"f":0.5,"ok":true,"nil":null}`
	jsonMsgs := []string{
		`{"id":1,"op":"publish","channel":"chat:1","data":` + data + `}`,
		`{"id":2,"op":"subscribe","channel":"chat:1","recover":{"epoch":"abc","offset":10},"presence":true}`,
		`{"id":3,"op":"history","channel":"c","limit":10,"x":[1,{"y":2}]}`,
		`{"id":4,"op":"subscribe","channel":"a\/b"}`, // escaped: scratch, after warm-up
		`{"op":"nope"}`, // error with a fixed message... the unknown op one allocates its message
	}
	for i, s := range jsonMsgs[:4] {
		for _, enc := range encodings {
			msg := []byte(s)
			if enc == Msgpack {
				msg = jsonToMsgpack(t, s)
			}
			var cmd Command
			_ = DecodeCommand(enc, msg, &cmd)
			if n := testing.AllocsPerRun(100, func() {
				if err := DecodeCommand(enc, msg, &cmd); err != nil {
					t.Fatal(err)
				}
			}); n != 0 {
				t.Errorf("msg %d %v: %v allocs", i, enc, n)
			}
		}
	}
	bad := []byte(`{"op":"publish","id":5,"channel":"a b","data":1}`)
	var cmd Command
	if n := testing.AllocsPerRun(100, func() { _ = DecodeCommand(JSON, bad, &cmd) }); n != 0 {
		t.Errorf("bad_request: %v allocs", n)
	}
}
