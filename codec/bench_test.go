package codec

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// Benchmarks of the hot paths against reflection-based baselines
// (encoding/json and msgpack/v5 on equivalent structs / interface{}).
//
// go test -run '^$' -bench . -benchmem -count 8 ./codec/, go1.26.8 linux/amd64,
// 2 vCPU "Oxide Virtual Turin-like Processor" shared with other builds (load
// average ~8, so figures are noisy: min / median of 8 runs, ns/op):
//
//	                                   hand-written           reflection baseline
//	DecodeCommand    enc=json      179 / 303   0 allocs   2107 / 2273  11 allocs 520 B  (encoding/json, struct + RawMessage)
//	DecodeCommand    enc=msgpack   145 / 163   0 allocs   1212 / 1305  10 allocs 424 B  (msgpack/v5, struct + RawMessage)
//	AppendPub        enc=json       50 /  58   0 allocs    957 / 1188   0 allocs        (json.Encoder, struct + RawMessage)
//	AppendPub        enc=msgpack    20 /  34   0 allocs    370 /  538   1 alloc   24 B  (msgpack.Encoder, struct + RawMessage)
//	Transcode        enc=json      188 / 217   0 allocs   2629 / 3305  26 allocs 808 B  (json.Unmarshal any + msgpack encode)
//	Transcode        enc=msgpack   198 / 201   0 allocs   3992 / 5047  36 allocs 1152 B (msgpack.Unmarshal any + json encode)
//
// Inputs: a publish command with a 128-byte JSON data object (msgpack: the
// same value transcoded), a pub push of that data, and the data itself;
// enc is the message's (for Transcode, the source) encoding.

// benchData is a 128-byte JSON publication payload.
var benchData = func() string {
	s := `{"user":"alice","text":"hello, world","n":12345,"f":0.5,"ok":true,"tags":["a","b"],"pad":"`
	s += strings.Repeat("x", 128-len(s)-2) + `"}`
	if len(s) != 128 {
		panic(len(s))
	}
	return s
}()

// benchInputs returns the publish command and the data in enc.
func benchInputs(b *testing.B, enc Encoding) (msg, data []byte) {
	b.Helper()
	data = []byte(benchData)
	if enc == Msgpack {
		var err error
		if data, err = Transcode(nil, JSON, Msgpack, data); err != nil {
			b.Fatal(err)
		}
	}
	cmd := Command{Op: OpPublish, ID: 12345, HasID: true, Channel: []byte("chat:room-42"), Data: data}
	return AppendCommand(nil, enc, &cmd), data
}

func BenchmarkDecodeCommand(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			msg, _ := benchInputs(b, enc)
			var cmd Command
			if err := DecodeCommand(enc, msg, &cmd); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := DecodeCommand(enc, msg, &cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type refRecover struct {
	Epoch  string `json:"epoch" msgpack:"epoch"`
	Offset uint64 `json:"offset" msgpack:"offset"`
}

type refCommandJSON struct {
	ID       *uint64         `json:"id"`
	Op       string          `json:"op"`
	Channel  string          `json:"channel"`
	Data     json.RawMessage `json:"data"`
	Recover  *refRecover     `json:"recover"`
	Presence bool            `json:"presence"`
	Limit    int             `json:"limit"`
}

type refCommandMsgpack struct {
	ID       *uint64            `msgpack:"id"`
	Op       string             `msgpack:"op"`
	Channel  string             `msgpack:"channel"`
	Data     msgpack.RawMessage `msgpack:"data"`
	Recover  *refRecover        `msgpack:"recover"`
	Presence bool               `msgpack:"presence"`
	Limit    int                `msgpack:"limit"`
}

// BenchmarkDecodeCommandReflect is the baseline: the same message decoded
// into a struct by encoding/json or msgpack/v5 (data kept raw).
func BenchmarkDecodeCommandReflect(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			msg, _ := benchInputs(b, enc)
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var err error
				if enc == JSON {
					var c refCommandJSON
					err = json.Unmarshal(msg, &c)
				} else {
					var c refCommandMsgpack
					err = msgpack.Unmarshal(msg, &c)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchPub(b *testing.B) *Publication {
	b.Helper()
	m, err := Transcode(nil, JSON, Msgpack, []byte(benchData))
	if err != nil {
		b.Fatal(err)
	}
	return &Publication{Channel: "chat:room-42", Epoch: "e8f3a1", Offset: 1234567,
		Info: ClientInfo{Client: "5f1c9a2e-client", User: "alice"}, JSON: []byte(benchData), Msgpack: m}
}

func BenchmarkAppendPub(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			p := benchPub(b)
			buf := AppendPub(nil, enc, p)
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				buf = AppendPub(buf[:0], enc, p)
			}
		})
	}
}

type refInfo struct {
	Client string `json:"client" msgpack:"client"`
	User   string `json:"user" msgpack:"user"`
}

type refPubJSON struct {
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Epoch   string          `json:"epoch"`
	Offset  uint64          `json:"offset"`
	Data    json.RawMessage `json:"data"`
	Info    refInfo         `json:"info"`
}

type refPubMsgpack struct {
	Push    string             `msgpack:"push"`
	Channel string             `msgpack:"channel"`
	Epoch   string             `msgpack:"epoch"`
	Offset  uint64             `msgpack:"offset"`
	Data    msgpack.RawMessage `msgpack:"data"`
	Info    refInfo            `msgpack:"info"`
}

// BenchmarkAppendPubReflect is the baseline: the same push marshaled from a
// struct by encoding/json or msgpack/v5 (data raw).
func BenchmarkAppendPubReflect(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			p := benchPub(b)
			info := refInfo{p.Info.Client, p.Info.User}
			pj := &refPubJSON{"pub", p.Channel, p.Epoch, p.Offset, p.JSON, info}
			pm := &refPubMsgpack{"pub", p.Channel, p.Epoch, p.Offset, p.Msgpack, info}
			var buf bytes.Buffer
			je := json.NewEncoder(&buf)
			me := msgpack.NewEncoder(&buf)
			b.ReportAllocs()
			b.SetBytes(int64(len(AppendPub(nil, enc, p))))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				buf.Reset()
				var err error
				if enc == JSON {
					err = je.Encode(pj)
				} else {
					err = me.Encode(pm)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTranscode converts the 128-byte payload from enc to the other
// encoding.
func BenchmarkTranscode(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			_, data := benchInputs(b, enc)
			buf, err := Transcode(nil, enc, other(enc), data)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				buf, _ = Transcode(buf[:0], enc, other(enc), data)
			}
		})
	}
}

// BenchmarkTranscodeReflect is the baseline: decode into interface{} with
// one library and marshal with the other.
func BenchmarkTranscodeReflect(b *testing.B) {
	for _, enc := range encodings {
		b.Run("enc="+enc.String(), func(b *testing.B) {
			_, data := benchInputs(b, enc)
			var buf bytes.Buffer
			je := json.NewEncoder(&buf)
			me := msgpack.NewEncoder(&buf)
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				buf.Reset()
				var v any
				var err error
				if enc == JSON {
					if err = json.Unmarshal(data, &v); err == nil {
						err = me.Encode(v)
					}
				} else {
					if err = msgpack.Unmarshal(data, &v); err == nil {
						err = je.Encode(v)
					}
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
