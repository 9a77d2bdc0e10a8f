package engine

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
)

// scrape reads the server's /metrics into series ("name{labels}" as
// exposed) and their values.
func scrape(t testing.TB, s *Server) map[string]float64 {
	t.Helper()
	status, body := admGet(t, s.Addr().String(), "/metrics")
	if status != http.StatusOK {
		t.Fatalf("/metrics: %d", status)
	}
	m := make(map[string]float64)
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}

// TestDeliveryHistogram: fanout_delivery_seconds gets one observation per
// publication frame (per publication and encoding in use), not one per
// subscriber, once the frame was written to its last subscriber.
func TestDeliveryHistogram(t *testing.T) {
	s := startServer(t, Config{})
	subs := []*testClient{dialClient(t, s, false), dialClient(t, s, false), dialClient(t, s, false), dialClient(t, s, true)}
	for _, c := range subs {
		c.mustOK(map[string]any{"op": "subscribe", "channel": "lat"})
	}
	if got := scrape(t, s)["fanout_delivery_seconds_count"]; got != 0 {
		t.Fatalf("fanout_delivery_seconds_count %v before any publication", got)
	}
	pub := dialClient(t, s, false)
	const pubs = 5
	for i := range pubs {
		pub.mustOK(map[string]any{"op": "publish", "channel": "lat", "data": i})
	}
	for _, c := range subs {
		for range pubs {
			c.nextPub()
		}
	}
	// Every subscriber read every frame, so each frame's last write is
	// done; its release follows at once.
	want := float64(pubs * 2) // JSON and msgpack frames
	var m map[string]float64
	checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		m = scrape(t, s)
		if got := m["fanout_delivery_seconds_count"]; got != want {
			return fmt.Errorf("fanout_delivery_seconds_count %v, want %v", got, want)
		}
		return nil
	})
	if inf := m[`fanout_delivery_seconds_bucket{le="+Inf"}`]; inf != want {
		t.Errorf("+Inf bucket %v, want %v", inf, want)
	}
	if sum := m["fanout_delivery_seconds_sum"]; sum <= 0 {
		t.Errorf("fanout_delivery_seconds_sum %v, want > 0", sum)
	}
}

// TestCloseCodeSeries: /metrics lists the close codes the server sends and
// no other, and a close is counted under its code.
func TestCloseCodeSeries(t *testing.T) {
	s := startServer(t, Config{})
	got := map[string]bool{}
	for name := range scrape(t, s) {
		if code, ok := strings.CutPrefix(name, `fanout_closes_sent_total{code="`); ok {
			got[strings.TrimSuffix(code, `"}`)] = true
		}
	}
	want := []string{"1000", "1001", "1002", "1003", "1007", "1008", "1009", "1012", "app", "other"}
	if len(got) != len(want) {
		t.Errorf("close code series %v, want %v", got, want)
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("no series for close code %s (have %v)", w, got)
		}
	}
	// A client's close is echoed: counted under its code, or app/other.
	for _, tc := range []struct {
		code  uint16
		label string
	}{{1000, "1000"}, {4001, "app"}, {1013, "other"}} {
		before := scrape(t, s)[`fanout_closes_sent_total{code="`+tc.label+`"}`]
		c := openWS(t, s)
		c.write(maskedClose(tc.code))
		c.expectClose(tc.code)
		checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if n := scrape(t, s)[`fanout_closes_sent_total{code="`+tc.label+`"}`]; n != before+1 {
				return fmt.Errorf("close %d: code=%q went %v -> %v, want +1", tc.code, tc.label, before, n)
			}
			return nil
		})
	}
}

// maskedClose is a client close frame carrying code.
func maskedClose(code uint16) []byte {
	return frame(true, ws.OpClose, []byte{byte(code >> 8), byte(code)})
}

func TestCloseSlot(t *testing.T) {
	for _, tc := range []struct {
		code uint16
		want string
	}{
		{1000, "1000"}, {1001, "1001"}, {1002, "1002"}, {1003, "1003"}, {1007, "1007"},
		{1008, "1008"}, {1009, "1009"}, {1012, "1012"},
		{1010, "other"}, {1011, "other"}, {1014, "other"}, {2999, "other"}, {0, "other"}, {5000, "other"},
		{3000, "app"}, {4001, "app"}, {4999, "app"},
	} {
		if got := closeLabels[closeSlot(tc.code)]; got != tc.want {
			t.Errorf("close code %d counted as %q, want %q", tc.code, got, tc.want)
		}
	}
}

// TestUpgradeRefusalsCounted: every refused upgrade request is counted
// once, under its cause, in fanout_upgrades_refused_total (admission's
// causes are tested with admission).
func TestUpgradeRefusalsCounted(t *testing.T) {
	s := startServer(t, Config{})
	causes := []string{"wrong_path", "bad_request", "head_too_large", "bad_subprotocol"}
	series := func(cause string) string { return `fanout_upgrades_refused_total{cause="` + cause + `"}` }
	for _, cause := range causes {
		if n, ok := scrape(t, s)[series(cause)]; !ok || n != 0 {
			t.Fatalf("%s = %v (present %v), want 0", series(cause), n, ok)
		}
	}
	for _, tt := range []struct {
		cause   string
		request string
		status  int
	}{
		{"wrong_path", upgradeRequest("GET", "/"), 404},
		{"wrong_path", upgradeRequest("GET", "/wsx"), 404},
		{"bad_request", upgradeRequest("POST", "/ws"), 405},
		{"bad_request", upgradeRequest("GET", "/ws", "Sec-WebSocket-Version: 12"), 426},
		{"head_too_large", upgradeRequest("GET", "/ws", "X-Pad: "+strings.Repeat("a", 17<<10)), 431},
		{"bad_subprotocol", upgradeRequest("GET", "/ws", "Sec-WebSocket-Protocol: chat"), 400},
	} {
		t.Run("cause="+tt.cause+"/status="+strconv.Itoa(tt.status), func(t *testing.T) {
			before := scrape(t, s)
			c := dialRaw(t, s)
			c.write([]byte(tt.request))
			if resp := c.response(); resp.StatusCode != tt.status {
				t.Fatalf("%s, want %d", resp.Status, tt.status)
			}
			after := scrape(t, s)
			for _, cause := range causes {
				want := before[series(cause)]
				if cause == tt.cause {
					want++
				}
				if got := after[series(cause)]; got != want {
					t.Errorf("%s = %v, want %v", series(cause), got, want)
				}
			}
		})
	}
}

// healthBroker is the memory broker with a switchable health and a metric
// of its own, standing in for a distributed broker.
type healthBroker struct {
	*hub.MemoryBroker
	down      atomic.Bool
	collected atomic.Int64
	desc      *prometheus.Desc
}

func (b *healthBroker) Healthy() error {
	if b.down.Load() {
		return fmt.Errorf("%w: test outage", hub.ErrUnavailable)
	}
	return nil
}

func (b *healthBroker) Describe(ch chan<- *prometheus.Desc) { ch <- b.desc }
func (b *healthBroker) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(b.desc, prometheus.CounterValue, float64(b.collected.Add(1)))
}

// TestBrokerMetrics: fanout_broker_up follows the broker's health (what
// /readyz answers), and a broker that is a prometheus.Collector has its
// metrics on /metrics.
func TestBrokerMetrics(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		s := startServer(t, Config{})
		if up, ok := scrape(t, s)["fanout_broker_up"]; !ok || up != 1 {
			t.Errorf("fanout_broker_up %v (present %v), want 1 with the memory broker", up, ok)
		}
	})
	t.Run("health", func(t *testing.T) {
		b := &healthBroker{
			MemoryBroker: hub.NewMemoryBroker(hub.MemoryBrokerConfig{}),
			desc:         prometheus.NewDesc("fanout_broker_test_scrapes_total", "Scrapes seen by the test broker.", nil, nil),
		}
		s := startServer(t, Config{Broker: b})
		for _, down := range []bool{false, true, false} {
			b.down.Store(down)
			want, wantReady := 1.0, http.StatusOK
			if down {
				want, wantReady = 0, http.StatusServiceUnavailable
			}
			m := scrape(t, s)
			if m["fanout_ready"] != want {
				t.Errorf("down=%v: fanout_ready %v, want %v", down, m["fanout_ready"], want)
			}
			if m["fanout_broker_up"] != want {
				t.Errorf("down=%v: fanout_broker_up %v, want %v", down, m["fanout_broker_up"], want)
			}
			if status, _ := admGet(t, s.Addr().String(), "/readyz"); status != wantReady {
				t.Errorf("down=%v: /readyz %d, want %d", down, status, wantReady)
			}
			if m["fanout_broker_test_scrapes_total"] != float64(b.collected.Load()) || b.collected.Load() == 0 {
				t.Errorf("the broker's own metric: %v on /metrics, %d collections", m["fanout_broker_test_scrapes_total"], b.collected.Load())
			}
		}
	})
}
