package codec

import (
	"bytes"
	"testing"
)

// The additions for authentication: the connect and refresh ops, the
// refresh push, the connect reply and the optional name in info objects.

func TestAuthEncoders(t *testing.T) {
	named := ClientInfo{Client: "c1", User: "alice", Name: "Alice \"A\""}
	anon := ClientInfo{Client: "c2", Name: "Ada"}
	p := testPub(t, "chat:1", 3, `1`)
	p.Info = named
	for _, tc := range []serverCase{
		{"connected with name", func(d []byte, e Encoding) []byte { return AppendConnected(d, e, named) },
			`{"push":"connected","client":"c1","user":"alice","name":"Alice \"A\""}`},
		{"connect ok", func(d []byte, e Encoding) []byte {
			return AppendConnectOK(d, e, 7, ClientInfo{Client: "c1", User: "alice"})
		},
			`{"id":7,"ok":true,"client":"c1","user":"alice"}`},
		{"connect ok with name", func(d []byte, e Encoding) []byte { return AppendConnectOK(d, e, 8, anon) },
			`{"id":8,"ok":true,"client":"c2","user":"","name":"Ada"}`},
		{"refresh push", func(d []byte, e Encoding) []byte { return AppendRefresh(d, e) }, `{"push":"refresh"}`},
		{"pub with name", func(d []byte, e Encoding) []byte { return AppendPub(d, e, p) },
			`{"push":"pub","channel":"chat:1","epoch":"ep1","offset":3,"data":1,"info":{"client":"c1","user":"alice","name":"Alice \"A\""}}`},
		{"join with name", func(d []byte, e Encoding) []byte { return AppendJoin(d, e, "room", anon) },
			`{"push":"join","channel":"room","info":{"client":"c2","user":"","name":"Ada"}}`},
		{"presence with names", func(d []byte, e Encoding) []byte {
			return AppendPresenceOK(d, e, 9, []ClientInfo{named, {Client: "c3"}})
		}, `{"id":9,"ok":true,"count":2,"clients":[{"client":"c1","user":"alice","name":"Alice \"A\""},{"client":"c3","user":""}]}`},
		{"history with name", func(d []byte, e Encoding) []byte {
			return AppendHistoryOK(d, e, 10, StreamPosition{"ep1", 3}, []*Publication{p})
		}, `{"id":10,"ok":true,"epoch":"ep1","offset":3,"publications":[{"channel":"chat:1","epoch":"ep1","offset":3,"data":1,"info":{"client":"c1","user":"alice","name":"Alice \"A\""}}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if js := tc.encode(nil, JSON); string(js) != tc.json {
				t.Fatalf("JSON\n got %s\nwant %s", js, tc.json)
			}
			mp := tc.encode(nil, Msgpack)
			back, err := Transcode(nil, Msgpack, JSON, mp)
			if err != nil {
				t.Fatalf("msgpack %q: %v", mp, err)
			}
			if string(back) != tc.json {
				t.Fatalf("msgpack as JSON\n got %s\nwant %s", back, tc.json)
			}
		})
	}
}

func TestAuthDecodeServerMessage(t *testing.T) {
	named := ClientInfo{Client: "c1", User: "alice", Name: "Alice"}
	for _, tc := range []struct {
		name   string
		encode func(dst []byte, enc Encoding) []byte
		want   ServerMessage
	}{
		{"connected", func(d []byte, e Encoding) []byte { return AppendConnected(d, e, named) },
			ServerMessage{Push: PushConnected, Info: named}},
		{"connect ok", func(d []byte, e Encoding) []byte { return AppendConnectOK(d, e, 3, named) },
			ServerMessage{ID: 3, HasID: true, OK: true, Info: named}},
		{"refresh", func(d []byte, e Encoding) []byte { return AppendRefresh(d, e) }, ServerMessage{Push: PushRefresh}},
		{"join", func(d []byte, e Encoding) []byte { return AppendJoin(d, e, "r", named) },
			ServerMessage{Push: PushJoin, Channel: "r", Info: named}},
		{"presence", func(d []byte, e Encoding) []byte { return AppendPresenceOK(d, e, 4, []ClientInfo{named}) },
			ServerMessage{ID: 4, HasID: true, OK: true, Count: 1, Clients: []ClientInfo{named}}},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				var m ServerMessage
				if err := DecodeServerMessage(enc, tc.encode(nil, enc), &m); err != nil {
					t.Fatal(err)
				}
				wantServer(t, enc, &m, &tc.want)
			})
		}
	}
}

// TestScanPubLeavesNamedTopLevel: a pub push with a top-level name field
// (which DecodeServerMessage type-checks) is left to DecodeServerMessage.
func TestScanPubLeavesNamedTopLevel(t *testing.T) {
	msg := []byte(`{"push":"pub","channel":"c","epoch":"e","offset":1,"data":1,"name":5}`)
	if _, _, ok := ScanPub(JSON, msg); ok {
		t.Fatal("ScanPub accepted a pub push with a top-level name")
	}
	var m ServerMessage
	if err := DecodeServerMessage(JSON, msg, &m); err == nil {
		t.Fatal("DecodeServerMessage accepted name:5")
	}
	// A name inside info is fine for both.
	p := testPub(t, "c", 2, `"x"`)
	p.Info.Name = "Ada"
	for _, enc := range encodings {
		msg := AppendPub(nil, enc, p)
		off, data, ok := ScanPub(enc, msg)
		if !ok || off != 2 || len(data) == 0 {
			t.Fatalf("%v: ScanPub(%q) = %d, %q, %v", enc, msg, off, data, ok)
		}
	}
}

func TestAuthEncodersAllocs(t *testing.T) {
	named := ClientInfo{Client: "c1", User: "alice", Name: "Alice"}
	p := testPub(t, "chat:1", 3, `{"a":1}`)
	p.Info = named
	buf := make([]byte, 0, 1024)
	for _, enc := range encodings {
		if n := testing.AllocsPerRun(100, func() {
			b := AppendPub(buf[:0], enc, p)
			b = AppendConnected(b, enc, named)
			b = AppendConnectOK(b, enc, 1, named)
			b = AppendRefresh(b, enc)
			_ = AppendJoin(b, enc, "c", named)
		}); n != 0 {
			t.Errorf("%v: %v allocs", enc, n)
		}
	}
}

func TestDecodeConnectAllocs(t *testing.T) {
	msgs := []string{
		`{"id":1,"op":"connect","token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"}`,
		`{"id":2,"op":"refresh","token":"a.b.c"}`,
		`{"id":3,"op":"subscribe","channel":"c","name":"Ada"}`,
	}
	for _, s := range msgs {
		for _, enc := range encodings {
			msg := []byte(s)
			if enc == Msgpack {
				msg = jsonToMsgpack(t, s)
			}
			var cmd Command
			if err := DecodeCommand(enc, msg, &cmd); err != nil {
				t.Fatalf("%v %s: %v", enc, s, err)
			}
			if cmd.Op != OpSubscribe && !bytes.Contains([]byte(s), cmd.Token) {
				t.Fatalf("%v %s: token %q", enc, s, cmd.Token)
			}
			if n := testing.AllocsPerRun(100, func() { _ = DecodeCommand(enc, msg, &cmd) }); n != 0 {
				t.Errorf("%v %s: %v allocs", enc, s, n)
			}
		}
	}
}
