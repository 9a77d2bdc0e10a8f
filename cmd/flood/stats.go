package main

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 100 s with three
// significant digits; longer ones are clamped to the maximum.
const (
	histLowest  = 1
	histHighest = 100_000_000
	histSig     = 3
	latShards   = 16
)

func newHist() *hdr.Histogram { return hdr.New(histLowest, histHighest, histSig) }

func recordClamped(h *hdr.Histogram, us int64) {
	if us < histLowest {
		us = histLowest
	} else if us > histHighest {
		us = histHighest
	}
	_ = h.RecordValue(us)
}

// HistData is a histogram in transit: the hdrhistogram snapshot with only
// its non-zero counts (Idx[i] holds Cnt[i]), which keeps worker results
// small. toHist rebuilds it with hdrhistogram.Import, so merging is exact.
type HistData struct {
	Lowest  int64   `json:"lo"`
	Highest int64   `json:"hi"`
	Sig     int64   `json:"sig"`
	Idx     []int32 `json:"idx,omitempty"`
	Cnt     []int64 `json:"cnt,omitempty"`
}

func exportHist(h *hdr.Histogram) HistData {
	s := h.Export()
	d := HistData{Lowest: s.LowestTrackableValue, Highest: s.HighestTrackableValue, Sig: s.SignificantFigures}
	for i, c := range s.Counts {
		if c != 0 {
			d.Idx = append(d.Idx, int32(i))
			d.Cnt = append(d.Cnt, c)
		}
	}
	return d
}

func (d HistData) empty() bool { return len(d.Cnt) == 0 }

func (d HistData) toHist() *hdr.Histogram {
	if d.Highest == 0 {
		return newHist()
	}
	proto := hdr.New(d.Lowest, d.Highest, int(d.Sig))
	counts := make([]int64, len(proto.Export().Counts))
	for i, idx := range d.Idx {
		if int(idx) < len(counts) && i < len(d.Cnt) {
			counts[idx] = d.Cnt[i]
		}
	}
	return hdr.Import(&hdr.Snapshot{
		LowestTrackableValue:  d.Lowest,
		HighestTrackableValue: d.Highest,
		SignificantFigures:    d.Sig,
		Counts:                counts,
	})
}

// latRecorder records latencies from many connections' readers into
// sharded histograms (a shard per connection index), so that recording
// rarely contends. The ticker drains the shards once a second. Each shard
// also counts its deliveries (Counts.Delivered): one uncontended lock per
// message, instead of that plus an atomic add on a counter that every
// reader shares.
type latRecorder struct {
	shards [latShards]latShard
}

type latShard struct {
	mu sync.Mutex
	h  *hdr.Histogram
	n  int64    // values ever recorded (h is drained, n is not)
	_  [40]byte // keep shards on separate cache lines
}

func newLatRecorder() *latRecorder {
	r := &latRecorder{}
	for i := range r.shards {
		r.shards[i].h = newHist()
	}
	return r
}

func (r *latRecorder) record(shard int, d time.Duration) {
	s := &r.shards[uint(shard)%latShards]
	s.mu.Lock()
	recordClamped(s.h, int64(d/time.Microsecond))
	s.n++
	s.mu.Unlock()
}

// count returns how many values were ever recorded.
func (r *latRecorder) count() int64 {
	var n int64
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		n += s.n
		s.mu.Unlock()
	}
	return n
}

// drainInto moves everything recorded so far into dst.
func (r *latRecorder) drainInto(dst *hdr.Histogram) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		if s.h.TotalCount() > 0 {
			dst.Merge(s.h)
			s.h.Reset()
		}
		s.mu.Unlock()
	}
}

// lockedHist is a histogram behind a mutex, for rare events (handshakes).
type lockedHist struct {
	mu sync.Mutex
	h  *hdr.Histogram
}

func (l *lockedHist) record(d time.Duration) {
	l.mu.Lock()
	if l.h == nil {
		l.h = newHist()
	}
	recordClamped(l.h, int64(d/time.Microsecond))
	l.mu.Unlock()
}

func (l *lockedHist) export() HistData {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		l.h = newHist()
	}
	return exportHist(l.h)
}

// Counts is a snapshot of a worker's counters (cumulative). Progress
// messages and results carry it; the coordinator adds them up.
type Counts struct {
	Attempted     int64 `json:"attempted"`      // connection attempts (incl. reconnects)
	ConnOK        int64 `json:"conn_ok"`        // successful handshakes
	ConnFail      int64 `json:"conn_fail"`      // failed attempts (all causes)
	Open          int64 `json:"open"`           // connections open now
	Ready         int64 `json:"ready"`          // subscribers ready (subscribed)
	Measured      int64 `json:"measured"`       // subscribers counted for delivery
	Disconnects   int64 `json:"disconnects"`    // established connections closed by the server or the network
	Sent          int64 `json:"sent"`           // publishes / echo messages sent in the load phase
	Acked         int64 `json:"acked"`          // publish replies ok (fanout) / own broadcast seen (raw)
	PubErr        int64 `json:"pub_err"`        // publish error replies
	Delivered     int64 `json:"delivered"`      // messages received by measured subscribers / echoes received
	Recovered     int64 `json:"recovered"`      // churn: publications received in recover replies
	Gaps          int64 `json:"gaps"`           // churn: missing offsets
	Dups          int64 `json:"dups"`           // churn: offsets seen twice
	RecoverFail   int64 `json:"recover_fail"`   // churn: replies with recovered=false or another epoch
	Reconnects    int64 `json:"reconnects"`     // churn: successful resubscribes
	ReconnectFail int64 `json:"reconnect_fail"` // churn: reconnects that failed
	SubRetries    int64 `json:"sub_retries"`    // subscribes answered "unavailable" (cluster broker busy or down) and sent again
	Pending       int64 `json:"pending"`        // things the drain waits for (echo in flight, slow reads, reconnects)
	SlowShed      int64 `json:"slow_shed"`      // slow: non-reading subscribers closed with 1008
	SlowDropped   int64 `json:"slow_dropped"`   // slow: non-reading subscribers closed otherwise
	SlowOpen      int64 `json:"slow_open"`      // slow: non-reading subscribers still open at the end
}

func (c *Counts) add(o Counts) {
	c.Attempted += o.Attempted
	c.ConnOK += o.ConnOK
	c.ConnFail += o.ConnFail
	c.Open += o.Open
	c.Ready += o.Ready
	c.Measured += o.Measured
	c.Disconnects += o.Disconnects
	c.Sent += o.Sent
	c.Acked += o.Acked
	c.PubErr += o.PubErr
	c.Delivered += o.Delivered
	c.Recovered += o.Recovered
	c.Gaps += o.Gaps
	c.Dups += o.Dups
	c.RecoverFail += o.RecoverFail
	c.Reconnects += o.Reconnects
	c.ReconnectFail += o.ReconnectFail
	c.SubRetries += o.SubRetries
	c.Pending += o.Pending
	c.SlowShed += o.SlowShed
	c.SlowDropped += o.SlowDropped
	c.SlowOpen += o.SlowOpen
}

// counters is the live, atomic form of Counts. Deliveries are counted by
// lat (latRecorder), with their latency.
type counters struct {
	attempted, connOK, connFail, open, ready, measured, disconnects atomic.Int64
	sent, acked, pubErr, recovered                                  atomic.Int64
	gaps, dups, recoverFail, reconnects, reconnectFail, pending     atomic.Int64
	slowShed, slowDropped, slowOpen, subRetries                     atomic.Int64
	lat                                                             *latRecorder
}

func (c *counters) snapshot() Counts {
	var delivered int64
	if c.lat != nil {
		delivered = c.lat.count()
	}
	return Counts{
		Attempted: c.attempted.Load(), ConnOK: c.connOK.Load(), ConnFail: c.connFail.Load(),
		Open: c.open.Load(), Ready: c.ready.Load(), Measured: c.measured.Load(),
		Disconnects: c.disconnects.Load(), Sent: c.sent.Load(), Acked: c.acked.Load(),
		PubErr: c.pubErr.Load(), Delivered: delivered, Recovered: c.recovered.Load(),
		Gaps: c.gaps.Load(), Dups: c.dups.Load(), RecoverFail: c.recoverFail.Load(),
		Reconnects: c.reconnects.Load(), ReconnectFail: c.reconnectFail.Load(), Pending: c.pending.Load(),
		SlowShed: c.slowShed.Load(), SlowDropped: c.slowDropped.Load(), SlowOpen: c.slowOpen.Load(),
		SubRetries: c.subRetries.Load(),
	}
}

// causeSet counts events by cause (connect failures, disconnects, publish
// errors). They are rare, so one mutex is enough.
type causeSet struct {
	mu sync.Mutex
	m  map[string]int64
}

func (s *causeSet) add(cause string, n int64) {
	s.mu.Lock()
	if s.m == nil {
		s.m = make(map[string]int64)
	}
	s.m[cause] += n
	s.mu.Unlock()
}

func (s *causeSet) snapshot() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.m))
	for k, v := range s.m {
		out[k] = v
	}
	return out
}

func mergeCauses(dst, src map[string]int64) map[string]int64 {
	if dst == nil {
		dst = make(map[string]int64)
	}
	for k, v := range src {
		dst[k] += v
	}
	return dst
}

// sortedCauses lists a cause map largest first.
func sortedCauses(m map[string]int64) []CauseCount {
	out := make([]CauseCount, 0, len(m))
	for k, v := range m {
		out = append(out, CauseCount{Cause: k, Count: v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Cause < out[j].Cause
	})
	return out
}

// CauseCount is one row of a by-cause breakdown.
type CauseCount struct {
	Cause string `json:"cause"`
	Count int64  `json:"count"`
}

// Second is one second of a worker's time series: what happened between
// T and T+1 seconds after the run started (gauges sampled at T+1).
type Second struct {
	T int `json:"t"`
	SecondCounts
	Lat HistData `json:"lat"`
}

// SecondCounts are the counters of one second: a worker's (Second) or the
// run's, all workers added (SeriesPoint).
type SecondCounts struct {
	Open        int64 `json:"open"` // connections open at the end of the second
	ConnOK      int64 `json:"conn_ok"`
	ConnFail    int64 `json:"conn_fail"`
	Disconnects int64 `json:"disconnects"`
	Sent        int64 `json:"sent"`
	Delivered   int64 `json:"delivered"`
	Gaps        int64 `json:"gaps"`
}

// add adds o's counters to c.
func (c *SecondCounts) add(o SecondCounts) {
	c.Open += o.Open
	c.ConnOK += o.ConnOK
	c.ConnFail += o.ConnFail
	c.Disconnects += o.Disconnects
	c.Sent += o.Sent
	c.Delivered += o.Delivered
	c.Gaps += o.Gaps
}

// seriesRec turns the live counters and latency shards into per-second
// samples and keeps the run's total latency histogram.
type seriesRec struct {
	mu      sync.Mutex
	secs    []Second
	prev    Counts
	secHist *hdr.Histogram
	total   *hdr.Histogram
	last    struct{ p50, p99 int64 } // µs, of the last complete second
}

func newSeriesRec() *seriesRec {
	return &seriesRec{secHist: newHist(), total: newHist()}
}

// sample closes second t.
func (s *seriesRec) sample(t int, ctr *counters, lat *latRecorder) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := ctr.snapshot()
	lat.drainInto(s.secHist)
	sec := Second{T: t, SecondCounts: SecondCounts{
		Open:        now.Open,
		ConnOK:      now.ConnOK - s.prev.ConnOK,
		ConnFail:    now.ConnFail - s.prev.ConnFail,
		Disconnects: now.Disconnects - s.prev.Disconnects,
		Sent:        now.Sent - s.prev.Sent,
		Delivered:   now.Delivered - s.prev.Delivered,
		Gaps:        now.Gaps - s.prev.Gaps,
	}}
	if s.secHist.TotalCount() > 0 {
		sec.Lat = exportHist(s.secHist)
		s.last.p50 = s.secHist.ValueAtQuantile(50)
		s.last.p99 = s.secHist.ValueAtQuantile(99)
		s.total.Merge(s.secHist)
		s.secHist.Reset()
	} else {
		s.last.p50, s.last.p99 = 0, 0
	}
	s.prev = now
	s.secs = append(s.secs, sec)
}

// flush moves what the shards hold into the total (for the partial last
// second) and returns the series and the total histogram.
func (s *seriesRec) flush(lat *latRecorder) ([]Second, HistData) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lat.drainInto(s.total)
	return append([]Second(nil), s.secs...), exportHist(s.total)
}

func (s *seriesRec) lastPercentiles() (p50, p99 int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last.p50, s.last.p99
}
