package engine

import (
	"context"
	"crypto/rand"
	"encoding/base32"

	"fmt"

	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bytedance/gopkg/util/gopool"
	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/engine/deflate"
	"github.com/fanout-dev/fanout/engine/hub"
	"golang.org/x/sys/unix"
)

// Server is a fanout node: one TCP port whose connections are owned by a
// netpoll event loop. Requests for /ws are upgraded inside the loop; every
// other request is handed to net/http.
type Server struct {
	cfg Config
	log *slog.Logger
	hub *hub.Hub
	adm admission // admission.go: origin, limits, memory
	// compressor compresses replies and echoes for connections that
	// negotiated permessage-deflate (the hub has its own for publications).
	compressor deflate.Compressor
	// authn is authentication (authn.go): token keys, per-user limits.
	authn *authenticator

	evl netpoll.EventLoop
	ln  netpoll.Listener
	// stdln is the listening socket netpoll's listener was made from
	// (it holds the socket too; stopAccepting).
	stdln    net.Listener
	wpoll    *writePoller
	wheel    *timingWheel
	httpSrv  *http.Server
	httpLn   *handoffListener
	adminSrv *http.Server
	adminLn  net.Listener
	// tls terminates TLS in front of the event loop when the public port
	// speaks TLS (tls.go); nil otherwise.
	tls      *tlsFront
	registry registry
	stats    stats
	metrics  http.Handler

	// reassembly is the bytes all connections hold for messages not fully
	// arrived, against MaxReassemblyBytes.
	reassembly atomic.Int64
	started    atomic.Bool
	draining   atomic.Bool // Shutdown began: not ready, upgrades refused
	// listenerClosed is set when Shutdown closes the listener, after the
	// drain delay; from then on an accepted socket is not served.
	listenerClosed atomic.Bool
	closed         chan struct{}
	wg             sync.WaitGroup

	closeOnce sync.Once
}

// configureNetpoll tunes netpoll once per process for many mostly idle
// sockets instead of RPC: see doc.go ("Tuning netpoll").
var configureNetpoll sync.Once

// readBufferSize is netpoll's BufferSize: the first input node of a
// connection, the most one read takes from its socket (before netpoll
// doubles it) and the size of later nodes. It is larger than netpoll's page
// size on purpose: when a Release leaves the input empty, netpoll then swaps
// the tail node for an empty one, so an idle connection keeps no input
// buffer at all (at or below a page it keeps the node). Reads of 16 KiB take
// many frames per syscall; a callback on the poller (runCallback) cannot
// grow them, since netpoll sizes later reads by what piles up between
// releases, and nothing piles up when it is consumed at once.
const readBufferSize = 16 << 10

func tuneNetpoll(log *slog.Logger) {
	configureNetpoll.Do(func() {
		_ = netpoll.Configure(netpoll.Config{
			PollerNum:    max(1, runtime.GOMAXPROCS(0)/2),
			BufferSize:   readBufferSize,
			LoggerOutput: slogWriter{log},
			Runner:       runCallback,
		})
	})
}

// runCallback is netpoll's runner for connection callbacks (process-wide).
// A busy open WebSocket's onRequest (busyWindow) runs right on the poller
// goroutine: handing every readable event to a pool goroutine (a goroutine
// start and a scheduler wake-up per message) cost more than reading and
// answering the message. It does not for other connections: netpoll only drops a
// connection's emptied input node when its Release runs off the poller, so
// a connection served on the poller keeps up to readBufferSize until the
// sweeper trims it (Conn.trimInput); a connection that sends now and then
// (a subscribe after connecting, a chat line) is served by the pool and
// keeps nothing. The handshake always goes to the pool: detaching a socket
// for net/http must not happen on the poller. Foreign connections (another
// netpoll user in the same process) keep netpoll's default.
//
// What runs on the poller must never wait for the poller: it never closes a
// socket with netpoll's Close (closeSocket shuts it down instead), never
// waits in netpoll's Flush (a full socket is left to the write poller)
// and never blocks: a publish to a backlogged channel is answered
// rate_limited (hub.TryPublish) instead of waiting for it.
func runCallback(ctx context.Context, f func()) {
	if c, ok := ctx.(*Conn); ok && c.busy.Load() && c.state.Load() >= stateOpen {
		f() // onRequest recovers its own panics: see there
		return
	}
	gopool.CtxGo(ctx, f)
}

// busyWindow and busyStreak define a busy connection (runCallback): its last
// busyStreak reads came less than busyWindow apart, i.e. it sends about 20
// messages a second or more. The bound is what a busy connection costs: it
// keeps an input node (readBufferSize) until the sweeper trims it, so 100,000
// chat users sending a line a second must not count as busy (1.6 GB), while
// the connections for which a hand-off per message matters do.
const (
	busyWindow = 50 * time.Millisecond
	busyStreak = 2
)

// trimAfter is how long a connection served on the poller stays quiet
// before the sweeper drops its input node.
const trimAfter = time.Second

// slogWriter routes netpoll's own log lines to slog at debug level: netpoll
// logs ordinary events (a peer resetting a socket it was closing) as errors.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if !logFDExhaustion(w.log, line) { // admission.go: out of descriptors is a warning
		w.log.Debug(line, "component", "netpoll")
	}
	return len(p), nil
}

// New builds a server from cfg (zero fields take their defaults). It does
// not listen until Start.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		closed:     make(chan struct{}),
		compressor: deflate.Compressor{MinBytes: cfg.CompressionMinBytes, Level: cfg.CompressionLevel},
	}
	if err := s.initAdmission(); err != nil {
		return nil, err
	}
	authn, err := newAuthenticator(s)
	if err != nil {
		return nil, err
	}
	s.authn = authn
	s.registry.init()
	s.wheel = newTimingWheel(s.sweepInterval(),
		max(cfg.IdleTimeout/2, cfg.HandshakeTimeout, cfg.FrameTimeout, cfg.CloseTimeout, cfg.WriteTimeout, trimAfter),
		s.now())

	maxReply := cfg.MaxReplyBytes
	if maxReply == 0 { // room in the write queue for what is queued around a reply
		maxReply = min(hub.DefaultMaxReplyBytes, cfg.WriteQueueBytes/4*3)
	}
	h, err := hub.New(hub.Config{
		HistorySize:         cfg.HistorySize,
		HistoryTTL:          cfg.HistoryTTL,
		HistoryBytes:        cfg.HistoryBytes,
		HistoryChannels:     cfg.HistoryChannels,
		MaxPublicationBytes: cfg.MaxMessageBytes,
		MaxReplyBytes:       maxReply,
		Compressor:          s.compressor,
		Broker:              cfg.Broker,
		Logger:              cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("engine: hub: %w", err)
	}
	s.hub = h
	s.metrics = s.newMetricsHandler()
	return s, nil
}

// Hub returns the server's pub/sub hub.
func (s *Server) Hub() *hub.Hub { return s.hub }

// Start listens on cfg.Addr and serves in the background until Shutdown or
// Close.
func (s *Server) Start() error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrAlreadyStarted
	}
	select {
	case <-s.closed:
		return ErrServerClosed
	default:
	}
	tuneNetpoll(s.log)
	wp, err := newWritePoller()
	if err != nil {
		return err
	}
	lc := net.ListenConfig{Control: func(network, address string, rc syscall.RawConn) error {
		if !s.cfg.ReusePort {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	stdln, err := lc.Listen(context.Background(), "tcp", s.cfg.Addr)
	if err != nil {
		wp.close(false)
		return fmt.Errorf("engine: listen: %w", err)
	}
	var ln netpoll.Listener
	if s.cfg.TLSCertFile != "" || s.cfg.TLSKeyFile != "" {
		// The public port speaks TLS only: the front terminates it and
		// hands the event loop plaintext sockets (tls.go).
		var front *tlsFront
		if front, err = s.newTLSFront(stdln); err == nil {
			s.tls, ln = front, front.pipes
		}
	} else {
		ln, err = netpoll.ConvertListener(stdln)
	}
	if err != nil {
		stdln.Close()
		wp.close(false)
		return fmt.Errorf("engine: listen: %w", err)
	}
	s.ln, s.stdln = ln, stdln
	s.httpLn = newHandoffListener(ln.Addr())
	s.httpSrv = &http.Server{
		Handler:           s.httpHandler(),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		// A whole request, body included: a client trickling a body must
		// not hold a goroutine and a descriptor for as long as it likes.
		ReadTimeout:    s.cfg.HTTPReadTimeout,
		MaxHeaderBytes: maxRequestHeaderBytes,
		IdleTimeout:    s.cfg.IdleTimeout,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	evl, err := netpoll.NewEventLoop(s.onRequest,
		netpoll.WithOnPrepare(s.onPrepare),
	)
	if err != nil {
		ln.Close()
		wp.close(false)
		return fmt.Errorf("engine: event loop: %w", err)
	}
	s.evl = evl
	s.wpoll = wp
	s.goFunc(wp.run)
	if s.cfg.AdminAddr != "" {
		aln, err := net.Listen("tcp", s.cfg.AdminAddr)
		if err != nil {
			ln.Close()
			wp.close(false)
			return fmt.Errorf("engine: admin listen: %w", err)
		}
		s.adminLn = aln
		s.adminSrv = &http.Server{
			Handler:           s.adminHandler(),
			ReadHeaderTimeout: s.cfg.HandshakeTimeout,
			ReadTimeout:       s.cfg.HTTPReadTimeout,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		}
		s.goFunc(func() { _ = s.adminSrv.Serve(aln) })
	}
	s.goFunc(func() { _ = s.httpSrv.Serve(s.httpLn) })
	s.goFunc(func() {
		if err := evl.Serve(ln); err != nil && !s.draining.Load() {
			s.log.Error("event loop stopped", "err", err)
		}
	})
	s.goFunc(s.sweep)
	if s.tls != nil {
		s.goFunc(s.tls.acceptLoop)
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "tls", s.tls != nil, "echo", s.cfg.Echo)
	return nil
}

// goFunc starts a server goroutine tracked by the server's WaitGroup.
func (s *Server) goFunc(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

// Addr is the address the server listens on (valid after Start).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// now is the clock of every deadline (unix nanoseconds). It is read fresh,
// once per read callback and on the rarer write-side events, never per
// message: a clock advanced by the sweeper stamped activity with the time
// of the sweeper's last tick, so a sweeper delayed past a timeout (a starved
// process) then saw connections that were reading or writing all along as
// idle or blocked, and dropped them mid-frame (TestStress, 30 minutes).
func (s *Server) now() int64 { return time.Now().UnixNano() }

// AdminAddr is the address of the admin port (valid after Start), nil
// without Config.AdminAddr.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

// onPrepare runs in the poller for every accepted socket, before it is
// registered: it creates the connection's state and arms the handshake
// deadline.
func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	if s.listenerClosed.Load() {
		_ = nc.Close()
		return context.Background()
	}
	if !s.adm.accept(s, nc) { // near RLIMIT_NOFILE: answered 503 and closed
		return context.Background()
	}
	c := &Conn{Context: context.Background(), srv: s, nc: nc}
	if f, ok := nc.(interface{ Fd() int }); ok {
		c.fd = f.Fd()
		if n := s.cfg.SendBufferBytes; n > 0 {
			_ = unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, n)
		}
	}
	if l, ok := nc.(interface{ SetInputLimit(int) }); ok {
		l.SetInputLimit(s.cfg.ReadAheadBytes)
	}
	c.lastActive.Store(s.now())
	_ = nc.AddCloseCallback(func(netpoll.Connection) error {
		c.onClosed()
		return nil
	})
	s.registry.add(c)
	s.wheel.scheduleBy(c, c.lastActive.Load()+s.cfg.HandshakeTimeout.Nanoseconds())
	s.stats.accepted.Add(1)
	return c
}

// connClosed runs once per connection after its socket closed.
func (s *Server) connClosed(c *Conn, prev uint32) {
	s.registry.remove(c)
	s.wheel.remove(c)
	s.adm.release(c)
	if prev == stateOpen || prev == stateClosing {
		s.stats.open.Add(-1)
		for _, ch := range c.subs {
			_ = s.hub.Unsubscribe(c, ch)
		}
		c.subs = nil
	}
}

// nextClientID returns a new client id: 16 characters of base32 from 80
// random bits. Ids are sent to everyone who shares a channel, so they must
// not be guessable (sequential ids under a shared prefix let one client name
// and target the next ones).
func (s *Server) nextClientID() string {
	var b [10]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return clientIDEncoding.EncodeToString(b[:])
}

// clientIDEncoding is lower-case base32 without padding: ids are safe in
// URLs, logs and CSS, and 10 bytes make exactly 16 characters.
var clientIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Shutdown drains the server: it marks /readyz not ready and refuses new
// upgrades (503, Retry-After) for DrainDelay while serving the rest, then
// stops accepting, sends every WebSocket 1012 with a retry_after_ms hint
// (closeRestart), and waits for the connections to close. When ctx has no
// deadline, DrainDelay+DrainTimeout applies. On timeout the remaining
// connections are dropped and ctx.Err() returned.
func (s *Server) Shutdown(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.DrainDelay+s.cfg.DrainTimeout)
		defer cancel()
	}
	if !s.draining.CompareAndSwap(false, true) {
		<-s.closed
		return nil
	}
	// The drain delay: /readyz says 503 and new upgrades are refused (503,
	// Retry-After) while everything else is still served, so that a load
	// balancer takes the node out before its listener goes away.
	if d := s.cfg.DrainDelay; d > 0 {
		s.log.Info("draining: not ready, listener open", "delay", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	s.stopAccepting()
	var batch []*Conn
	for i := range s.registry.shards {
		batch = s.registry.shards[i].snapshot(batch[:0])
		for _, c := range batch {
			// A connection still in its handshake is refused 503, or
			// closed 1012 if it completes (closeIfDraining); one that
			// stalls meets HandshakeTimeout.
			if c.state.Load() == stateOpen {
				s.closeRestart(c)
			}
		}
	}
	var err error
	if s.httpSrv != nil {
		err = s.httpSrv.Shutdown(ctx)
	}
	if err == nil {
		err = s.waitEmpty(ctx)
	}
	s.stop()
	return err
}

// closeRestart closes c 1012 with a retry_after_ms hint spread between
// RetryAfterMin and RetryAfterMin+RetryAfterSpread, so that clients do not
// all come back at once.
func (s *Server) closeRestart(c *Conn) {
	ms := s.cfg.RetryAfterMin.Milliseconds() + mrand.Int64N(s.cfg.RetryAfterSpread.Milliseconds()+1)
	c.CloseWith(&CloseError{CloseRestart, "retry_after_ms=" + strconv.FormatInt(ms, 10)})
}

// closeIfDraining closes a connection that finished its upgrade after
// Shutdown began (it passed the draining check before the flag was set, and
// may have missed Shutdown's walk over the open connections): it gets 1012
// like every other.
func (s *Server) closeIfDraining(c *Conn) {
	if s.draining.Load() {
		s.closeRestart(c)
	}
}

// stopAccepting closes the listening socket while the event loop goes on
// serving the connections it has. Idempotent.
//
// netpoll's listener must not simply be closed here: its descriptor number
// is registered in netpoll's epoll set, shared by every event loop of the
// process, and netpoll removes it by number (EPOLL_CTL_DEL) when the event
// loop shuts down, later. A number closed now is free for the next socket
// the process opens (a connection of another event loop in this process,
// the keep-alive loop, the TLS front's socketpairs), and that DEL would then
// remove the new socket's registration instead: it would never be read
// again (found with two servers in one process, each draining while the
// other served). So /dev/null takes the number over until netpoll closes
// it, and the socket itself closes with the net.Listener that also holds
// it (its last descriptor: the kernel stops accepting, and the epoll
// registration of the socket goes with it).
func (s *Server) stopAccepting() {
	if s.listenerClosed.Swap(true) || s.ln == nil {
		return
	}
	if s.tls != nil {
		// The pipes listener is the front's own and safe to close
		// (tls.go); the front stops accepting at the TCP socket itself.
		_ = s.ln.Close()
		return
	}
	if fl, ok := s.ln.(interface{ Fd() int }); ok {
		if null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			if err := unix.Dup3(null, fl.Fd(), unix.O_CLOEXEC); err != nil {
				s.log.Warn("listener: could not keep its descriptor number", "err", err)
			}
			_ = unix.Close(null)
		}
	}
	if s.stdln != nil {
		_ = s.stdln.Close()
	}
}

// waitEmpty polls until every connection has closed or ctx is done.
func (s *Server) waitEmpty(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.registry.len() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Close stops the server at once: connections are dropped without a close
// frame. Idempotent.
func (s *Server) Close() error {
	s.draining.Store(true)
	s.stopAccepting()
	if s.httpSrv != nil {
		_ = s.httpSrv.Close()
	}
	s.stop()
	return nil
}

// stop drops what is left and releases the server's goroutines and hub.
func (s *Server) stop() {
	s.closeOnce.Do(func() {
		var batch []*Conn
		for i := range s.registry.shards {
			batch = s.registry.shards[i].snapshot(batch[:0])
			for _, c := range batch {
				c.closeSocket()
			}
		}
		// netpoll's own shutdown closes what is left with Close, which must
		// not race a callback running on the poller (see closeSocket): let
		// the sockets shut down above close through the poller first.
		deadline := time.Now().Add(time.Second)
		for s.registry.len() > 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if s.httpLn != nil {
			_ = s.httpLn.Close()
		}
		if s.adminSrv != nil {
			_ = s.adminSrv.Close()
		}
		if s.evl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = s.evl.Shutdown(ctx)
			cancel()
		}
		if s.tls != nil {
			s.tls.close()
		}
		close(s.closed)
		if s.wpoll != nil {
			s.wpoll.close(true)
		}
		_ = s.hub.Close()
	})
	// Every server goroutine ends once s.closed is closed and the listeners
	// are; a hard deadline keeps a bug in one of them from hanging the
	// process's exit.
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(stopDeadline):
		s.log.Error("server goroutines did not stop in time", "after", stopDeadline)
	}
}

// stopDeadline bounds how long stop waits for the server's goroutines.
const stopDeadline = 5 * time.Second

// registry holds every accepted connection, sharded to keep accept and
// close off one lock. Shutdown and the sweeper walk it.
type registry struct {
	shards [64]registryShard
}

type registryShard struct {
	mu    sync.Mutex
	conns map[*Conn]struct{}
	_     [40]byte // keep shards on separate cache lines
}

func (r *registry) init() {
	for i := range r.shards {
		r.shards[i].conns = make(map[*Conn]struct{})
	}
}

func (r *registry) shard(c *Conn) *registryShard {
	return &r.shards[uint(c.fd)%uint(len(r.shards))]
}

func (r *registry) add(c *Conn) {
	sh := r.shard(c)
	sh.mu.Lock()
	sh.conns[c] = struct{}{}
	sh.mu.Unlock()
}

func (r *registry) remove(c *Conn) {
	sh := r.shard(c)
	sh.mu.Lock()
	delete(sh.conns, c)
	sh.mu.Unlock()
}

func (r *registry) len() int {
	n := 0
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		n += len(sh.conns)
		sh.mu.Unlock()
	}
	return n
}

func (sh *registryShard) snapshot(dst []*Conn) []*Conn {
	sh.mu.Lock()
	for c := range sh.conns {
		dst = append(dst, c)
	}
	sh.mu.Unlock()
	return dst
}

// handoffListener is the net.Listener net/http serves: the event loop
// pushes it the connections whose first request is ordinary HTTP.
type handoffListener struct {
	addr      net.Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newHandoffListener(addr net.Addr) *handoffListener {
	return &handoffListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *handoffListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *handoffListener) Addr() net.Addr { return l.addr }

// detachHTTP lends c to net/http. netpoll's connection cannot serve
// net/http directly (net/http aborts a background read by moving the read
// deadline from another goroutine, which netpoll neither supports nor
// notices), so the socket is detached from the poller instead: c.httpHead
// holds the bytes already read, and onClosed, which runs once netpoll has let
// go of the descriptor, turns it into an ordinary net.Conn for net/http.
// Called by onRequest in the handshake state, which never runs on the poller
// itself (runCallback): netpoll finishes a detach from the goroutine that
// ran the callback, and on the poller that would wait for the poller.
func (s *Server) detachHTTP(c *Conn) {
	if !c.state.CompareAndSwap(stateHandshake, stateHTTP) {
		return
	}
	d, ok := c.nc.(interface{ Detach() error })
	if !ok {
		c.closeSocket()
		return
	}
	_ = d.Detach()
}

// handoffHTTP turns a detached socket into a net.Conn and gives it to
// net/http. Called from onClosed, after netpoll removed fd from its poller.
// remote is the client's address (behind the TLS front, fd is a socketpair
// whose own peer address names nothing).
func (s *Server) handoffHTTP(fd int, head []byte, remote net.Addr) {
	f := os.NewFile(uintptr(fd), "http")
	nc, err := net.FileConn(f) // duplicates fd
	_ = f.Close()
	if err != nil {
		s.log.Warn("http handoff failed", "err", err)
		return
	}
	hc := &prefixConn{Conn: nc, head: head}
	if s.tls != nil {
		hc.remote = remote
	}
	select {
	case s.httpLn.conns <- hc:
		s.stats.httpConns.Add(1)
	case <-s.httpLn.done:
		_ = nc.Close()
	}
}

// prefixConn replays the bytes netpoll had already read before the
// connection's own.
type prefixConn struct {
	net.Conn
	head   []byte
	remote net.Addr // the TLS client's address, nil for a plain socket
}

func (p *prefixConn) RemoteAddr() net.Addr {
	if p.remote != nil {
		return p.remote
	}
	return p.Conn.RemoteAddr()
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}
