package codec

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unsafe"
)

// checkScanPub checks ScanPub's contract on msg against DecodeServerMessage
// and returns ScanPub's result: when ok, the message decodes as a pub push
// with the same offset and data, and data aliases msg.
func checkScanPub(t *testing.T, enc Encoding, msg []byte) (uint64, []byte, bool) {
	t.Helper()
	offset, data, ok := ScanPub(enc, msg)
	if !ok {
		if offset != 0 || data != nil {
			t.Fatalf("%v %q: not ok but offset %d, data %q", enc, msg, offset, data)
		}
		return offset, data, ok
	}
	var m ServerMessage
	if err := DecodeServerMessage(enc, msg, &m); err != nil {
		t.Fatalf("%v %q: ScanPub ok, DecodeServerMessage: %v", enc, msg, err)
	}
	want := m.Pub.JSON
	if enc == Msgpack {
		want = m.Pub.Msgpack
	}
	if m.Push != PushPub || m.Pub.Offset != offset || !bytes.Equal(want, data) || (want == nil) != (data == nil) {
		t.Fatalf("%v %q: ScanPub (%d, %q), DecodeServerMessage push %d offset %d data %q",
			enc, msg, offset, data, m.Push, m.Pub.Offset, want)
	}
	if len(data) > 0 {
		start := uintptr(unsafe.Pointer(unsafe.SliceData(msg)))
		p := uintptr(unsafe.Pointer(unsafe.SliceData(data)))
		if p < start || p+uintptr(len(data)) > start+uintptr(len(msg)) {
			t.Fatalf("%v %q: data does not alias the message", enc, msg)
		}
	}
	return offset, data, ok
}

// TestScanPubAppendPub: every pub push the server encodes is recognised,
// with its offset and data.
func TestScanPubAppendPub(t *testing.T) {
	pubs := []*Publication{
		testPub(t, "chat:1", 7, `{"text":"hi","n":[1,2.5,-3],"ok":true,"z":null}`),
		testPub(t, "chat:1", 0, `"plain \"string\" \u2028"`),
		testPub(t, "a\"b\\c", 1<<64-1, `[[],{},{"a":{"b":[null]}}]`),
		testPub(t, "ünïcode", 1<<32, `-12.5e3`),
		testPub(t, "c", 127, `{"t":1732560000000000000,"p":"`+strings.Repeat("x", 300)+`"}`),
		testPub(t, "c", 128, `true`),
		testPub(t, "c", 65536, `{"key\n\"quoted\"":"\ud83d\ude00"}`),
	}
	pubs[2].Info = ClientInfo{Client: "new\nline", User: "\"quoted\" \\ user"}
	pubs[3].Epoch = strings.Repeat("e", 40)
	for _, enc := range encodings {
		for _, p := range pubs {
			msg := AppendPub(nil, enc, p)
			offset, data, ok := checkScanPub(t, enc, msg)
			want := p.JSON
			if enc == Msgpack {
				want = p.Msgpack
			}
			if !ok || offset != p.Offset || !bytes.Equal(data, want) {
				t.Errorf("%v %q: ScanPub = (%d, %q, %v), want (%d, %q, true)", enc, msg, offset, data, ok, p.Offset, want)
			}
		}
		// Empty data is encoded as null: that is the data value.
		msg := AppendPub(nil, enc, &Publication{Channel: "c", Offset: 3})
		wantNull := []byte("null")
		if enc == Msgpack {
			wantNull = []byte{mpNil}
		}
		if offset, data, ok := checkScanPub(t, enc, msg); !ok || offset != 3 || !bytes.Equal(data, wantNull) {
			t.Errorf("%v %q: ScanPub = (%d, %q, %v)", enc, msg, offset, data, ok)
		}
	}
}

// TestScanPubOtherMessages: replies and other pushes are not pub pushes.
func TestScanPubOtherMessages(t *testing.T) {
	for _, tc := range serverCases(t) {
		if strings.HasPrefix(tc.name, "pub") {
			continue
		}
		for _, enc := range encodings {
			if _, _, ok := checkScanPub(t, enc, tc.encode(nil, enc)); ok {
				t.Errorf("%s %v: ScanPub ok", tc.name, enc)
			}
		}
	}
}

type scanPubCase struct {
	msg      string // JSON
	ok       bool
	offset   uint64
	data     string // JSON text of the data; "" for none
	jsonOnly bool   // msgpack through a Go map differs (repeated keys, escapes, big numbers)
}

var scanPubCases = []scanPubCase{
	{`{"push":"pub","offset":5,"data":{"t":1}}`, true, 5, `{"t":1}`, false},
	{`{"data":[1,2],"offset":9,"push":"pub"}`, true, 9, `[1,2]`, false},
	{`{"info":{"user":"u","client":"c","x":[1]},"data":"s","epoch":"e","channel":"c","offset":1,"push":"pub"}`, true, 1, `"s"`, false},
	{`{"push":"pub","offset":2}`, true, 2, ``, false},
	{`{"push":"pub"}`, true, 0, ``, false},
	{`{"push":"pub","offset":null,"data":null,"channel":null,"epoch":null,"info":null}`, true, 0, `null`, false},
	{`{"push":"pub","offset":7,"offset":null}`, true, 0, ``, true},
	{`{"push":"pub","offset":7,"offset":8,"data":1,"data":2}`, true, 8, `2`, true},
	{`{"push":"join","push":"pub","offset":1}`, true, 1, ``, true},
	{`{"push":"pub","push":null,"offset":1}`, true, 1, ``, true},
	{`{"push":"pub","unknown":{"a":[1,{"b":null}]},"offset":1}`, true, 1, ``, false},
	{`{"push":"pub","offset":18446744073709551615}`, true, 1<<64 - 1, ``, true},
	{"\t {\n\"push\" : \"pub\" ,\r\"offset\" :\t3 , \"data\" : { \"a\" : 1 } } \n", true, 3, `{ "a" : 1 }`, false},
	{`{"push":"pub","info":{"client":null,"user":"u"}}`, true, 0, ``, false},

	// Not pub pushes, or not well-formed ones.
	{`{}`, false, 0, ``, false},
	{`{"push":"join","offset":1}`, false, 0, ``, false},
	{`{"push":"pub","push":"join"}`, false, 0, ``, true},
	{`{"offset":1,"data":2}`, false, 0, ``, false},
	{`{"push":"Pub"}`, false, 0, ``, false},
	{`[]`, false, 0, ``, false},
	{`null`, false, 0, ``, false},
	{`{"push":"pub",}`, false, 0, ``, false},
	{`{"push":"pub"`, false, 0, ``, false},
	{`{"push":"pub"}x`, false, 0, ``, false},
	{`{"push":"pub"}{}`, false, 0, ``, false},
	{`{"push":"pub","data":[1,}`, false, 0, ``, false},
	{`{"push":"pub","data":}`, false, 0, ``, false},
	{`{"push":"pub","data":nul}`, false, 0, ``, false},
	{`{"push":"pub","data":`, false, 0, ``, false},
	{`{"push":"pub","offset":-1}`, false, 0, ``, false},
	{`{"push":"pub","offset":1.5}`, false, 0, ``, false},
	{`{"push":"pub","offset":1e3}`, false, 0, ``, false},
	{`{"push":"pub","offset":"1"}`, false, 0, ``, false},
	{`{"push":"pub","offset":18446744073709551616}`, false, 0, ``, false},
	{`{"push":"pub","offset":01}`, false, 0, ``, false},
	{`{"push":1}`, false, 0, ``, false},
	{`{"push":"pub","channel":1}`, false, 0, ``, false},
	{`{"push":"pub","epoch":{}}`, false, 0, ``, false},
	{`{"push":"pub","info":[]}`, false, 0, ``, false},
	{`{"push":"pub","info":{"client":1}}`, false, 0, ``, false},
	{`{"push":"pub","info":{"user":"x"`, false, 0, ``, false},
	{`{"push":"pub","unknown":[1,2}`, false, 0, ``, false},
	{`{"push":"pub","unknown":` + strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1) + `}`, false, 0, ``, false},
	{`{"push":"pub","data":"\ud800"}`, true, 0, `"\ud800"`, false},
	{`{"push":"pub","data":"bad \x escape"}`, false, 0, ``, false},
	// Well-formed pub pushes left to DecodeServerMessage.
	{`{"p\u0075sh":"pub"}`, false, 0, ``, true},
	{`{"push":"p\u0075b"}`, false, 0, ``, true},
	{`{"push":"pub","id":1}`, false, 0, ``, false},
	{`{"push":"pub","ok":true}`, false, 0, ``, false},
	{`{"push":"pub","error":null}`, false, 0, ``, false},
	{`{"push":"pub","client":"c"}`, false, 0, ``, false},
	{`{"push":"pub","publications":[]}`, false, 0, ``, false},
}

func TestScanPubJSON(t *testing.T) {
	for _, tc := range scanPubCases {
		offset, data, ok := checkScanPub(t, JSON, []byte(tc.msg))
		if ok != tc.ok || offset != tc.offset || string(data) != tc.data {
			t.Errorf("%s: ScanPub = (%d, %q, %v), want (%d, %q, %v)", tc.msg, offset, data, ok, tc.offset, tc.data, tc.ok)
		}
	}
}

func TestScanPubMsgpack(t *testing.T) {
	for _, tc := range scanPubCases {
		if tc.jsonOnly || !json.Valid([]byte(tc.msg)) {
			continue
		}
		msg := jsonToMsgpack(t, tc.msg)
		offset, data, ok := checkScanPub(t, Msgpack, msg)
		var want []byte
		if tc.data != "" {
			want = jsonToMsgpack(t, tc.data)
		}
		if ok != tc.ok || offset != tc.offset || !bytes.Equal(data, want) {
			t.Errorf("%s: ScanPub = (%d, %x, %v), want (%d, %x, %v)", tc.msg, offset, data, ok, tc.offset, want, tc.ok)
		}
	}
	for _, tc := range []struct {
		name   string
		msg    string
		ok     bool
		offset uint64
		data   string
	}{
		{"fixmap", "\x83\xa4push\xa3pub\xa6offset\x05\xa4data\x01", true, 5, "\x01"},
		{"map16", "\xde\x00\x02\xa4push\xa3pub\xa6offset\xcd\x01\x00", true, 256, ""},
		{"map32", "\xdf\x00\x00\x00\x01\xa4push\xa3pub", true, 0, ""},
		{"str8 keys", "\x82\xd9\x04push\xd9\x03pub\xda\x00\x06offset\x07", true, 7, ""},
		{"uint32 offset", "\x82\xa4push\xa3pub\xa6offset\xce\x01\x00\x00\x00", true, 1 << 24, ""},
		{"uint64 offset", "\x82\xa4push\xa3pub\xa6offset\xcf\xff\xff\xff\xff\xff\xff\xff\xff", true, 1<<64 - 1, ""},
		{"int64 offset", "\x82\xa4push\xa3pub\xa6offset\xd3\x00\x00\x00\x00\x00\x00\x00\x09", true, 9, ""},
		{"nil offset", "\x83\xa4push\xa3pub\xa6offset\x05\xa6offset\xc0", true, 0, ""},
		{"duplicate data", "\x83\xa4push\xa3pub\xa4data\x01\xa4data\x92\x01\x02", true, 0, "\x92\x01\x02"},
		{"non-str key skipped", "\x83\x01\x02\xa4push\xa3pub\xc3\x81\xa1a\x01", true, 0, ""},
		{"bin data", "\x82\xa4push\xa3pub\xa4data\xc4\x02ab", true, 0, "\xc4\x02ab"},
		{"negative offset", "\x82\xa4push\xa3pub\xa6offset\xff", false, 0, ""},
		{"int8 negative offset", "\x82\xa4push\xa3pub\xa6offset\xd0\x80", false, 0, ""},
		{"float offset", "\x82\xa4push\xa3pub\xa6offset\xca\x00\x00\x00\x00", false, 0, ""},
		{"truncated offset", "\x82\xa4push\xa3pub\xa6offset\xcd\x01", false, 0, ""},
		{"truncated map", "\x83\xa4push\xa3pub", false, 0, ""},
		{"truncated map16", "\xde\x00", false, 0, ""},
		{"trailing byte", "\x81\xa4push\xa3pub\x00", false, 0, ""},
		{"truncated key", "\x81\xa4pus", false, 0, ""},
		{"push bin", "\x81\xa4push\xc4\x03pub", false, 0, ""},
		{"bad non-str key", "\x81\xc1\x00", false, 0, ""},
		{"truncated data", "\x82\xa4push\xa3pub\xa4data\x92\x01", false, 0, ""},
		{"info not a map", "\x82\xa4push\xa3pub\xa4info\x90", false, 0, ""},
		{"info user not a str", "\x82\xa4push\xa3pub\xa4info\x81\xa4user\x01", false, 0, ""},
		{"channel truncated", "\x82\xa4push\xa3pub\xa7channel\xa5ab", false, 0, ""},
		{"not a map", "\x91\x01", false, 0, ""},
		{"empty", "", false, 0, ""},
	} {
		offset, data, ok := checkScanPub(t, Msgpack, []byte(tc.msg))
		if ok != tc.ok || offset != tc.offset || string(data) != tc.data {
			t.Errorf("%s %x: ScanPub = (%d, %x, %v), want (%d, %x, %v)", tc.name, tc.msg, offset, data, ok, tc.offset, tc.data, tc.ok)
		}
	}
}

func TestScanPubAllocs(t *testing.T) {
	p := testPub(t, "chat:1", 7, `{"t":1732560000000000000,"p":"xxxxxxxxxxxxxxxx"}`)
	for _, enc := range encodings {
		msg := AppendPub(nil, enc, p)
		if n := testing.AllocsPerRun(100, func() { ScanPub(enc, msg) }); n != 0 {
			t.Errorf("%v: %v allocations", enc, n)
		}
	}
}

func FuzzScanPub(f *testing.F) {
	for _, tc := range scanPubCases {
		f.Add([]byte(tc.msg), false)
	}
	for _, tc := range serverCases(f) {
		for _, enc := range encodings {
			f.Add(tc.encode(nil, enc), enc == Msgpack)
		}
	}
	f.Add([]byte("\x83\x01\x02\xa4push\xa3pub\xc3\x81\xa1a\x01"), true)
	f.Add([]byte("\x83\xa4push\xa3pub\xa6offset\x05\xa6offset\xc0"), true)
	f.Fuzz(func(t *testing.T, msg []byte, isMsgpack bool) {
		enc := JSON
		if isMsgpack {
			enc = Msgpack
		}
		checkScanPub(t, enc, msg)
		// Any pub push that decodes, encoded again by the server, is
		// recognised with the same offset and data.
		var m ServerMessage
		if DecodeServerMessage(enc, msg, &m) != nil || m.Push != PushPub {
			return
		}
		again := AppendPub(nil, enc, &m.Pub)
		offset, data, ok := checkScanPub(t, enc, again)
		want := m.Pub.JSON
		if enc == Msgpack {
			want = m.Pub.Msgpack
		}
		if !ok || offset != m.Pub.Offset || (len(want) > 0 && !bytes.Equal(data, want)) {
			t.Fatalf("%v %q re-encoded as %q: ScanPub = (%d, %q, %v)", enc, msg, again, offset, data, ok)
		}
	})
}

// BenchmarkScanPub compares ScanPub with DecodeServerMessage on a pub push
// like those flood receives.
func BenchmarkScanPub(b *testing.B) {
	p := benchPub(b)
	for _, enc := range encodings {
		msg := AppendPub(nil, enc, p)
		b.Run("enc="+enc.String()+"/ScanPub", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, _, ok := ScanPub(enc, msg); !ok {
					b.Fatal("not ok")
				}
			}
		})
		b.Run("enc="+enc.String()+"/DecodeServerMessage", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			var m ServerMessage
			for b.Loop() {
				if err := DecodeServerMessage(enc, msg, &m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
