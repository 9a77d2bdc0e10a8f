package engine

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// getLiveStats fetches GET /api/stats from the public port.
func getLiveStats(t *testing.T, s *Server) (liveStatsAnswer, *http.Response, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr().String() + "/api/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var a liveStatsAnswer
	if resp.StatusCode == http.StatusOK {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("GET /api/stats: %q: %v", body, err)
		}
	}
	return a, resp, body
}

// TestLiveStatsHTTP: the public endpoint answers small, uncacheable JSON
// whose connection count follows the open WebSockets (within its 1 s
// cache), and only to GET.
func TestLiveStatsHTTP(t *testing.T) {
	s := startServer(t, Config{})
	a, resp, body := getLiveStats(t, s)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	if len(body) > 200 {
		t.Errorf("answer of %d bytes: %s", len(body), body)
	}
	if a.Connections != 0 || a.MessagesPerSecond != 0 {
		t.Errorf("idle server: %+v", a)
	}

	c1 := dialClient(t, s, false)
	dialClient(t, s, true)
	checkFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if a, _, _ := getLiveStats(t, s); a.Connections != 2 {
			return fmt.Errorf("connections %d, want 2", a.Connections)
		}
		return nil
	})
	_ = c1.c.Close()
	checkFor(t, 10*time.Second, 100*time.Millisecond, func() error {
		if a, _, _ := getLiveStats(t, s); a.Connections != 1 {
			return fmt.Errorf("connections %d after a close, want 1", a.Connections)
		}
		return nil
	})

	req, _ := http.NewRequest(http.MethodPost, "http://"+s.Addr().String()+"/api/stats", nil)
	if r, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		r.Body.Close()
		// Only GET is routed; the rest falls to the web app's 404.
		if r.StatusCode != http.StatusNotFound {
			t.Errorf("POST /api/stats: %d, want 404", r.StatusCode)
		}
	}
}

// TestLiveStatsRates: with a clock of its own, the answer is reused within
// a second and the rates are the counters' growth over the window between
// two samples.
func TestLiveStatsRates(t *testing.T) {
	s := startServer(t, Config{})
	clock := time.Unix(1_000_000, 0)
	l := &liveStats{s: s, now: func() time.Time { return clock }}
	decode := func() liveStatsAnswer {
		t.Helper()
		var a liveStatsAnswer
		if err := json.Unmarshal(l.answer(), &a); err != nil {
			t.Fatal(err)
		}
		return a
	}
	if a := decode(); a != (liveStatsAnswer{}) {
		t.Fatalf("first answer %+v, want zeros (no previous sample)", a)
	}

	pub := dialClient(t, s, false)
	sub := dialClient(t, s, false)
	sub.mustOK(map[string]any{"op": "subscribe", "channel": "stats"})
	for i := 0; i < 10; i++ {
		pub.mustOK(map[string]any{"op": "publish", "channel": "stats", "data": i})
	}
	for i := 0; i < 10; i++ {
		sub.nextPub()
	}

	clock = clock.Add(500 * time.Millisecond)
	if a := decode(); a != (liveStatsAnswer{}) {
		t.Fatalf("answer within a second %+v, want the cached one", a)
	}
	clock = clock.Add(1500 * time.Millisecond) // 2 s after the first sample
	a := decode()
	want := liveStatsAnswer{Connections: 2, MessagesPerSecond: 5, DeliveriesPerSecond: 5, WindowMS: 2000}
	if a != want {
		t.Fatalf("after 10 publications to 1 subscriber in 2 s: %+v, want %+v", a, want)
	}
	clock = clock.Add(4 * time.Second)
	if a := decode(); a.MessagesPerSecond != 0 || a.WindowMS != 4000 || a.Connections != 2 {
		t.Fatalf("a quiet window: %+v", a)
	}
}
