package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

// Modes.
const (
	modeConnect   = "connect"
	modeBroadcast = "broadcast"
	modeEcho      = "echo"
	modeChurn     = "churn"
	modeSlow      = "slow"
)

var modes = []string{modeConnect, modeBroadcast, modeEcho, modeChurn, modeSlow}

// Protocols.
const (
	protoFanoutJSON    = "fanout-json"
	protoFanoutMsgpack = "fanout-msgpack"
	protoRaw           = "raw"
)

// Limits that keep every run bounded.
const (
	maxConns       = 10_000_000
	maxPublishers  = 10_000
	maxSize        = 16 << 20
	maxDuration    = 24 * time.Hour
	minRawBcSize   = 12 // 8-byte timestamp + 4-byte publisher tag
	minRawEchoSize = 8
	fdReserve      = 128 // descriptors a process keeps for itself
)

// Config is one run's settings. The coordinator sends it to its workers as
// JSON, so every field that matters to a worker is exported.
type Config struct {
	Mode            string        `json:"mode"`
	URL             string        `json:"url"`
	Protocol        string        `json:"protocol"`
	Conns           int           `json:"conns"`
	ConnectRate     float64       `json:"connect_rate"`
	Duration        time.Duration `json:"duration"`
	ConnectTimeout  time.Duration `json:"connect_timeout"`
	ReadTimeout     time.Duration `json:"read_timeout"`
	Drain           time.Duration `json:"drain"`
	Deadline        time.Duration `json:"deadline"`
	Channel         string        `json:"channel"`
	Publishers      int           `json:"publishers"`
	Rate            float64       `json:"rate"`
	Size            int           `json:"size"`
	Inflight        int           `json:"inflight"`
	ChurnPct        float64       `json:"churn_pct"`
	SlowPct         float64       `json:"slow_pct"`
	SlowRcvBuf      int           `json:"slow_rcvbuf"`
	Procs           int           `json:"procs"`
	SourceIPs       []string      `json:"source_ips,omitempty"`
	DialConcurrency int           `json:"dial_concurrency"`
	Insecure        bool          `json:"insecure"`
	Headers         []string      `json:"headers,omitempty"`
	JSONFile        string        `json:"-"`
	ReportFile      string        `json:"-"`
	Progress        string        `json:"-"`
	// CPUProfile (hidden flag --cpuprofile) makes every process that holds
	// connections write a CPU profile of its load phase to CPUProfile.<index>.
	CPUProfile string `json:"cpu_profile,omitempty"`

	// WorkerIndex is -1 in the coordinator; a worker process gets its index
	// from the hidden --worker-index flag and the rest of its config on stdin.
	WorkerIndex int `json:"-"`
}

// headerList is a repeatable string flag.
type headerList []string

func (h *headerList) String() string     { return strings.Join(*h, ", ") }
func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }

// errHelp is returned by parseArgs when --help was asked for.
var errHelp = flag.ErrHelp

// usageText is printed by --help, before the flag list.
const usageText = `flood: connection-flood and load tool for fanout (and raw WebSocket peers)

usage: flood MODE [flags]        (or: flood --mode MODE [flags])

modes:
  connect    ramp --conns connections at --connect-rate per second and hold
             them for --duration; handshake latency and failures by cause
  broadcast  --conns subscribers on --channel, --publishers publishers
             sending --rate msgs/s in total (0 = as fast as the --inflight
             window allows) of --size bytes for --duration; deliveries/s,
             loss, end-to-end latency
  echo       --conns connections, each with --inflight messages of --size
             bytes in a closed loop; echoes/s and round-trip latency
             (fanout protocols: each connection publishes to its own channel
             and times its own pub push)
  churn      fanout protocols only: broadcast, and every second --churn-pct
             of the subscribers drop and resubscribe with recover from the
             last offset they saw; any gap is a failure (exit status 3)
  slow       broadcast where --slow-pct of the subscribers stop reading;
             counts how the server sheds them (close 1008) and reports the
             latency of the others

Every run stops by itself (--duration, --connect-timeout, --drain and a hard
--deadline); SIGINT stops early and still prints results.

flags:
`

// newFlagSet declares every flag on fs, writing into c.
func newFlagSet(c *Config, hdrs *headerList, srcIPs *string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("flood", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.Mode, "mode", "", "mode: connect|broadcast|echo|churn|slow (or the first argument)")
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8080/ws", "server URL, ws:// or wss://")
	fs.StringVar(&c.Protocol, "protocol", protoFanoutJSON, "fanout-json|fanout-msgpack|raw")
	fs.IntVar(&c.Conns, "conns", 100, "connections (subscribers in broadcast/churn/slow), split over --procs")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 1000, "new connections per second, all processes together")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "load phase (connect mode: hold time after the ramp)")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 10*time.Second, "bound on TCP connect + TLS + upgrade, and on a subscribe reply")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", 30*time.Second, "bound on receiving the rest of a frame once it started, and on a blocked write")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "after the load phase, wait at most this long for in-flight messages")
	fs.DurationVar(&c.Deadline, "deadline", 0, "hard limit on the whole run (0 = ramp + timeouts + duration + drain + 30s)")
	fs.StringVar(&c.Channel, "channel", "flood", "channel (fanout protocols)")
	fs.IntVar(&c.Publishers, "publishers", 1, "publisher connections (broadcast/churn/slow), all in worker 0")
	fs.Float64Var(&c.Rate, "rate", 1000, "publish rate in msgs/s, all publishers together (0 = as fast as possible)")
	fs.IntVar(&c.Size, "size", 64, "message size in bytes (raw: whole payload; fanout: the publish data value)")
	fs.IntVar(&c.Inflight, "inflight", 0, "echo: messages in flight per connection (default 1); --rate 0: per-publisher window (default 64)")
	fs.Float64Var(&c.ChurnPct, "churn-pct", 5, "churn: percent of subscribers dropped and reconnected every second")
	fs.Float64Var(&c.SlowPct, "slow-pct", 10, "slow: percent of subscribers that stop reading")
	fs.IntVar(&c.SlowRcvBuf, "slow-rcvbuf", 4096, "slow: SO_RCVBUF of the non-reading subscribers' sockets")
	fs.IntVar(&c.Procs, "procs", 0, "worker processes (0 = as many as the open-file limit needs)")
	fs.StringVar(srcIPs, "source-ips", "", "local source addresses to spread connections over: a,b,c or first-last (e.g. 127.0.0.1-127.0.0.8)")
	fs.IntVar(&c.DialConcurrency, "dial-concurrency", 512, "handshakes in progress at once, per process")
	fs.BoolVar(&c.Insecure, "insecure", false, "wss: do not verify the server certificate")
	fs.Var(hdrs, "header", "extra upgrade request header `'Name: value'` (repeatable), e.g. 'Authorization: Bearer JWT'")
	fs.StringVar(&c.JSONFile, "json", "", "write all results, with time series, to this JSON file")
	fs.StringVar(&c.ReportFile, "report", "", "write a self-contained HTML report to this file")
	fs.StringVar(&c.Progress, "progress", "auto", "live progress line on stderr: auto (when a terminal)|on|off")
	fs.IntVar(&c.WorkerIndex, "worker-index", -1, "internal: run as worker process i")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "internal: write each process's load-phase CPU profile to FILE.<index>")
	fs.Usage = func() {
		fmt.Fprint(out, usageText)
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == "worker-index" || f.Name == "cpuprofile" {
				return
			}
			name, usage := flag.UnquoteUsage(f)
			line := "  --" + f.Name
			if name != "" {
				line += " " + name
			}
			fmt.Fprintf(out, "%-28s %s", line, usage)
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" && f.DefValue != "[]" {
				fmt.Fprintf(out, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(out)
		})
	}
	return fs
}

// parseArgs parses the command line. The mode may be given as the first
// argument, as the last non-flag argument or with --mode.
func parseArgs(args []string, out io.Writer) (*Config, error) {
	c := &Config{}
	var hdrs headerList
	var srcIPs string
	fs := newFlagSet(c, &hdrs, &srcIPs, out)
	var positional string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		positional, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if rest := fs.Args(); len(rest) > 0 {
		if positional != "" || len(rest) > 1 {
			return nil, fmt.Errorf("unexpected arguments: %q", rest)
		}
		positional = rest[0]
	}
	if positional != "" {
		if c.Mode != "" && c.Mode != positional {
			return nil, fmt.Errorf("mode given twice: %q and --mode %q", positional, c.Mode)
		}
		c.Mode = positional
	}
	c.Headers = hdrs
	if srcIPs != "" {
		ips, err := parseSourceIPs(srcIPs)
		if err != nil {
			return nil, err
		}
		for _, ip := range ips {
			c.SourceIPs = append(c.SourceIPs, ip.String())
		}
	}
	if c.WorkerIndex >= 0 {
		return c, nil // the real config arrives on stdin
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// validate checks the settings and fills in mode-dependent defaults.
func (c *Config) validate() error {
	if c.Mode == "" {
		return errors.New("no mode given: want one of " + strings.Join(modes, ", "))
	}
	if !contains(modes, c.Mode) {
		return fmt.Errorf("unknown mode %q: want one of %s", c.Mode, strings.Join(modes, ", "))
	}
	switch c.Protocol {
	case protoFanoutJSON, protoFanoutMsgpack, protoRaw:
	default:
		return fmt.Errorf("unknown --protocol %q: want fanout-json, fanout-msgpack or raw", c.Protocol)
	}
	if c.Mode == modeChurn && c.Protocol == protoRaw {
		return errors.New("churn mode needs a fanout protocol (recover needs offsets)")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("bad --url: %v", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("bad --url %q: scheme must be ws or wss", c.URL)
	}
	if u.Host == "" {
		return fmt.Errorf("bad --url %q: no host", c.URL)
	}
	if c.Conns < 1 || c.Conns > maxConns {
		return fmt.Errorf("--conns must be 1..%d", maxConns)
	}
	if !(c.ConnectRate > 0) || math.IsInf(c.ConnectRate, 0) {
		return errors.New("--connect-rate must be > 0")
	}
	if c.Duration <= 0 || c.Duration > maxDuration {
		return fmt.Errorf("--duration must be in (0, %v]", maxDuration)
	}
	if c.ConnectTimeout <= 0 || c.ConnectTimeout > time.Hour {
		return errors.New("--connect-timeout must be in (0, 1h]")
	}
	if c.ReadTimeout <= 0 || c.ReadTimeout > time.Hour {
		return errors.New("--read-timeout must be in (0, 1h]")
	}
	if c.Drain < 0 || c.Drain > time.Hour {
		return errors.New("--drain must be in [0, 1h]")
	}
	if c.Deadline < 0 {
		return errors.New("--deadline must be >= 0")
	}
	if c.usesPublishers() {
		if c.Publishers < 1 || c.Publishers > maxPublishers {
			return fmt.Errorf("--publishers must be 1..%d", maxPublishers)
		}
	} else {
		c.Publishers = 0
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return errors.New("--rate must be >= 0")
	}
	if c.Size < 1 || c.Size > maxSize {
		return fmt.Errorf("--size must be 1..%d", maxSize)
	}
	if c.Protocol == protoRaw {
		min := minRawEchoSize
		if c.usesPublishers() {
			min = minRawBcSize
		}
		if c.Size < min {
			return fmt.Errorf("raw %s needs --size >= %d (timestamp and tag)", c.Mode, min)
		}
	}
	if c.Inflight < 0 || c.Inflight > 1_000_000 {
		return errors.New("--inflight must be 0..1000000")
	}
	if c.Inflight == 0 {
		if c.Mode == modeEcho {
			c.Inflight = 1
		} else {
			c.Inflight = 64
		}
	}
	if c.ChurnPct < 0 || c.ChurnPct > 100 {
		return errors.New("--churn-pct must be 0..100")
	}
	if c.SlowPct < 0 || c.SlowPct > 100 {
		return errors.New("--slow-pct must be 0..100")
	}
	if c.SlowRcvBuf < 0 {
		return errors.New("--slow-rcvbuf must be >= 0")
	}
	if c.Procs < 0 || c.Procs > 1024 {
		return errors.New("--procs must be 0..1024")
	}
	if c.DialConcurrency < 1 || c.DialConcurrency > 100_000 {
		return errors.New("--dial-concurrency must be 1..100000")
	}
	if c.Channel == "" || len(c.Channel) > 200 || (c.fanout() && !codec.ValidChannel([]byte(c.Channel))) {
		return errors.New("--channel must be 1..200 characters of A-Z a-z 0-9 _ - : . /")
	}
	for _, h := range c.Headers {
		name, _, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(name) == "" || strings.ContainsAny(h, "\r\n") {
			return fmt.Errorf("bad --header %q: want 'Name: value'", h)
		}
	}
	switch c.Progress {
	case "auto", "on", "off":
	default:
		return errors.New("--progress must be auto, on or off")
	}
	return nil
}

// usesPublishers reports whether the mode has publisher connections.
func (c *Config) usesPublishers() bool {
	return c.Mode == modeBroadcast || c.Mode == modeChurn || c.Mode == modeSlow
}

// fanout reports whether the run speaks fanout's protocol.
func (c *Config) fanout() bool { return c.Protocol != protoRaw }

// totalConns is every connection the run opens at once (subscribers or
// plain connections plus publishers).
func (c *Config) totalConns() int { return c.Conns + c.Publishers }

// rampTime is how long the connect ramp takes at the configured rate.
func (c *Config) rampTime() time.Duration {
	return time.Duration(float64(c.Conns) / c.ConnectRate * float64(time.Second))
}

// hardDeadline is the overall limit of the run.
func (c *Config) hardDeadline() time.Duration {
	if c.Deadline > 0 {
		return c.Deadline
	}
	return c.rampTime() + 2*c.ConnectTimeout + c.Duration + c.Drain + 30*time.Second
}

// share is one worker's part of the run.
type share struct {
	First       int     // global index of its first non-publisher connection
	N           int     // non-publisher connections
	ConnectRate float64 // its part of --connect-rate
	Publishers  int     // publishers (worker 0 only)
}

// split divides the connections over k workers.
func (c *Config) split(k int) []share {
	out := make([]share, k)
	first := 0
	for i := range out {
		n := c.Conns / k
		if i < c.Conns%k {
			n++
		}
		out[i] = share{First: first, N: n, ConnectRate: c.ConnectRate * float64(n) / float64(c.Conns)}
		first += n
	}
	out[0].Publishers = c.Publishers
	return out
}

// isSlow reports whether subscriber gid is one of the --slow-pct that stop
// reading: the slow ones are spread evenly over the index range.
func (c *Config) isSlow(gid int) bool {
	if c.Mode != modeSlow || c.SlowPct <= 0 {
		return false
	}
	p := c.SlowPct / 100
	return math.Floor(float64(gid+1)*p) > math.Floor(float64(gid)*p)
}

// parseSourceIPs parses "a,b,c", where each item is an IPv4/IPv6 address or
// an IPv4 range "first-last".
func parseSourceIPs(s string) ([]net.IP, error) {
	var out []net.IP
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if a, b, ok := strings.Cut(item, "-"); ok {
			lo, hi := net.ParseIP(strings.TrimSpace(a)).To4(), net.ParseIP(strings.TrimSpace(b)).To4()
			if lo == nil || hi == nil {
				return nil, fmt.Errorf("bad --source-ips range %q: want IPv4 first-last", item)
			}
			x, y := binary.BigEndian.Uint32(lo), binary.BigEndian.Uint32(hi)
			if y < x || y-x >= 65536 {
				return nil, fmt.Errorf("bad --source-ips range %q: empty or over 65536 addresses", item)
			}
			for v := x; ; v++ {
				ip := make(net.IP, 4)
				binary.BigEndian.PutUint32(ip, v)
				out = append(out, ip)
				if v == y {
					break
				}
			}
			continue
		}
		ip := net.ParseIP(item)
		if ip == nil {
			return nil, fmt.Errorf("bad --source-ips address %q", item)
		}
		out = append(out, ip)
	}
	if len(out) == 0 {
		return nil, errors.New("--source-ips lists no address")
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// fmtCount formats n with thousands separators.
func fmtCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
