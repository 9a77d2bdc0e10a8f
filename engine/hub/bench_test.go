package hub

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
)

// discardSub is a connection with an infinitely fast socket: it releases
// every frame at once.
type discardSub struct {
	enc codec.Encoding
	id  int
}

func (s *discardSub) Info() codec.ClientInfo   { return codec.ClientInfo{Client: fmt.Sprint(s.id)} }
func (s *discardSub) Encoding() codec.Encoding { return s.enc }
func (s *discardSub) Send(f *wsframe.Frame)    { f.Release() }
func (s *discardSub) SendBatch(fs []*wsframe.Frame) {
	for _, f := range fs {
		f.Release()
	}
}

// BenchmarkBroadcast publishes one 128-byte JSON publication per op to a
// channel of N subscribers and waits until every subscriber was handed it
// (mode=sync), or publishes b.N of them back to back and waits once at the
// end (mode=pipelined, where shard workers coalesce). SetBytes counts the
// bytes of data delivered (128 x subscribers).
func BenchmarkBroadcast(b *testing.B) {
	data := append([]byte(`"`), bytes.Repeat([]byte("x"), 126)...)
	data = append(data, '"')
	for _, n := range []int{1000, 10000, 100000} {
		for _, encs := range []string{"json", "both"} {
			for _, mode := range []string{"sync", "pipelined"} {
				b.Run(fmt.Sprintf("subscribers=%d/encodings=%s/mode=%s", n, encs, mode), func(b *testing.B) {
					benchBroadcast(b, n, encs == "both", mode == "sync", data)
				})
			}
		}
	}
}

func benchBroadcast(b *testing.B, n int, both, sync bool, data []byte) {
	h := newHub(b, Config{})
	for i := range n {
		enc := codec.JSON
		if both && i%2 == 1 {
			enc = codec.Msgpack
		}
		subscribe(b, h, &discardSub{enc: enc, id: i}, SubscribeRequest{Channel: "bench"})
	}
	ctx := context.Background()
	info := codec.ClientInfo{Client: "publisher"}
	publish := func() {
		if _, err := h.Publish(ctx, "bench", data, codec.JSON, info); err != nil {
			b.Fatal(err)
		}
	}
	publish()
	h.sync()
	before := h.Stats()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	b.SetBytes(int64(len(data) * n))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N { // not b.Loop: the final sync must be timed
		publish()
		if sync {
			h.sync()
		}
	}
	h.sync()
	b.StopTimer()
	runtime.ReadMemStats(&ms1)
	after := h.Stats()
	deliveries := float64(after.Deliveries - before.Deliveries)
	pubs := float64(after.Broadcasts - before.Broadcasts)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(after.Encodes-before.Encodes)/pubs, "encodes/op")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/deliveries, "allocs/delivery")
	b.ReportMetric(float64(after.Sends-before.Sends)/deliveries, "calls/delivery")
}

// BenchmarkSubscribe measures one Subscribe (no reply, no recover) to a
// channel that already has subscribers: it must not grow with them.
func BenchmarkSubscribe(b *testing.B) {
	for _, n := range []int{0, 10000} {
		b.Run(fmt.Sprintf("existing=%d", n), func(b *testing.B) {
			h := newHub(b, Config{})
			for i := range n {
				subscribe(b, h, &discardSub{enc: codec.JSON, id: i}, SubscribeRequest{Channel: "s"})
			}
			subs := make([]*discardSub, b.N)
			for i := range subs {
				subs[i] = &discardSub{enc: codec.JSON, id: n + i}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := h.Subscribe(subs[i], SubscribeRequest{Channel: "s"}); err != nil {
					b.Fatal(err)
				}
			}
			h.sync()
		})
	}
}
