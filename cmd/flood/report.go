package main

import (
	"bytes"
	"fmt"
	"html/template"
	"math"
	"os"
	"strings"
	"time"
)

// The HTML report is one self-contained page: no scripts, no external
// style sheets, fonts or images. Charts are SVG drawn here.

type chartSeries struct {
	Name  string
	Color string
	X, Y  []float64
}

type chartSpec struct {
	Title  string
	XLabel string
	YLabel string
	Series []chartSeries
	// XTicks overrides the x axis labels (value -> label).
	XTicks []axisTick
}

type axisTick struct {
	V     float64
	Label string
}

const (
	chartW, chartH                     = 860, 300
	padL, padR, padT, padB             = 70, 40, 34, 46
	plotW, plotH                       = chartW - padL - padR, chartH - padT - padB
	colorA, colorB, colorC, colorD     = "#2563eb", "#dc2626", "#16a34a", "#9333ea"
	svgFont                            = `font-family="system-ui,sans-serif"`
	maxChartPoints                 int = 2000
)

// niceStep rounds v up to 1, 2 or 5 times a power of ten (a tick step).
func niceStep(v float64) float64 { return roundUp(v, []float64{1, 2, 5, 10}) }

func roundUp(v float64, mantissas []float64) float64 {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range mantissas {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%.3gM", v/1e6)
	case math.Abs(v) >= 1e4:
		return fmt.Sprintf("%.3gk", v/1e3)
	}
	return fmt.Sprintf("%.4g", v)
}

func esc(s string) string { return template.HTMLEscapeString(s) }

// renderChart draws a line chart as an SVG element.
func renderChart(c chartSpec) template.HTML {
	var b strings.Builder
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymax := 0.0
	points := 0
	for _, s := range c.Series {
		for i := range s.X {
			xmin, xmax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i])
			ymax = math.Max(ymax, s.Y[i])
			points++
		}
	}
	fmt.Fprintf(&b, `<svg viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s">`,
		chartW, chartH, chartW, chartH, esc(c.Title))
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#fff"/>`, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="20" %s font-size="15" font-weight="600">%s</text>`, padL, svgFont, esc(c.Title))
	if points == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" %s font-size="13" fill="#666">no data</text></svg>`, padL+plotW/2-30, padT+plotH/2, svgFont)
		return template.HTML(b.String())
	}
	if xmax == xmin {
		xmax = xmin + 1
	}
	ystep := niceStep(ymax * 1.05 / 5)
	ymax = ystep * math.Max(1, math.Ceil(ymax*1.05/ystep))
	sx := func(x float64) float64 { return padL + (x-xmin)/(xmax-xmin)*plotW }
	sy := func(y float64) float64 { return padT + plotH - y/ymax*plotH }
	// grid and y ticks
	for v := 0.0; v <= ymax+ystep/2; v += ystep {
		y := sy(v)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e7eb"/>`, padL, y, padL+plotW, y)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" %s font-size="11" text-anchor="end" fill="#444">%s</text>`, padL-6, y+4, svgFont, esc(fmtTick(v)))
	}
	// x ticks
	ticks := c.XTicks
	if ticks == nil {
		step := niceStep((xmax - xmin) / 8)
		if step < 1 && allIntegers(c.Series) {
			step = 1
		}
		for v := math.Ceil(xmin/step) * step; v <= xmax+1e-9; v += step {
			ticks = append(ticks, axisTick{V: v, Label: fmtTick(v)})
		}
	}
	for _, t := range ticks {
		if t.V < xmin-1e-9 || t.V > xmax+1e-9 {
			continue
		}
		x := sx(t.V)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#f1f5f9"/>`, x, padT, x, padT+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" %s font-size="11" text-anchor="middle" fill="#444">%s</text>`, x, padT+plotH+16, svgFont, esc(t.Label))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#9ca3af"/>`, padL, padT, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" %s font-size="12" text-anchor="middle" fill="#333">%s</text>`, padL+plotW/2, chartH-6, svgFont, esc(c.XLabel))
	fmt.Fprintf(&b, `<text x="14" y="%d" %s font-size="12" text-anchor="middle" fill="#333" transform="rotate(-90 14 %d)">%s</text>`,
		padT+plotH/2, svgFont, padT+plotH/2, esc(c.YLabel))
	// series
	for i, s := range c.Series {
		if len(s.X) == 0 {
			continue
		}
		step := 1
		if len(s.X) > maxChartPoints {
			step = (len(s.X) + maxChartPoints - 1) / maxChartPoints
		}
		var pts strings.Builder
		for j := 0; j < len(s.X); j += step {
			fmt.Fprintf(&pts, "%.1f,%.1f ", sx(s.X[j]), sy(s.Y[j]))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, s.Color, strings.TrimSpace(pts.String()))
		if len(s.X) <= 60 {
			for j := range s.X {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2.5" fill="%s"><title>%s: %s</title></circle>`,
					sx(s.X[j]), sy(s.Y[j]), s.Color, esc(s.Name), esc(fmtTick(s.Y[j])))
			}
		}
		lx := padL + 10 + i*170
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="3" fill="%s"/>`, lx, padT+8, s.Color)
		fmt.Fprintf(&b, `<text x="%d" y="%d" %s font-size="11" fill="#333">%s</text>`, lx+16, padT+12, svgFont, esc(s.Name))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func allIntegers(series []chartSeries) bool {
	for _, s := range series {
		for _, x := range s.X {
			if x != math.Trunc(x) {
				return false
			}
		}
	}
	return true
}

// nines maps a percentile to the x position of a latency distribution
// chart: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9...
func nines(p float64) float64 {
	if p >= 100 {
		return 6
	}
	return math.Min(6, math.Log10(100/(100-p)))
}

func curveChart(title, name string, curve []CurvePoint) template.HTML {
	s := chartSeries{Name: name, Color: colorA}
	for _, c := range curve {
		if c.Percentile >= 100 {
			continue
		}
		s.X = append(s.X, nines(c.Percentile))
		s.Y = append(s.Y, c.Ms)
	}
	ticks := []axisTick{{0, "p0"}, {nines(50), "p50"}, {1, "p90"}, {2, "p99"}, {3, "p99.9"}, {4, "p99.99"}, {5, "p99.999"}}
	return renderChart(chartSpec{Title: title, XLabel: "percentile", YLabel: "ms", Series: []chartSeries{s}, XTicks: ticks})
}

// reportCharts builds the report's charts from the series.
func reportCharts(r *Report) []template.HTML {
	var t, open, connOK, connFail, disc, sent, deliv, p50, p99 []float64
	var lt []float64
	for _, p := range r.Series {
		x := float64(p.T + 1)
		t = append(t, x)
		open = append(open, float64(p.Open))
		connOK = append(connOK, float64(p.ConnOK))
		connFail = append(connFail, float64(p.ConnFail))
		disc = append(disc, float64(p.Disconnects))
		sent = append(sent, float64(p.Sent))
		deliv = append(deliv, float64(p.Delivered))
		if p.P99 > 0 || p.P50 > 0 {
			lt = append(lt, x)
			p50 = append(p50, p.P50)
			p99 = append(p99, p.P99)
		}
	}
	xl := "seconds since start"
	charts := []template.HTML{
		renderChart(chartSpec{Title: "Open connections", XLabel: xl, YLabel: "connections", Series: []chartSeries{
			{Name: "open", Color: colorA, X: t, Y: open},
		}}),
		renderChart(chartSpec{Title: "Connection events per second", XLabel: xl, YLabel: "per second", Series: []chartSeries{
			{Name: "connected", Color: colorC, X: t, Y: connOK},
			{Name: "failed", Color: colorB, X: t, Y: connFail},
			{Name: "lost", Color: colorD, X: t, Y: disc},
		}}),
	}
	if r.Settings.Mode != modeConnect {
		sentName, delivName, latName := "published", "delivered", "end-to-end latency"
		if r.Settings.Mode == modeEcho {
			sentName, delivName, latName = "sent", "echoed", "round trip"
		}
		charts = append(charts,
			renderChart(chartSpec{Title: "Throughput: " + delivName, XLabel: xl, YLabel: "messages per second", Series: []chartSeries{
				{Name: delivName, Color: colorA, X: t, Y: deliv},
			}}),
			renderChart(chartSpec{Title: "Throughput: " + sentName, XLabel: xl, YLabel: "messages per second", Series: []chartSeries{
				{Name: sentName, Color: colorC, X: t, Y: sent},
			}}),
			renderChart(chartSpec{Title: "Latency per second", XLabel: xl, YLabel: "ms", Series: []chartSeries{
				{Name: "p50", Color: colorA, X: lt, Y: p50},
				{Name: "p99", Color: colorB, X: lt, Y: p99},
			}}),
			curveChart("Latency distribution (whole run)", latName, r.LatencyCurve),
		)
	}
	charts = append(charts, curveChart("Handshake time distribution", "handshake", r.HandshakeCurve))
	return charts
}

// settingsRows lists the run's settings for the report.
func settingsRows(r *Report) [][2]string {
	c := r.Settings
	rows := [][2]string{
		{"mode", c.Mode}, {"url", c.URL}, {"protocol", c.Protocol},
		{"conns", fmt.Sprint(c.Conns)}, {"connect-rate", fmt.Sprint(c.ConnectRate)},
		{"duration", c.Duration.String()}, {"connect-timeout", c.ConnectTimeout.String()},
		{"drain", c.Drain.String()}, {"procs", fmt.Sprintf("%d (requested %d)", r.Procs, c.Procs)},
		{"dial-concurrency", fmt.Sprint(c.DialConcurrency)},
	}
	if c.Mode != modeConnect {
		rows = append(rows, [2]string{"size", fmt.Sprint(c.Size)})
	}
	if c.usesPublishers() {
		rows = append(rows, [2]string{"channel", c.Channel}, [2]string{"publishers", fmt.Sprint(c.Publishers)},
			[2]string{"rate", fmt.Sprint(c.Rate)})
	}
	if c.Mode == modeEcho || (c.usesPublishers() && c.Rate == 0) {
		rows = append(rows, [2]string{"inflight", fmt.Sprint(c.Inflight)})
	}
	if c.Mode == modeChurn {
		rows = append(rows, [2]string{"churn-pct", fmt.Sprint(c.ChurnPct)})
	}
	if c.Mode == modeSlow {
		rows = append(rows, [2]string{"slow-pct", fmt.Sprint(c.SlowPct)}, [2]string{"slow-rcvbuf", fmt.Sprint(c.SlowRcvBuf)})
	}
	if len(c.SourceIPs) > 0 {
		rows = append(rows, [2]string{"source-ips", fmt.Sprintf("%d addresses", len(c.SourceIPs))})
	}
	rows = append(rows, [2]string{"started", r.Started.Format(time.RFC3339)},
		[2]string{"finished", r.Finished.Format(time.RFC3339)})
	return rows
}

var reportTmpl = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:900px;color:#111;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}
h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{padding:4px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.k{white-space:nowrap;color:#555;width:160px}
.fail{color:#b91c1c;font-weight:600}
.chart{margin:16px 0}
.muted{color:#666;font-size:13px}
</style>
</head>
<body>
<h1>{{.Title}}</h1>
<p class="muted">{{.Subtitle}}</p>
{{if .Failures}}<p class="fail">FAILED: {{range .Failures}}{{.}}; {{end}}</p>{{end}}
<h2>Results</h2>
<table>{{range .Summary}}<tr><td class="k">{{index . 0}}</td><td>{{index . 1}}</td></tr>{{end}}</table>
<h2>Charts</h2>
{{range .Charts}}<div class="chart">{{.}}</div>
{{end}}
{{if .Workers}}<h2>Processes</h2>
<table><tr><th>worker</th><th>connected</th><th>failed</th><th>delivered</th><th>cpu user</th><th>cpu sys</th><th>peak rss</th></tr>
{{range .Workers}}<tr><td>{{.Index}}</td><td>{{.ConnOK}}</td><td>{{.ConnFail}}</td><td>{{.Delivered}}</td><td>{{printf "%.2fs" .CPUUser}}</td><td>{{printf "%.2fs" .CPUSys}}</td><td>{{.RSS}}</td></tr>
{{end}}</table>{{end}}
<h2>Settings</h2>
<table>{{range .Settings}}<tr><td class="k">{{index . 0}}</td><td>{{index . 1}}</td></tr>{{end}}</table>
</body>
</html>
`))

type reportWorker struct {
	WorkerSummary
	RSS string
}

// renderReport renders the HTML report.
func renderReport(r *Report) ([]byte, error) {
	var workers []reportWorker
	for _, w := range r.Workers {
		workers = append(workers, reportWorker{w, fmtBytes(w.MaxRSS)})
	}
	data := struct {
		Title, Subtitle string
		Failures        []string
		Summary         [][2]string
		Charts          []template.HTML
		Workers         []reportWorker
		Settings        [][2]string
	}{
		Title:    fmt.Sprintf("fanout flood: %s, %s", r.Settings.Mode, r.Settings.Protocol),
		Subtitle: fmt.Sprintf("%s, %d connections, %d process(es), %s", r.Settings.URL, r.Settings.Conns, r.Procs, r.Started.Format(time.RFC1123)),
		Failures: r.Failures,
		Summary:  tableRows(r),
		Charts:   reportCharts(r),
		Workers:  workers,
		Settings: settingsRows(r),
	}
	var b bytes.Buffer
	if err := reportTmpl.Execute(&b, data); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func writeReport(path string, r *Report) error {
	b, err := renderReport(r)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
