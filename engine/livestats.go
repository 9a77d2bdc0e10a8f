package engine

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// liveStatsMinInterval is how long one GET /api/stats answer is reused: a
// page of browsers polling it costs at most one sample per interval.
const liveStatsMinInterval = time.Second

// liveStats implements GET /api/stats, the small public summary the web app
// shows: open WebSocket connections, and publications accepted and
// delivered per second. Rates are measured between two samples of the
// server's counters, taken when a request finds the last answer older than
// liveStatsMinInterval (no goroutine of its own); window_ms says over how
// long. The answer carries nothing but those numbers (no channel names, no
// addresses, no users) and is a few dozen bytes.
type liveStats struct {
	s   *Server
	now func() time.Time

	mu       sync.Mutex
	at       time.Time // when body was computed; zero before the first request
	body     []byte
	prevPub  uint64 // publications accepted at at
	prevDeli uint64 // publication frames handed to subscribers at at
}

// liveStatsAnswer is the JSON of GET /api/stats (docs/PROTOCOL.md).
type liveStatsAnswer struct {
	Connections         int64   `json:"connections"`
	MessagesPerSecond   float64 `json:"messages_per_second"`
	DeliveriesPerSecond float64 `json:"deliveries_per_second"`
	WindowMS            int64   `json:"window_ms"`
}

// newLiveStatsHandler returns the GET /api/stats handler of s.
func (s *Server) newLiveStatsHandler() http.Handler {
	return &liveStats{s: s, now: time.Now}
}

func (l *liveStats) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	body := l.answer()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// answer returns the cached JSON, or a fresh one when it is older than
// liveStatsMinInterval. The first answer has no previous sample and reports
// rates of 0 over a window of 0.
func (l *liveStats) answer() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.body != nil && now.Sub(l.at) < liveStatsMinInterval {
		return l.body
	}
	hs := l.s.hub.Stats()
	a := liveStatsAnswer{Connections: max(l.s.stats.open.Load(), 0)}
	if !l.at.IsZero() {
		window := now.Sub(l.at)
		a.WindowMS = window.Milliseconds()
		secs := window.Seconds()
		a.MessagesPerSecond = perSecond(hs.Published, l.prevPub, secs)
		a.DeliveriesPerSecond = perSecond(hs.Deliveries, l.prevDeli, secs)
	}
	l.at, l.prevPub, l.prevDeli = now, hs.Published, hs.Deliveries
	body, err := json.Marshal(a)
	if err != nil { // cannot happen: numbers only, all finite
		body = []byte(`{}`)
	}
	l.body = append(body, '\n')
	return l.body
}

// perSecond is the rate of a counter that went from prev to cur in secs
// seconds, rounded to two decimals; 0 for a window too short to measure.
func perSecond(cur, prev uint64, secs float64) float64 {
	if secs <= 0 || cur < prev {
		return 0
	}
	return math.Round(float64(cur-prev)/secs*100) / 100
}
