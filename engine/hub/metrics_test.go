package hub

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/fanout-dev/fanout/codec"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// countObserver counts observations.
type countObserver struct {
	mu sync.Mutex
	n  int
}

func (o *countObserver) Observe(float64) { o.mu.Lock(); o.n++; o.mu.Unlock() }
func (o *countObserver) count() int      { o.mu.Lock(); defer o.mu.Unlock(); return o.n }

// TestFrameObserver: with an observer set, every publication frame (one
// per encoding in use) is observed once, after every subscriber released
// it; publications made without one are not.
func TestFrameObserver(t *testing.T) {
	h := newHub(t, Config{})
	for i := range 10 {
		enc := codec.JSON
		if i%2 == 1 {
			enc = codec.Msgpack
		}
		subscribe(t, h, &discardSub{enc: enc, id: i}, SubscribeRequest{Channel: "obs"})
	}
	publish := func(n int) {
		for range n {
			if _, err := h.Publish(context.Background(), "obs", []byte(`1`), codec.JSON, codec.ClientInfo{}); err != nil {
				t.Fatal(err)
			}
		}
		h.sync()
	}
	publish(3)
	var o countObserver
	h.SetFrameObserver(&o)
	publish(4)
	if got := o.count(); got != 8 {
		t.Errorf("%d observations for 4 publications in 2 encodings, want 8", got)
	}
	h.SetFrameObserver(nil)
	publish(2)
	if got := o.count(); got != 8 {
		t.Errorf("%d observations after the observer was removed, want 8", got)
	}
}

// BenchmarkBroadcastTracked is BenchmarkBroadcast (sync, JSON) with and
// without fanout_delivery_seconds (a real Prometheus histogram): the cost
// of the latency instrumentation per publication.
func BenchmarkBroadcastTracked(b *testing.B) {
	data := []byte(`"` + strings.Repeat("x", 126) + `"`) // 128 bytes, as BenchmarkBroadcast
	for _, n := range []int{1, 1000} {
		for _, tracked := range []bool{false, true} {
			b.Run(fmt.Sprintf("subscribers=%d/tracked=%v", n, tracked), func(b *testing.B) {
				h := newHub(b, Config{})
				for i := range n {
					subscribe(b, h, &discardSub{enc: codec.JSON, id: i}, SubscribeRequest{Channel: "bench"})
				}
				hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Buckets: prometheus.DefBuckets})
				if tracked {
					h.SetFrameObserver(hist)
				}
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					if _, err := h.Publish(ctx, "bench", data, codec.JSON, codec.ClientInfo{}); err != nil {
						b.Fatal(err)
					}
					h.sync()
				}
				b.StopTimer()
				var m dto.Metric
				_ = hist.Write(&m)
				if tracked && m.GetHistogram().GetSampleCount() == 0 {
					b.Fatal("nothing observed")
				}
			})
		}
	}
}
