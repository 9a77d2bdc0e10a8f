package redisbroker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// gathered collects b through a pedantic registry (which checks that
// Collect sends only what Describe declared) and returns each metric's
// value: counters and gauges their value, the histogram its count.
func gathered(t testing.TB, b *Broker) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(b); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for _, mf := range mfs {
		for _, x := range mf.GetMetric() {
			switch {
			case x.Counter != nil:
				m[mf.GetName()] = x.Counter.GetValue()
			case x.Gauge != nil:
				m[mf.GetName()] = x.Gauge.GetValue()
			case x.Histogram != nil:
				m[mf.GetName()] = float64(x.Histogram.GetSampleCount())
				m[mf.GetName()+"_sum"] = x.Histogram.GetSampleSum()
			}
		}
	}
	return m
}

// TestMetrics: the broker's counters and publish round trips reach a
// Prometheus registry; a publish refused at once while Redis is down is no
// round trip.
func TestMetrics(t *testing.T) {
	r := startRedis(t)
	h := newRecorder(t)
	b := newTestBroker(t, r.URL, h, Config{Timeout: 300 * time.Millisecond, PingInterval: 100 * time.Millisecond})
	m := gathered(t, b)
	for _, name := range []string{"fanout_broker_reconnects_total", "fanout_broker_published_total", "fanout_broker_delivered_total",
		"fanout_broker_duplicates_total", "fanout_broker_caught_up_total", "fanout_broker_lost_total", "fanout_broker_regressions_total",
		"fanout_broker_channels", "fanout_broker_publish_seconds"} {
		if v, ok := m[name]; !ok || v != 0 {
			t.Errorf("%s = %v (present %v) before any traffic, want 0", name, v, ok)
		}
	}
	if err := b.Subscribe("m"); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for i := range n {
		if _, err := b.Publish(context.Background(), "m", testPub(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if d := gathered(t, b)["fanout_broker_delivered_total"]; d != n {
			return fmt.Errorf("delivered %v of %d", d, n)
		}
		return nil
	})
	m = gathered(t, b)
	for name, want := range map[string]float64{"fanout_broker_published_total": n, "fanout_broker_publish_seconds": n, "fanout_broker_channels": 1} {
		if m[name] != want {
			t.Errorf("%s = %v, want %v", name, m[name], want)
		}
	}
	if m["fanout_broker_publish_seconds_sum"] <= 0 {
		t.Errorf("publish round trips sum to %v s", m["fanout_broker_publish_seconds_sum"])
	}
	r.stop(true)
	waitFor(t, 10*time.Second, func() error {
		if b.Healthy() == nil {
			return fmt.Errorf("still healthy with Redis stopped")
		}
		return nil
	})
	if _, err := b.Publish(context.Background(), "m", testPub(n)); err == nil {
		t.Fatal("publish succeeded with Redis stopped")
	}
	if got := gathered(t, b)["fanout_broker_publish_seconds"]; got != n {
		t.Errorf("%v round trips after a publish refused while down, want %d", got, n)
	}
}
