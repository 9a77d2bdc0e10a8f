package codec

import (
	"bytes"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// wantServer compares decoded messages; publication data (JSON or Msgpack
// per enc) is compared as a value with the JSON of want.
func wantServer(t *testing.T, enc Encoding, got, want *ServerMessage) {
	t.Helper()
	g, w := *got, *want
	cmpData := func(gp, wp *Publication) {
		t.Helper()
		gd, other := gp.JSON, gp.Msgpack
		if enc == Msgpack {
			gd, other = gp.Msgpack, gp.JSON
		}
		if other != nil {
			t.Fatalf("%v: data in the wrong field", enc)
		}
		if (gd == nil) != (wp.JSON == nil) {
			t.Fatalf("%v: data %q, want %q", enc, gd, wp.JSON)
		}
		if gd != nil {
			sameValue(t, enc, gd, JSON, wp.JSON)
		}
		gp.JSON, gp.Msgpack, wp.JSON = nil, nil, nil
	}
	cmpData(&g.Pub, &w.Pub)
	if len(g.Publications) != len(w.Publications) {
		t.Fatalf("%v: %d publications, want %d", enc, len(g.Publications), len(w.Publications))
	}
	g.Publications = append([]Publication(nil), g.Publications...)
	w.Publications = append([]Publication(nil), w.Publications...)
	for i := range g.Publications {
		cmpData(&g.Publications[i], &w.Publications[i])
	}
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%v:\n got %+v\nwant %+v", enc, g, w)
	}
}

func TestDecodeServerMessage(t *testing.T) {
	p1 := testPub(t, "chat:1", 7, `{"text":"hi","n":[1,2.5,-3]}`)
	p2 := testPub(t, "chat:1", 8, `"s"`)
	pubWant := func(p *Publication) Publication {
		q := *p
		q.Msgpack = nil
		return q
	}
	info := ClientInfo{Client: "c1", User: "bøb\n"}
	for _, tc := range []struct {
		name   string
		encode func(dst []byte, enc Encoding) []byte
		want   ServerMessage
	}{
		{"connected", func(d []byte, e Encoding) []byte { return AppendConnected(d, e, info) },
			ServerMessage{Push: PushConnected, Info: info}},
		{"pub", func(d []byte, e Encoding) []byte { return AppendPub(d, e, p1) },
			ServerMessage{Push: PushPub, Channel: "chat:1", Epoch: "ep1", Offset: 7, Info: p1.Info, Pub: pubWant(p1)}},
		{"join", func(d []byte, e Encoding) []byte { return AppendJoin(d, e, "room", info) },
			ServerMessage{Push: PushJoin, Channel: "room", Info: info}},
		{"leave", func(d []byte, e Encoding) []byte { return AppendLeave(d, e, "room", info) },
			ServerMessage{Push: PushLeave, Channel: "room", Info: info}},
		{"ok", func(d []byte, e Encoding) []byte { return AppendOK(d, e, 1<<63) },
			ServerMessage{ID: 1 << 63, HasID: true, OK: true}},
		{"publish ok", func(d []byte, e Encoding) []byte { return AppendPublishOK(d, e, 2, 99) },
			ServerMessage{ID: 2, HasID: true, OK: true, Offset: 99}},
		{"subscribe ok", func(d []byte, e Encoding) []byte {
			return AppendSubscribeOK(d, e, 3, StreamPosition{"ep1", 8}, true, []*Publication{p1, p2})
		}, ServerMessage{ID: 3, HasID: true, OK: true, Epoch: "ep1", Offset: 8, Recovered: true,
			Publications: []Publication{pubWant(p1), pubWant(p2)}}},
		{"subscribe ok empty", func(d []byte, e Encoding) []byte {
			return AppendSubscribeOK(d, e, 3, StreamPosition{"ep1", 0}, false, nil)
		}, ServerMessage{ID: 3, HasID: true, OK: true, Epoch: "ep1", Publications: []Publication{}}},
		{"history ok", func(d []byte, e Encoding) []byte {
			return AppendHistoryOK(d, e, 4, StreamPosition{"ep1", 8}, []*Publication{p2})
		}, ServerMessage{ID: 4, HasID: true, OK: true, Epoch: "ep1", Offset: 8, Publications: []Publication{pubWant(p2)}}},
		{"history reply truncated", func(d []byte, e Encoding) []byte {
			return AppendHistoryReply(d, e, 4, StreamPosition{"ep1", 8}, []*Publication{p2}, true)
		}, ServerMessage{ID: 4, HasID: true, OK: true, Epoch: "ep1", Offset: 8, Publications: []Publication{pubWant(p2)}, Truncated: true}},
		{"presence ok", func(d []byte, e Encoding) []byte {
			return AppendPresenceOK(d, e, 5, []ClientInfo{info, {Client: "c2"}})
		}, ServerMessage{ID: 5, HasID: true, OK: true, Count: 2, Clients: []ClientInfo{info, {Client: "c2"}}}},
		{"error", func(d []byte, e Encoding) []byte { return AppendError(d, e, 6, true, CodeRateLimited, "slow down") },
			ServerMessage{ID: 6, HasID: true, ErrorCode: CodeRateLimited, ErrorMessage: "slow down"}},
		{"error without id", func(d []byte, e Encoding) []byte { return AppendError(d, e, 0, false, CodeTooLarge, "big") },
			ServerMessage{ErrorCode: CodeTooLarge, ErrorMessage: "big"}},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				msg := tc.encode(nil, enc)
				m := ServerMessage{Channel: "stale", Publications: []Publication{{}}}
				if err := DecodeServerMessage(enc, msg, &m); err != nil {
					t.Fatalf("DecodeServerMessage(%q): %v", msg, err)
				}
				// Copies: scribbling over msg changes nothing.
				before := m
				before.Publications = slices.Clone(m.Publications)
				for i := range msg {
					msg[i] = 'X'
				}
				wantServer(t, enc, &m, &tc.want)
				if !reflect.DeepEqual(before, m) {
					t.Fatal("decoded message aliases msg")
				}
			})
		}
	}
}

func TestDecodeServerMessageForms(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want ServerMessage
	}{
		{"unknown push", `{"push":"shutdown","after":5}`, ServerMessage{Push: PushUnknown}},
		{"unknown fields and nulls", ` {"id":1,"ok":true,"x":{"y":[1,"\u00e9"]},"epoch":null,"publications":null} `,
			ServerMessage{ID: 1, HasID: true, OK: true}},
		{"escaped strings", `{"push":"join","channel":"r\/1","info":{"client":"\u0063","user":"\ud83d\ude00\n"}}`,
			ServerMessage{Push: PushJoin, Channel: "r/1", Info: ClientInfo{Client: "c", User: "😀\n"}}},
		{"escaped keys", `{"\u0070ush":"connected","\u0063lient":"x"}`, ServerMessage{Push: PushConnected, Info: ClientInfo{Client: "x"}}},
		{"any field order", `{"info":{"user":"u","client":"c"},"data":[1],"offset":3,"epoch":"e","channel":"ch","push":"pub"}`,
			ServerMessage{Push: PushPub, Channel: "ch", Epoch: "e", Offset: 3, Info: ClientInfo{Client: "c", User: "u"},
				Pub: Publication{Channel: "ch", Epoch: "e", Offset: 3, Info: ClientInfo{Client: "c", User: "u"}, JSON: []byte("[1]")}}},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				msg := []byte(tc.msg)
				if enc == Msgpack {
					var err error
					if msg, err = Transcode(nil, JSON, Msgpack, msg); err != nil {
						t.Fatal(err)
					}
				}
				var m ServerMessage
				if err := DecodeServerMessage(enc, msg, &m); err != nil {
					t.Fatal(err)
				}
				wantServer(t, enc, &m, &tc.want)
			})
		}
	}
}

func TestDecodeServerMessageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want error
	}{
		{"array", `[1]`, ErrNotObject},
		{"null", `null`, ErrNotObject},
		{"string", `"x"`, ErrNotObject},
		{"truncated", `{"id":1`, ErrNotObject},
		{"trailing", `{"id":1}1`, ErrNotObject},
		{"bad data", `{"push":"pub","data":[1,}`, ErrNotObject},
		{"id string", `{"id":"1"}`, ErrFieldType},
		{"id negative", `{"id":-1}`, ErrFieldType},
		{"id float", `{"id":1.5}`, ErrFieldType},
		{"ok number", `{"ok":1}`, ErrFieldType},
		{"push number", `{"push":1}`, ErrFieldType},
		{"error string", `{"error":"boom"}`, ErrFieldType},
		{"error code number", `{"error":{"code":5}}`, ErrFieldType},
		{"publications object", `{"publications":{}}`, ErrFieldType},
		{"publication not object", `{"publications":[1]}`, ErrFieldType},
		{"publication offset string", `{"publications":[{"offset":"1"}]}`, ErrFieldType},
		{"clients item", `{"clients":[{"client":1}]}`, ErrFieldType},
		{"info array", `{"info":[]}`, ErrFieldType},
	} {
		for _, enc := range encodings {
			t.Run(tc.name+"/enc="+enc.String(), func(t *testing.T) {
				msg := []byte(tc.msg)
				if enc == Msgpack {
					if tc.want == ErrNotObject {
						msg = []byte(strings.Repeat("\x92", 1)) // not a map
						if tc.name == "truncated" || tc.name == "bad data" {
							msg = []byte("\x82\xa2id\x01")
						}
						if tc.name == "trailing" {
							msg = []byte("\x81\xa2id\x01\x01")
						}
					} else {
						var err error
						if msg, err = Transcode(nil, JSON, Msgpack, msg); err != nil {
							t.Fatal(err)
						}
					}
				}
				var m ServerMessage
				if err := DecodeServerMessage(enc, msg, &m); !errors.Is(err, tc.want) {
					t.Fatalf("DecodeServerMessage(%q) = %v, want %v", msg, err, tc.want)
				}
			})
		}
	}
	if err := DecodeServerMessage(0, []byte("{}"), new(ServerMessage)); err != ErrEncoding {
		t.Fatal(err)
	}
	var m ServerMessage
	if err := DecodeServerMessage(Msgpack, []byte("\x81\x01\x02"), &m); err != nil || !reflect.DeepEqual(m, ServerMessage{}) {
		t.Fatalf("non-string key not ignored: %v", err)
	}
	if err := DecodeServerMessage(Msgpack, []byte("\x81\xa4data\xc4\x02ab"), &m); err != nil || !bytes.Equal(m.Pub.Msgpack, nil) {
		t.Fatalf("bin data: %v", err)
	}
}
