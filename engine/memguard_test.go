package engine

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

// memBallast holds the memory TestMaxMemory fills (a package variable, so
// that the compiler keeps it).
var memBallast []byte

// TestMaxMemory fills the process's memory past MaxMemory: new upgrades
// get 503 with Retry-After, history is trimmed, and the open connection
// keeps publishing and receiving; once the memory is given back, upgrades
// are accepted again and history has its budget back.
func TestMaxMemory(t *testing.T) {
	runtime.GC()
	var samples [2]metrics.Sample
	samples[0].Name, samples[1].Name = "/memory/classes/total:bytes", "/memory/classes/heap/released:bytes"
	const headroom, ballast = 192 << 20, 512 << 20
	limit := memUsed(&samples) + headroom
	s := startServer(t, Config{MaxMemory: limit, HistorySize: 1000, CommandRate: -1})
	addr := s.Addr().String()
	base := takeBaseline(t, s)

	tc := dialClient(t, s, false)
	tc.mustOK(map[string]any{"op": "subscribe", "channel": "live"})
	data := strings.Repeat("x", 1000)
	for range 200 {
		tc.mustOK(map[string]any{"op": "publish", "channel": "history", "data": data})
	}
	histBefore := s.hub.Stats().HistoryBytes
	if histBefore == 0 {
		t.Fatal("no history to trim")
	}
	if st := upgradeStatus(t, s); st != http.StatusSwitchingProtocols {
		t.Fatalf("under the limit: %d", st)
	}

	memBallast = make([]byte, ballast)
	// The guard samples at most every 100 ms, at an upgrade.
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if st := upgradeStatus(t, s); st != http.StatusServiceUnavailable {
			return fmt.Errorf("over the limit: %d", st)
		}
		return nil
	})
	resp, body := refusal(t, s, upgradeRequest("GET", "/ws"))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "memory") {
		t.Fatalf("%s %q", resp.Status, body)
	}
	checkRetryAfter(t, resp)
	// History goes first: halved at once, and again each second.
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		upgradeStatus(t, s) // a sample
		if h := s.hub.Stats().HistoryBytes; h > histBefore/2 {
			return fmt.Errorf("history %d bytes, %d before the pressure", h, histBefore)
		}
		return nil
	})
	// The open connection is served as before.
	r, pushes := tc.call(map[string]any{"op": "publish", "channel": "live", "data": "still here"})
	if r["ok"] != true {
		t.Fatalf("publish under pressure: %v", r)
	}
	if len(pushes) == 0 {
		pushes = append(pushes, tc.nextPub())
	}
	if pushes[0]["data"] != "still here" {
		t.Fatalf("delivery under pressure: %v", pushes[0])
	}
	if status, _ := admGet(t, addr, "/healthz"); status != http.StatusOK {
		t.Fatalf("/healthz under pressure: %d", status)
	}
	if got := admMetric(t, addr, refusedMetric("memory")); got < 2 {
		t.Fatalf("refused memory %v", got)
	}
	if got := admMetric(t, addr, "fanout_memory_bytes"); got <= float64(limit) {
		t.Fatalf("fanout_memory_bytes %v, limit %d", got, limit)
	}

	memBallast = nil
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		runtime.GC()
		debug.FreeOSMemory()
		if st := upgradeStatus(t, s); st != http.StatusSwitchingProtocols {
			return fmt.Errorf("after the memory was given back: %d", st)
		}
		return nil
	})
	// Below 80% of the limit history gets its budget back.
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		upgradeStatus(t, s) // a sample
		for range 50 {
			tc.mustOK(map[string]any{"op": "publish", "channel": "after", "data": data})
		}
		r, _ := tc.call(map[string]any{"op": "history", "channel": "after", "limit": 50})
		if pubs, _ := r["publications"].([]any); len(pubs) != 50 {
			return fmt.Errorf("history keeps %d of 50", len(pubs))
		}
		return nil
	})
	tc.c.Close()
	base.checkNoGrowth(t)
}

// TestMaxMemoryDefault: a share of the cgroup's or the machine's memory;
// negative is no limit.
func TestMaxMemoryDefault(t *testing.T) {
	limit, source := defaultMaxMemory()
	if limit <= 0 || source == "" {
		t.Fatalf("default %d from %q", limit, source)
	}
	tests := []struct {
		cfg  int64
		want int64
	}{{0, limit}, {-1, 0}, {1 << 30, 1 << 30}}
	for _, tt := range tests {
		s, err := New(Config{MaxMemory: tt.cfg, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		if s.adm.mem.limit != tt.want {
			t.Errorf("MaxMemory %d: limit %d, want %d", tt.cfg, s.adm.mem.limit, tt.want)
		}
		s.Close()
	}
}
