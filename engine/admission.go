package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"hash/maphash"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// Admission control: what an upgrade request must pass before
// authentication (beforeUpgrade calls admit first), and the one check made
// at accept.
//
//   - accept (onPrepare): a socket that would take the sockets the event
//     loop holds past acceptCap (RLIMIT_NOFILE less half the reserve) is
//     answered 503 and closed at once, whatever it asks: a flood of idle
//     connections cannot take the descriptors that /healthz, /metrics, the
//     admin port and net/http need.
//   - Sec-WebSocket-Key: base64 of exactly 16 bytes, once (400).
//   - Origin (origin.go): at most one header (400), allowed (403).
//   - MaxConns: the sockets the event loop holds, this one included (open
//     WebSockets, connections in their handshake, closing ones) past it:
//     503 with Retry-After.
//   - MaxMemory (memguard.go): over it, 503 with Retry-After.
//   - MaxConnsPerIP: the open WebSockets of the client's address (its /64
//     for IPv6) past it: 429 with Retry-After. The client address is the
//     peer's, or from X-Forwarded-For when the peer is a trusted proxy. A
//     loopback client is not counted: it is a proxy on this host (which,
//     without TrustedProxies, would otherwise cap the whole server at the
//     per-address limit) or a benchmark.
//
// Each refusal is counted by cause (fanout_upgrades_refused_total) and
// logged at most once a minute per cause, with the client address (the
// trusted proxy's X-Forwarded-For, else the peer). An upgrade on a
// connection that served plain HTTP first (a proxy's kept-alive upstream
// connection) passes the same checks (proxy.go).

// refuseCause is why an upgrade (or, for causeAcceptShed, a socket) was
// refused; the metric's cause label.
type refuseCause uint8

const (
	causeMaxConns refuseCause = iota
	causePerIP
	causeMemory
	causeOrigin
	causeBadKey
	causeAcceptShed
	// causeKeepalive: a connection that served plain HTTP asked for an
	// upgrade and could not be given back to the event loop (the server
	// stopping, out of descriptors; proxy.go). The upgrade itself then
	// meets the other causes like any.
	causeKeepalive
	numRefuseCauses
)

var refuseCauseNames = [numRefuseCauses]string{
	causeMaxConns:   "max_conns",
	causePerIP:      "per_ip",
	causeMemory:     "memory",
	causeOrigin:     "origin",
	causeBadKey:     "bad_key",
	causeAcceptShed: "accept_shed",
	causeKeepalive:  "keepalive",
}

// Refusals that do not depend on the configuration.
var (
	errBadSecKey = ws.RejectConnectionError(
		ws.RejectionStatus(400),
		ws.RejectionReason("invalid Sec-WebSocket-Key: want base64 of 16 bytes, once"),
	)
	errOriginRepeated = ws.RejectConnectionError(
		ws.RejectionStatus(400),
		ws.RejectionReason("more than one Origin header"),
	)
	errOriginForbidden = ws.RejectConnectionError(
		ws.RejectionStatus(403),
		ws.RejectionReason("origin not allowed"),
	)
	errOriginForbiddenDev = ws.RejectConnectionError(
		ws.RejectionStatus(403),
		ws.RejectionReason("origin not allowed: without --public-url or --allowed-origins only pages on localhost may connect"),
	)
)

// Defaults of the limits.
const (
	// DefaultMaxConnsPerIP is MaxConnsPerIP's default: generous, since a
	// whole office or a carrier-grade NAT may share one address.
	DefaultMaxConnsPerIP = 1000
	// fdReserveMin and fdReserveShare (percent) size the descriptors kept
	// free below RLIMIT_NOFILE: max(256, 5%).
	fdReserveMin   = 256
	fdReserveShare = 5
	// refusalLogEvery is how often each cause of refusal is logged.
	refusalLogEvery = time.Minute
)

// admission is the server's admission state.
type admission struct {
	origins  originPolicy
	proxies  trustedProxies
	maxConns int64 // 0: no limit
	perIP    int32 // 0: no limit
	// acceptCap: sockets held past it are shed at accept; 0: none.
	acceptCap int64
	fdLimit   uint64 // RLIMIT_NOFILE's soft limit, 0 when unknown
	mem       *memGuard

	held atomic.Int64 // sockets the event loop holds (onPrepare to connClosed)
	ips  ipTable

	// Config-dependent refusals, built once.
	errMaxConns, errMemory, errPerIP error
	shedResponse                     []byte

	refused [numRefuseCauses]atomic.Uint64
	logged  [numRefuseCauses]atomic.Int64 // memClock of the last log line

	// keepalive is the event loop of connections net/http gives back for
	// an upgrade (proxy.go), which then pass this admission like any.
	keepalive keepaliveLoop
}

// fdLimit reads RLIMIT_NOFILE's soft limit (Go raises it to the hard
// limit at start), 0 when unknown or unlimited.
func fdLimit() uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > math.MaxInt32 {
		return 0
	}
	return rl.Cur
}

// fdReserve is how many descriptors the defaults keep free below limit.
func fdReserve(limit uint64) uint64 {
	return max(fdReserveMin, limit/100*fdReserveShare)
}

// initAdmission builds the admission state from the configuration (New).
func (s *Server) initAdmission() error {
	a := &s.adm
	var err error
	if a.origins, err = newOriginPolicy(s.cfg.PublicURL, s.cfg.AllowedOrigins); err != nil {
		return err
	}
	if a.proxies, err = parseTrustedProxies(s.cfg.TrustedProxies); err != nil {
		return err
	}
	a.fdLimit = fdLimit()
	// A TLS connection takes three descriptors (tls.go: the client's socket
	// and both ends of a socketpair), a plain one takes one.
	perConn := uint64(1)
	if s.cfg.TLSCertFile != "" {
		perConn = 3
	}
	if l := a.fdLimit; l > 0 {
		r := fdReserve(l)
		if l > 2*r {
			a.acceptCap = int64((l - r/2) / perConn)
		} else { // a tiny limit: keep half of it
			a.acceptCap = int64(l / 2 / perConn)
		}
	}
	switch {
	case s.cfg.MaxConns > 0:
		a.maxConns = int64(s.cfg.MaxConns)
	case s.cfg.MaxConns == 0 && a.fdLimit > 0:
		r := fdReserve(a.fdLimit)
		a.maxConns = int64(a.fdLimit / 2 / perConn)
		if a.fdLimit > 2*r {
			a.maxConns = int64((a.fdLimit - r) / perConn)
		}
	}
	switch {
	case s.cfg.MaxConnsPerIP > 0:
		a.perIP = int32(min(s.cfg.MaxConnsPerIP, math.MaxInt32))
	case s.cfg.MaxConnsPerIP == 0:
		a.perIP = DefaultMaxConnsPerIP
	}
	a.ips.init()
	limit, source := s.cfg.MaxMemory, "--max-memory"
	if limit == 0 {
		limit, source = defaultMaxMemory()
	}
	a.mem = newMemGuard(max(limit, 0), source)

	retry := strconv.FormatInt(int64(max(s.cfg.RetryAfterMin.Round(time.Second)/time.Second, 1)), 10)
	retryHeader := ws.RejectionHeader(ws.HandshakeHeaderString("Retry-After: " + retry + "\r\n"))
	a.errMaxConns = ws.RejectConnectionError(ws.RejectionStatus(503), retryHeader,
		ws.RejectionReason("server at its connection limit, retry later"))
	a.errMemory = ws.RejectConnectionError(ws.RejectionStatus(503), retryHeader,
		ws.RejectionReason("server low on memory, retry later"))
	a.errPerIP = ws.RejectConnectionError(ws.RejectionStatus(429), retryHeader,
		ws.RejectionReason("too many connections from your address"))
	body := "server at its socket limit, retry later\n"
	a.shedResponse = []byte("HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + retry +
		"\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body)

	s.logAdmission()
	return nil
}

// logAdmission says at startup which limits and which origin mode apply;
// development origin mode loudly.
func (s *Server) logAdmission() {
	a := &s.adm
	if a.origins.dev {
		s.log.Warn("origin check in DEVELOPMENT mode: browsers may connect only from pages on localhost; set --public-url (or --allowed-origins) for a deployment")
	} else {
		s.log.Info("origin check", "allowed", a.origins.String())
	}
	if a.maxConns > 0 && a.acceptCap > 0 && a.maxConns > a.acceptCap {
		s.log.Warn("--max-conns exceeds what RLIMIT_NOFILE allows: sockets past the cap are shed at accept",
			"max_conns", a.maxConns, "fd_limit", a.fdLimit, "accept_cap", a.acceptCap)
	}
	s.log.Info("admission limits",
		"max_conns", a.maxConns, "fd_limit", a.fdLimit, "accept_cap", a.acceptCap,
		"max_conns_per_ip", a.perIP, "trusted_proxies", len(a.proxies),
		"max_memory", a.mem.limit, "max_memory_from", a.mem.source)
}

// accept runs in onPrepare for every accepted socket. It reports false for
// a socket over acceptCap, which it has answered 503 and closed; a socket
// it accepts is counted until connClosed calls release.
func (a *admission) accept(s *Server, nc netpoll.Connection) bool {
	n := a.held.Add(1)
	if a.acceptCap <= 0 || n <= a.acceptCap {
		return true
	}
	a.held.Add(-1)
	if f, ok := nc.(interface{ Fd() int }); ok {
		// Best effort: the socket was just accepted, its buffer is empty.
		_, _ = unix.Write(f.Fd(), a.shedResponse)
	}
	_ = nc.Close()
	a.refuse(s, causeAcceptShed, nil, "sockets", n-1, "accept_cap", a.acceptCap, "fd_limit", a.fdLimit)
	return false
}

// release forgets a socket that accept counted (connClosed).
func (a *admission) release(c *Conn) {
	a.held.Add(-1)
	if e := c.ipEntry; e != nil {
		c.ipEntry = nil
		a.ips.release(e)
	}
}

// admit decides whether an upgrade request may proceed, before any
// authentication. Cheap, static checks first; the per-address count is
// taken last, and kept (until the socket closes) only when every other
// check passed.
func (s *Server) admit(u *upgradeState) error {
	a := &s.adm
	peer := peerAddr(u.c)
	trusted := peer.IsValid() && a.proxies.contains(peer)
	// The client, for the per-address limit and the logs: X-Forwarded-For
	// only from a trusted proxy (clientAddr ignores it otherwise).
	client := a.proxies.clientAddr(peer, u.forwardedFor)
	if !validSecKey(u.head) {
		return a.refuse(s, causeBadKey, errBadSecKey, "client", client)
	}
	if u.origins > 0 {
		if u.origins > 1 {
			return a.refuse(s, causeOrigin, errOriginRepeated, "reason", "repeated Origin", "client", client)
		}
		host, proto := u.host, []byte(nil)
		if u.targetHost != nil {
			host = u.targetHost
		}
		if trusted {
			if len(u.forwardedHost) > 0 {
				host = firstListItem(u.forwardedHost)
			}
			proto = firstListItem(u.forwardedProto)
		}
		if !a.origins.allows(u.origin, host, proto) {
			err := errOriginForbidden
			if a.origins.dev {
				err = errOriginForbiddenDev
			}
			return a.refuse(s, causeOrigin, err, "origin", string(u.origin), "host", string(host), "client", client)
		}
	}
	if held := a.held.Load(); a.maxConns > 0 && held > a.maxConns {
		return a.refuse(s, causeMaxConns, a.errMaxConns, "sockets", held, "max_conns", a.maxConns, "client", client)
	}
	if a.mem.overLimit(s.trimHistory, s.restoreHistory) {
		return a.refuse(s, causeMemory, a.errMemory, "memory", a.mem.used.Load(), "max_memory", a.mem.limit)
	}
	if a.perIP > 0 && peer.IsValid() && u.c != nil {
		if client.IsLoopback() {
			return nil // this host: a proxy or a benchmark, not a remote client
		}
		e, ok := a.ips.acquire(ipKey(client), a.perIP)
		if !ok {
			return a.refuse(s, causePerIP, a.errPerIP, "client", client.String(), "max_conns_per_ip", a.perIP)
		}
		u.c.ipEntry = e
	}
	return nil
}

// refuse counts a refusal, logs it when its cause was not logged within
// refusalLogEvery, and returns err. args are extra log attributes.
func (a *admission) refuse(s *Server, cause refuseCause, err error, args ...any) error {
	n := a.refused[cause].Add(1)
	now := memClock()
	if last := a.logged[cause].Load(); (last == 0 || now-last >= int64(refusalLogEvery)) && a.logged[cause].CompareAndSwap(last, now) {
		level, msg := slog.LevelWarn, "refusing connections: "+refuseCauseNames[cause]
		switch cause {
		case causeOrigin, causeBadKey: // the client's doing, not the server's state
			level, msg = slog.LevelInfo, "refusing upgrades: "+refuseCauseNames[cause]
		}
		attrs := append([]any{"refused_total", n, "next_log_in", refusalLogEvery}, args...)
		if err != nil {
			attrs = append(attrs, "answer", err.Error())
		}
		s.log.Log(context.Background(), level, msg, attrs...)
	}
	return err
}

// fdExhaustionLogged is the memClock of the last warning that the process
// ran out of descriptors (process-wide, like netpoll's logger).
var fdExhaustionLogged atomic.Int64

// logFDExhaustion warns, at most once per refusalLogEvery, when a line of
// netpoll's log says accept failed for want of descriptors (EMFILE,
// ENFILE): netpoll then stops polling the listener and retries accept
// with a backoff of up to a second, so new clients wait in the kernel's
// backlog. It reports whether line was such a line.
func logFDExhaustion(log *slog.Logger, line string) bool {
	if !strings.Contains(line, "too many open files") {
		return false
	}
	now := memClock()
	if last := fdExhaustionLogged.Load(); (last == 0 || now-last >= int64(refusalLogEvery)) && fdExhaustionLogged.CompareAndSwap(last, now) {
		log.Warn("out of file descriptors: accepting is paused and retried; lower --max-conns or raise RLIMIT_NOFILE",
			"fd_limit", fdLimit(), "netpoll", line, "next_log_in", refusalLogEvery)
	}
	return true
}

// peerAddr is the address of the connection's peer, invalid when unknown.
func peerAddr(c *Conn) netip.Addr {
	if c == nil || c.nc == nil {
		return netip.Addr{}
	}
	if ta, ok := c.nc.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// ipKey is what MaxConnsPerIP counts by: the IPv4 address, or the /64 of
// an IPv6 one (one subscriber's allocation: counting single IPv6 addresses
// would let one client take billions).
func ipKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.Addr()
	}
	return a
}

// firstListItem is the first element of a comma-separated header value
// (X-Forwarded-Host, -Proto after several proxies), trimmed.
func firstListItem(v []byte) []byte {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		v = v[:i]
	}
	return bytes.TrimSpace(v)
}

// headerSecKey is the handshake's key header (RFC 6455 4.1).
var headerSecKey = []byte("Sec-WebSocket-Key")

// validSecKey reports whether the request head carries exactly one
// Sec-WebSocket-Key whose value is base64 of exactly 16 bytes. gobwas/ws
// only checks its length, and never passes the header to OnHeader, so the
// head is read here. A nil head (a caller without one) is not checked.
func validSecKey(head []byte) bool {
	if head == nil {
		return true
	}
	var key []byte
	n := 0
	// Skip the request line; a header line is "name: value".
	for rest := head[min(bytes.IndexByte(head, '\n')+1, len(head)):]; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 || !bytes.EqualFold(bytes.TrimSpace(line[:colon]), headerSecKey) {
			continue
		}
		key = bytes.TrimSpace(line[colon+1:])
		n++
	}
	if n != 1 || len(key) != 24 {
		return false
	}
	var dst [18]byte
	m, err := base64.StdEncoding.Strict().Decode(dst[:], key)
	return err == nil && m == 16
}

// ipTable counts open WebSockets per client address, sharded; an entry
// exists only while its count is above zero.
type ipTable struct {
	seed   maphash.Seed
	shards [ipShards]ipShard
}

const ipShards = 32

type ipShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*ipEntry
	_  [48]byte // keep shards on separate cache lines
}

// ipEntry is one address's count; a Conn that counts in it points to it
// (Conn.ipEntry), so release needs no lookup of the address.
type ipEntry struct {
	addr netip.Addr
	n    int32
}

func (t *ipTable) init() {
	t.seed = maphash.MakeSeed()
	for i := range t.shards {
		t.shards[i].m = make(map[netip.Addr]*ipEntry)
	}
}

func (t *ipTable) shard(a netip.Addr) *ipShard {
	b := a.As16()
	return &t.shards[maphash.Bytes(t.seed, b[:])%ipShards]
}

// acquire counts one more connection for a, unless a has max already.
func (t *ipTable) acquire(a netip.Addr, max int32) (*ipEntry, bool) {
	sh := t.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e := sh.m[a]
	if e == nil {
		e = &ipEntry{addr: a}
		sh.m[a] = e
	}
	if e.n >= max {
		if e.n == 0 {
			delete(sh.m, a)
		}
		return nil, false
	}
	e.n++
	return e, true
}

// release uncounts a connection of e, deleting e at zero.
func (t *ipTable) release(e *ipEntry) {
	sh := t.shard(e.addr)
	sh.mu.Lock()
	e.n--
	if e.n <= 0 {
		delete(sh.m, e.addr)
	}
	sh.mu.Unlock()
}

// len reports how many addresses hold connections.
func (t *ipTable) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// count reports a's connections.
func (t *ipTable) count(a netip.Addr) int {
	sh := t.shard(a)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.m[a]; e != nil {
		return int(e.n)
	}
	return 0
}

// trimHistory and restoreHistory are the memory guard's hands on history.
func (s *Server) trimHistory() {
	held, ok := s.hub.TrimHistory(0.5)
	if ok {
		s.log.Warn("memory pressure: history budget halved", "history_bytes", held,
			"memory", s.adm.mem.used.Load(), "max_memory", s.adm.mem.limit)
	}
}

func (s *Server) restoreHistory() {
	if s.hub.RestoreHistory() {
		s.log.Info("memory pressure over: history budget restored", "memory", s.adm.mem.used.Load())
	}
}

// registerAdmissionMetrics adds the admission counters and gauges to the
// server's registry (newMetricsHandler).
func (s *Server) registerAdmissionMetrics(reg *prometheus.Registry) {
	a := &s.adm
	refused := prometheus.NewDesc("fanout_upgrades_refused_total",
		"Upgrade requests refused, by cause: admission control (max_conns, per_ip, memory, origin, bad_key, keepalive; "+
			"accept_shed: sockets closed at accept near RLIMIT_NOFILE or past the TLS front's cap) and the rest (wrong_path, draining, bad_request, "+
			"head_too_large, bad_subprotocol, unauthorized).",
		[]string{"cause"}, nil)
	st := &s.stats
	reg.MustRegister(collectorFunc{desc: refused, collect: func(ch chan<- prometheus.Metric) {
		for i := range a.refused {
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(a.refused[i].Load()), refuseCauseNames[i])
		}
		for i := range st.upgradeFailures {
			ch <- prometheus.MustNewConstMetric(refused, prometheus.CounterValue, float64(st.upgradeFailures[i].Load()), upgradeFailureNames[i])
		}
	}})
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "fanout", Name: name, Help: help}, f))
	}
	gauge("sockets", "Sockets the event loop holds (WebSockets, handshakes, closing), counted against --max-conns.",
		func() float64 { return float64(a.held.Load()) })
	gauge("max_conns", "The --max-conns limit (0: none).", func() float64 { return float64(a.maxConns) })
	gauge("fd_limit", "RLIMIT_NOFILE's soft limit (0: unknown).", func() float64 { return float64(a.fdLimit) })
	gauge("client_addresses", "Client addresses (IPv6: /64s) with open WebSockets, counted against --max-conns-per-ip.",
		func() float64 { return float64(a.ips.len()) })
	gauge("memory_bytes", "Memory the Go runtime holds from the OS, as compared with --max-memory.", func() float64 {
		return float64(a.mem.current(s.trimHistory, s.restoreHistory))
	})
	gauge("max_memory_bytes", "The --max-memory limit (0: none).", func() float64 { return float64(a.mem.limit) })
}
