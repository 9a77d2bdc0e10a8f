package codec

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets. They must never panic, and everything a decoder accepts
// must be consistent with the reference decoders: whatever DecodeCommand
// accepts as publish data transcodes to the other encoding and back to the
// same value.

// validCommands are real client messages, stated in JSON.
var validCommands = []string{
	`{"id":1,"op":"subscribe","channel":"chat:1"}`,
	`{"id":2,"op":"subscribe","channel":"chat:1","recover":{"epoch":"abc","offset":10},"presence":true}`,
	`{"id":3,"op":"unsubscribe","channel":"chat:1"}`,
	`{"id":4,"op":"publish","channel":"chat:1","data":{"text":"hello \"x\" \u00e9 \ud83d\ude00","n":[1,-2,3.5e10,null,true]}}`,
	`{"op":"publish","channel":"c","data":"string"}`,
	`{"op":"publish","channel":"c","data":[[],{},0,-0,1.0,1e400]}`,
	`{"id":5,"op":"presence","channel":"c"}`,
	`{"id":6,"op":"history","channel":"c","limit":10}`,
	`{"id":7,"op":"ping"}`,
	`{"op":"ping","unknown":{"a":[1,2,{"b":null}]}}`,
	`{"id":8,"op":"connect","token":"eyJhbGciOiJIUzI1NiJ9.e30.sig"}`,
	`{"id":9,"op":"connect","name":"Ada é"}`,
	`{"id":10,"op":"refresh","token":"a.b.c"}`,
	`{"id":11,"op":"subscribe","channel":"c","name":"Ada"}`,
}

func seedCommands(f *testing.F, enc Encoding) {
	var msgs []string
	msgs = append(msgs, validCommands...)
	for _, tc := range bothErrCases {
		msgs = append(msgs, tc.msg)
	}
	if enc == JSON {
		for _, tc := range jsonErrCases {
			f.Add([]byte(tc.msg))
		}
	} else {
		for _, tc := range msgpackErrCases(f) {
			f.Add([]byte(tc.msg))
		}
	}
	for _, s := range msgs {
		if enc == Msgpack {
			f.Add(jsonToMsgpack(f, s))
		} else {
			f.Add([]byte(s))
		}
	}
}

// maxNesting over-estimates the nesting depth of a JSON text.
func maxNesting(b []byte) int {
	return bytes.Count(b, []byte("[")) + bytes.Count(b, []byte("{"))
}

func checkDecodeCommand(t *testing.T, enc Encoding, msg []byte) {
	var cmd Command
	err := DecodeCommand(enc, msg, &cmd)
	if enc == JSON {
		isObject := json.Valid(msg) && utf8.Valid(msg) && bytes.HasPrefix(bytes.TrimLeft(msg, " \t\r\n"), []byte("{"))
		if err == ErrNotObject && isObject && maxNesting(msg) < MaxDepth {
			t.Fatalf("valid JSON object %q rejected as not an object", msg)
		}
		if err != ErrNotObject && !isObject {
			t.Fatalf("invalid JSON %q accepted: %v", msg, err)
		}
	}
	if err == ErrNotObject {
		return
	}
	var ce *CommandError
	if err != nil {
		if !errors.As(err, &ce) || (ce.Code != CodeBadRequest && ce.Code != CodeUnknownOp) || ce.Message == "" {
			t.Fatalf("DecodeCommand(%q) = %v", msg, err)
		}
		return
	}
	if cmd.Op == OpUnknown || cmd.Op > OpRefresh {
		t.Fatalf("accepted op %d", cmd.Op)
	}
	if cmd.Op == OpRefresh && len(cmd.Token) == 0 && !bytes.Contains(msg, []byte("token")) {
		t.Fatalf("refresh without token accepted: %q", msg)
	}
	noChannel := cmd.Op == OpPing || cmd.Op == OpConnect || cmd.Op == OpRefresh
	if !noChannel && !ValidChannel(cmd.Channel) {
		t.Fatalf("accepted channel %q", cmd.Channel)
	}
	if cmd.Op == OpPublish {
		if cmd.Data == nil {
			t.Fatal("publish without data")
		}
		roundTrip(t, enc, cmd.Data)
	}
	// Re-encoding gives the same command.
	again := AppendCommand(nil, enc, &cmd)
	var cmd2 Command
	if err := DecodeCommand(enc, again, &cmd2); err != nil {
		t.Fatalf("re-encoded %q: %v", again, err)
	}
	if cmd.Op != cmd2.Op || cmd.ID != cmd2.ID || cmd.HasID != cmd2.HasID || string(cmd.Channel) != string(cmd2.Channel) ||
		!bytes.Equal(cmd.Data, cmd2.Data) && !(enc == JSON && cmd.Data != nil) ||
		cmd.HasRecover != cmd2.HasRecover || string(cmd.RecoverEpoch) != string(cmd2.RecoverEpoch) ||
		cmd.RecoverOffset != cmd2.RecoverOffset || cmd.Presence != cmd2.Presence || cmd.Limit != cmd2.Limit ||
		string(cmd.Token) != string(cmd2.Token) || string(cmd.Name) != string(cmd2.Name) {
		t.Fatalf("re-encoded command differs:\n%+v\n%+v", cmd, cmd2)
	}
}

func FuzzDecodeCommandJSON(f *testing.F) {
	seedCommands(f, JSON)
	f.Fuzz(func(t *testing.T, msg []byte) { checkDecodeCommand(t, JSON, msg) })
}

func FuzzDecodeCommandMsgpack(f *testing.F) {
	seedCommands(f, Msgpack)
	f.Fuzz(func(t *testing.T, msg []byte) { checkDecodeCommand(t, Msgpack, msg) })
}

func FuzzTranscode(f *testing.F) {
	for _, s := range append(validCommands, `1e400`, `"\ud800"`, `[1,2`, `-0`, `1.5e-7`, `"\u2028\u0000"`, strings.Repeat("[", 20)) {
		f.Add([]byte(s), false)
		if m, err := Transcode(nil, JSON, Msgpack, []byte(s)); err == nil {
			f.Add(m, true)
		}
	}
	for _, s := range []string{"\xc4\x03abc", "\xd4\x01\x00", "\x81\x01\x02", "\xa1\xff", "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "\xca\x3f\xc0\x00\x00", "\xc1", "\x92\x01"} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, src []byte, fromMsgpack bool) {
		from := JSON
		if fromMsgpack {
			from = Msgpack
		}
		_, err := Transcode(nil, from, other(from), src)
		_, errSame := Transcode(nil, from, from, src)
		if (err == nil) != (errSame == nil) {
			t.Fatalf("%v %q: conversion error %v, same-encoding error %v", from, src, err, errSame)
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooDeep) && !errors.Is(err, ErrUnsupported) && err != nil {
			t.Fatalf("unexpected error %v", err)
		}
		if from == JSON {
			valid := json.Valid(src) && utf8.Valid(src)
			if err == nil && !valid {
				t.Fatalf("invalid JSON %q accepted", src)
			}
			if errors.Is(err, ErrMalformed) && valid {
				t.Fatalf("valid JSON %q rejected as malformed", src)
			}
		}
		if err == nil {
			roundTrip(t, from, src)
		}
	})
}

func FuzzDecodeServerMessage(f *testing.F) {
	for _, tc := range serverCases(f) {
		for _, enc := range encodings {
			f.Add(tc.encode(nil, enc), enc == Msgpack)
		}
	}
	f.Add([]byte(`{"push":"pub","data":[1,}`), false)
	f.Add([]byte("\x82\xa4push\xa3pub\xa4data\x92\x01"), true)
	for _, s := range []string{`{"publications":[{"offset":"x"}]}`, `[]`, `{"id":-1}`, `{"clients":[{"client":1}]}`, `{"push":"x","info":null}`} {
		f.Add([]byte(s), false)
		f.Add(jsonToMsgpack(f, s), true)
	}
	f.Fuzz(func(t *testing.T, msg []byte, isMsgpack bool) {
		enc := JSON
		if isMsgpack {
			enc = Msgpack
		}
		var m ServerMessage
		err := DecodeServerMessage(enc, msg, &m)
		if err != nil {
			if err != ErrNotObject && !errors.Is(err, ErrFieldType) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if enc == JSON && !json.Valid(msg) {
			t.Fatalf("invalid JSON %q accepted", msg)
		}
		for _, p := range append(m.Publications, m.Pub) {
			data := p.JSON
			if enc == Msgpack {
				data = p.Msgpack
			}
			if data != nil {
				if _, err := Transcode(nil, enc, enc, data); errors.Is(err, ErrMalformed) {
					t.Fatalf("malformed publication data %q accepted", data)
				}
			}
		}
	})
}
