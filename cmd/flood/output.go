package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Report is a run's merged results: the final table, --json and --report
// are all rendered from it.
type Report struct {
	Tool        string        `json:"tool"`
	Settings    *Config       `json:"settings"`
	Procs       int           `json:"procs"`
	Started     time.Time     `json:"started"`
	Finished    time.Time     `json:"finished"`
	LoadStart   time.Time     `json:"load_start"`
	LoadStop    time.Time     `json:"load_stop"`
	RampSeconds float64       `json:"ramp_seconds"`
	RampConnOK  int64         `json:"ramp_conn_ok"` // connections up when the ramp ended
	Interrupted bool          `json:"interrupted"`
	DeadlineHit bool          `json:"deadline_hit"`
	Notes       []string      `json:"notes,omitempty"`
	Summary     Summary       `json:"summary"`
	Series      []SeriesPoint `json:"series"`
	// LatencyCurve is the latency distribution: value at each percentile.
	LatencyCurve   []CurvePoint    `json:"latency_curve"`
	HandshakeCurve []CurvePoint    `json:"handshake_curve"`
	Workers        []WorkerSummary `json:"workers"`
	Failures       []string        `json:"failures,omitempty"` // why the exit status is 3
	latency        *hdr.Histogram  // merged, for rendering
	handshake      *hdr.Histogram
}

// Summary holds the run's totals.
type Summary struct {
	Counts
	ConnectFailures  []CauseCount `json:"connect_failures"`
	NotReady         []CauseCount `json:"not_ready"`       // connected, but not subscribed/ready
	ProtocolErrors   []CauseCount `json:"protocol_errors"` // messages that could not be decoded
	DisconnectCauses []CauseCount `json:"disconnect_causes"`
	PublishErrors    []CauseCount `json:"publish_errors"`
	SlowOutcomes     []CauseCount `json:"slow_outcomes,omitempty"`
	ConnectRate      float64      `json:"connect_rate"` // connections up per second of ramp
	PeakOpen         int64        `json:"peak_open"`    // most connections open at once (sampled)
	Handshake        Percentiles  `json:"handshake_ms"`
	LoadSeconds      float64      `json:"load_seconds"`
	SendRate         float64      `json:"send_rate"`     // publishes (echo: messages) per second
	DeliveryRate     float64      `json:"delivery_rate"` // deliveries (echo: echoes) per second
	Expected         int64        `json:"expected"`
	Lost             int64        `json:"lost"`
	LossPct          float64      `json:"loss_pct"`
	Latency          Percentiles  `json:"latency_ms"`
	CPUUser          float64      `json:"cpu_user_s"`
	CPUSys           float64      `json:"cpu_sys_s"`
	CPUPerMsgUs      float64      `json:"cpu_per_msg_us"` // client CPU per delivered message
	RSSCoordinator   int64        `json:"rss_coordinator_bytes"`
	RSSWorkersMax    int64        `json:"rss_workers_max_bytes"`
	RSSWorkersSum    int64        `json:"rss_workers_sum_bytes"`
}

// Percentiles of a latency histogram, in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

// SeriesPoint is one second of the run, all workers together.
type SeriesPoint struct {
	T int `json:"t"` // seconds since the run started
	SecondCounts
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// CurvePoint is the latency at one percentile.
type CurvePoint struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

// WorkerSummary is one process's share of the totals.
type WorkerSummary struct {
	Index     int     `json:"index"`
	ConnOK    int64   `json:"conn_ok"`
	ConnFail  int64   `json:"conn_fail"`
	Delivered int64   `json:"delivered"`
	CPUUser   float64 `json:"cpu_user_s"`
	CPUSys    float64 `json:"cpu_sys_s"`
	MaxRSS    int64   `json:"max_rss_bytes"`
}

func usToMs(us int64) float64 { return float64(us) / 1000 }

func percentilesOf(h *hdr.Histogram) Percentiles {
	if h == nil || h.TotalCount() == 0 {
		return Percentiles{}
	}
	return Percentiles{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   usToMs(h.ValueAtQuantile(50)),
		P90:   usToMs(h.ValueAtQuantile(90)),
		P99:   usToMs(h.ValueAtQuantile(99)),
		P999:  usToMs(h.ValueAtQuantile(99.9)),
		Max:   usToMs(h.Max()),
	}
}

// curvePercentiles are the points of the latency distribution curve.
var curvePercentiles = []float64{0, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97, 99, 99.5, 99.9, 99.95, 99.99, 99.999, 100}

func curveOf(h *hdr.Histogram) []CurvePoint {
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	out := make([]CurvePoint, 0, len(curvePercentiles))
	for _, p := range curvePercentiles {
		v := h.ValueAtQuantile(p)
		if p == 100 {
			v = h.Max()
		} else if p == 0 {
			v = h.Min()
		}
		out = append(out, CurvePoint{Percentile: p, Ms: usToMs(v)})
	}
	return out
}

// merge combines the workers' results into rep.
// self and children are the CPU usage of this process and its children
// when the run began.
func merge(rep *Report, cfg *Config, f *fleet, self, children usage) {
	rep.Tool = "fanout flood"
	rep.Settings = cfg
	s := &rep.Summary
	lat, hs := newHist(), newHist()
	var failures, notReady, protoErrs, disc, pubErrs, slow map[string]int64
	series := map[int]*SeriesPoint{}
	secHists := map[int]*hdr.Histogram{}
	for i := range f.state {
		st := &f.state[i]
		s.Counts.add(st.counts)
		r := st.result
		if r == nil {
			continue
		}
		failures = mergeCauses(failures, r.ConnectFailures)
		notReady = mergeCauses(notReady, r.NotReady)
		protoErrs = mergeCauses(protoErrs, r.ProtocolErrors)
		disc = mergeCauses(disc, r.Disconnects)
		pubErrs = mergeCauses(pubErrs, r.PublishErrors)
		slow = mergeCauses(slow, r.SlowOutcomes)
		lat.Merge(r.Latency.toHist())
		hs.Merge(r.Handshake.toHist())
		for _, sec := range r.Series {
			p := series[sec.T]
			if p == nil {
				p = &SeriesPoint{T: sec.T}
				series[sec.T] = p
			}
			p.add(sec.SecondCounts)
			if !sec.Lat.empty() {
				h := secHists[sec.T]
				if h == nil {
					h = newHist()
					secHists[sec.T] = h
				}
				h.Merge(sec.Lat.toHist())
			}
		}
		rep.Workers = append(rep.Workers, WorkerSummary{
			Index: r.Index, ConnOK: r.Counts.ConnOK, ConnFail: r.Counts.ConnFail, Delivered: r.Counts.Delivered,
			CPUUser: r.CPUUser, CPUSys: r.CPUSys, MaxRSS: r.MaxRSS,
		})
		if rep.Procs > 1 {
			s.RSSWorkersMax = max(s.RSSWorkersMax, r.MaxRSS)
			s.RSSWorkersSum += r.MaxRSS
		}
	}
	for t, p := range series {
		if h := secHists[t]; h != nil {
			p.P50 = usToMs(h.ValueAtQuantile(50))
			p.P90 = usToMs(h.ValueAtQuantile(90))
			p.P99 = usToMs(h.ValueAtQuantile(99))
			p.Max = usToMs(h.Max())
		}
		rep.Series = append(rep.Series, *p)
	}
	sort.Slice(rep.Series, func(i, j int) bool { return rep.Series[i].T < rep.Series[j].T })
	for _, p := range rep.Series {
		s.PeakOpen = max(s.PeakOpen, p.Open)
	}
	s.PeakOpen = max(s.PeakOpen, rep.RampConnOK-s.Counts.Disconnects)
	rep.latency, rep.handshake = lat, hs
	s.ConnectFailures = sortedCauses(failures)
	s.NotReady = sortedCauses(notReady)
	s.ProtocolErrors = sortedCauses(protoErrs)
	s.DisconnectCauses = sortedCauses(disc)
	s.PublishErrors = sortedCauses(pubErrs)
	s.SlowOutcomes = sortedCauses(slow)
	s.Latency = percentilesOf(lat)
	s.Handshake = percentilesOf(hs)
	rep.LatencyCurve = curveOf(lat)
	rep.HandshakeCurve = curveOf(hs)
	if rep.RampSeconds > 0 {
		s.ConnectRate = float64(rep.RampConnOK) / rep.RampSeconds
	}
	if !rep.LoadStart.IsZero() && !rep.LoadStop.IsZero() {
		s.LoadSeconds = rep.LoadStop.Sub(rep.LoadStart).Seconds()
	}
	if s.LoadSeconds > 0 {
		s.SendRate = float64(s.Sent) / s.LoadSeconds
		s.DeliveryRate = float64(s.Delivered) / s.LoadSeconds
	}
	s.Expected = expectedDeliveries(cfg, s.Counts)
	if s.Expected > 0 {
		received := s.Delivered
		if cfg.Mode == modeChurn { // what reconnecting subscribers recovered
			received += s.Recovered - s.Dups
		}
		s.Lost = max(0, s.Expected-received)
		s.LossPct = 100 * float64(s.Lost) / float64(s.Expected)
	}
	user, sys, rss := selfUsage()
	after := childrenUsage()
	s.CPUUser = user - self.user + after.user - children.user
	s.CPUSys = sys - self.sys + after.sys - children.sys
	s.RSSCoordinator = rss
	if s.Delivered > 0 {
		s.CPUPerMsgUs = (s.CPUUser + s.CPUSys) * 1e6 / float64(s.Delivered)
	}
	if wall := rep.Finished.Sub(rep.Started).Seconds(); wall > 0 {
		share := (s.CPUUser + s.CPUSys) / (wall * float64(runtime.NumCPU()))
		if share > 0.5 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("flood itself used %.0f%% of this machine's %d CPUs: its own queueing may be part of the latency", 100*share, runtime.NumCPU()))
		}
	}
	if cfg.Mode == modeChurn {
		if s.Gaps > 0 {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%d missing offsets (gaps)", s.Gaps))
		}
		if s.RecoverFail > 0 {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%d recover failures", s.RecoverFail))
		}
	}
}

// exitCode is 3 when the run found a correctness failure (churn gaps).
func (r *Report) exitCode() int {
	if len(r.Failures) > 0 {
		return 3
	}
	return 0
}

// writeJSON writes the report as JSON.
func writeJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func fmtMs(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1:
		return fmt.Sprintf("%.3fms", v)
	case v < 100:
		return fmt.Sprintf("%.2fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

func fmtRate(v float64) string {
	if v >= 100 {
		return fmtCount(int64(v+0.5)) + "/s"
	}
	return fmt.Sprintf("%.1f/s", v)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

func fmtCauses(cs []CauseCount) string {
	if len(cs) == 0 {
		return "none"
	}
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = fmt.Sprintf("%s %s", c.Cause, fmtCount(c.Count))
	}
	return strings.Join(parts, ", ")
}

func fmtPercentiles(p Percentiles) string {
	if p.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (n=%s)",
		fmtMs(p.P50), fmtMs(p.P90), fmtMs(p.P99), fmtMs(p.P999), fmtMs(p.Max), fmtCount(p.Count))
}

// tableRows is the final table as label/value rows.
func tableRows(r *Report) [][2]string {
	cfg, s := r.Settings, &r.Summary
	rows := [][2]string{
		{"mode", fmt.Sprintf("%s  protocol %s  url %s  procs %d", cfg.Mode, cfg.Protocol, cfg.URL, r.Procs)},
	}
	set := fmt.Sprintf("conns %s  connect-rate %s", fmtCount(int64(cfg.Conns)), fmtRate(cfg.ConnectRate))
	if cfg.Mode != modeConnect {
		set += fmt.Sprintf("  size %d B  duration %s", cfg.Size, cfg.Duration)
	} else {
		set += fmt.Sprintf("  hold %s", cfg.Duration)
	}
	if cfg.usesPublishers() {
		rate := "max"
		if cfg.Rate > 0 {
			rate = fmtRate(cfg.Rate)
		}
		set += fmt.Sprintf("  publishers %d  rate %s", cfg.Publishers, rate)
		if cfg.Rate == 0 {
			set += fmt.Sprintf("  window %d", cfg.Inflight)
		}
	}
	if cfg.Mode == modeEcho {
		set += fmt.Sprintf("  inflight %d", cfg.Inflight)
	}
	if cfg.Mode == modeChurn {
		set += fmt.Sprintf("  churn %.3g%%/s", cfg.ChurnPct)
	}
	if cfg.Mode == modeSlow {
		set += fmt.Sprintf("  slow %.3g%%", cfg.SlowPct)
	}
	rows = append(rows, [2]string{"settings", set})
	rows = append(rows,
		[2]string{"connections", fmt.Sprintf("ok %s  failed %s  (attempts %s, peak open %s)",
			fmtCount(s.ConnOK), fmtCount(s.ConnFail), fmtCount(s.Attempted), fmtCount(s.PeakOpen))},
		[2]string{"failures", fmtCauses(s.ConnectFailures)},
		[2]string{"connect rate", fmt.Sprintf("%s over %.1fs ramp", fmtRate(s.ConnectRate), r.RampSeconds)},
		[2]string{"handshake", fmtPercentiles(s.Handshake)},
		[2]string{"disconnects", fmtCauses(s.DisconnectCauses)},
	)
	if cfg.Mode != modeConnect {
		ready := fmt.Sprintf("%s subscribed/ready, %s measured", fmtCount(s.Ready), fmtCount(s.Measured))
		if s.SubRetries > 0 {
			ready += fmt.Sprintf("  (%s subscribes retried after \"unavailable\")", fmtCount(s.SubRetries))
		}
		rows = append(rows, [2]string{"ready", ready})
		if len(s.NotReady) > 0 {
			rows = append(rows, [2]string{"not ready", fmtCauses(s.NotReady)})
		}
	}
	if len(s.ProtocolErrors) > 0 {
		rows = append(rows, [2]string{"protocol errors", fmtCauses(s.ProtocolErrors)})
	}
	switch cfg.Mode {
	case modeBroadcast, modeChurn, modeSlow:
		rows = append(rows,
			[2]string{"published", fmt.Sprintf("%s (%s)  acked %s  errors %s",
				fmtCount(s.Sent), fmtRate(s.SendRate), fmtCount(s.Acked), fmtCount(s.PubErr))},
		)
		if len(s.PublishErrors) > 0 {
			rows = append(rows, [2]string{"publish errors", fmtCauses(s.PublishErrors)})
		}
		rows = append(rows,
			[2]string{"deliveries", fmt.Sprintf("%s  (%s)", fmtCount(s.Delivered), fmtRate(s.DeliveryRate))},
			[2]string{"loss", fmt.Sprintf("%s of %s expected (%.4f%%)", fmtCount(s.Lost), fmtCount(s.Expected), s.LossPct)},
		)
	case modeEcho:
		rows = append(rows,
			[2]string{"echoes", fmt.Sprintf("%s sent, %s back  (%s)", fmtCount(s.Sent), fmtCount(s.Delivered), fmtRate(s.DeliveryRate))},
			[2]string{"loss", fmt.Sprintf("%s of %s expected (%.4f%%)", fmtCount(s.Lost), fmtCount(s.Expected), s.LossPct)},
		)
	}
	switch cfg.Mode {
	case modeBroadcast, modeChurn:
		rows = append(rows, [2]string{"latency", fmtPercentiles(s.Latency)})
	case modeSlow:
		rows = append(rows, [2]string{"latency (fast)", fmtPercentiles(s.Latency)})
		rows = append(rows, [2]string{"slow subscribers", fmt.Sprintf("shed (1008) %s  dropped otherwise %s  still open %s",
			fmtCount(s.SlowShed), fmtCount(s.SlowDropped), fmtCount(s.SlowOpen))})
		rows = append(rows, [2]string{"slow outcomes", fmtCauses(s.SlowOutcomes)})
	case modeEcho:
		rows = append(rows, [2]string{"rtt", fmtPercentiles(s.Latency)})
	}
	if cfg.Mode == modeChurn {
		rows = append(rows,
			[2]string{"churn", fmt.Sprintf("reconnects %s  failed %s  recovered pubs %s",
				fmtCount(s.Reconnects), fmtCount(s.ReconnectFail), fmtCount(s.Recovered))},
			[2]string{"continuity", fmt.Sprintf("gaps %s  duplicates %s  recover failures %s",
				fmtCount(s.Gaps), fmtCount(s.Dups), fmtCount(s.RecoverFail))},
		)
	} else if cfg.fanout() && (s.Gaps > 0 || s.Dups > 0) {
		rows = append(rows, [2]string{"continuity", fmt.Sprintf("gaps %s  duplicates %s", fmtCount(s.Gaps), fmtCount(s.Dups))})
	}
	cpu := fmt.Sprintf("%.2fs (user %.2fs, sys %.2fs)", s.CPUUser+s.CPUSys, s.CPUUser, s.CPUSys)
	if s.Delivered > 0 {
		cpu += fmt.Sprintf("  %.2fµs per delivered message", s.CPUPerMsgUs)
	} else if s.Attempted > 0 {
		cpu += fmt.Sprintf("  %.0fµs per connection attempt", (s.CPUUser+s.CPUSys)*1e6/float64(s.Attempted))
	}
	rows = append(rows, [2]string{"client cpu", cpu})
	rss := "coordinator " + fmtBytes(s.RSSCoordinator)
	if r.Procs > 1 {
		rss += fmt.Sprintf("  workers max %s, sum %s", fmtBytes(s.RSSWorkersMax), fmtBytes(s.RSSWorkersSum))
	}
	rows = append(rows, [2]string{"peak rss", rss})
	for _, n := range r.Notes {
		rows = append(rows, [2]string{"note", n})
	}
	if len(r.Failures) > 0 {
		rows = append(rows, [2]string{"FAILED", strings.Join(r.Failures, "; ")})
	}
	return rows
}

// printTable writes the final table.
func printTable(w io.Writer, r *Report) {
	rows := tableRows(r)
	width := 0
	for _, row := range rows {
		width = max(width, len(row[0]))
	}
	for _, row := range rows {
		fmt.Fprintf(w, "%-*s  %s\n", width, row[0], row[1])
	}
}

// progressLine is the live status line on stderr.
type progressLine struct {
	mu       sync.Mutex
	w        io.Writer
	mode     string
	lastT    time.Duration
	last     Counts
	shownAny bool
}

func (p *progressLine) update(elapsed time.Duration, phase string, t Counts, f *fleet) {
	p.mu.Lock()
	defer p.mu.Unlock()
	dt := (elapsed - p.lastT).Seconds()
	if dt <= 0 {
		dt = 1
	}
	line := fmt.Sprintf("[%6.1fs] %-7s conns ok %s fail %s open %s", elapsed.Seconds(), phase,
		fmtCount(t.ConnOK), fmtCount(t.ConnFail), fmtCount(t.Open))
	if p.mode != modeConnect {
		_, p99 := f.lastP99()
		line += fmt.Sprintf(" | sent %s deliv %s | p99 %s",
			fmtRate(float64(t.Sent-p.last.Sent)/dt), fmtRate(float64(t.Delivered-p.last.Delivered)/dt), fmtMs(usToMs(p99)))
	} else {
		line += fmt.Sprintf(" | +%s", fmtRate(float64(t.ConnOK-p.last.ConnOK)/dt))
	}
	if t.Disconnects > 0 {
		line += fmt.Sprintf(" | lost conns %s", fmtCount(t.Disconnects))
	}
	if t.Gaps > 0 {
		line += fmt.Sprintf(" | GAPS %s", fmtCount(t.Gaps))
	}
	fmt.Fprintf(p.w, "\r\033[K%s", line)
	p.shownAny = true
	p.lastT, p.last = elapsed, t
}

func (p *progressLine) clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shownAny {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
