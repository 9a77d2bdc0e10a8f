package engine

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TLS (Config.TLSCertFile, TLSKeyFile): the public port then speaks TLS
// only, https:// and wss:// on the same port.
//
// netpoll has no TLS and the engine writes frames with raw non-blocking
// writev on the connection's descriptor, which cannot carry TLS records. So
// TLS is terminated in front of the event loop, in the same process (the
// tlsFront): a crypto/tls listener owns the public port; for each client it
// runs the handshake on a goroutine and then pipes plaintext between the
// TLS connection and one end of a socketpair (AF_UNIX, SOCK_STREAM). The
// other end is handed to netpoll as if it had been accepted (pipeListener:
// an eventfd netpoll polls as its listener, plus a queue), so the event
// loop, the upgrade, the frame reader, the write path with its queue bound
// and write poller, net/http's handoff, the sweeper and the close protocol
// run exactly as for a plain socket. With TLS off none of this exists: the
// plaintext path does no extra work at all.
//
// The client's real address travels with the accepted connection:
// pipeConn.RemoteAddr is the client's TCP address, which netpoll copies
// into its connection, so nc.RemoteAddr() (per-IP limits, logs) and
// net/http's Request.RemoteAddr (handoffHTTP) name the client in both
// modes. Every connection of a TLS server is a TLS connection (the port
// speaks nothing else), so no per-connection flag is needed either.
//
// Per connection, the handshake runs on a goroutine of its own (bounded by
// HandshakeTimeout), which hands the engine its end of the socketpair,
// starts the two goroutines that stay for the connection's life and exits
// (the handshake grows a stack that those two then do not carry):
//   - upstream (client to engine) waits for the client's socket to be
//     readable without holding a buffer, reads and
//     decrypts what is there with the socket in no-wait mode (a read that
//     would block returns errWouldBlock, which crypto/tls treats as
//     temporary: it keeps a partial record for the next read) and writes the
//     plaintext to the socketpair; the pooled buffer goes back as soon as
//     the socket is drained.
//   - downstream (engine to client) waits for the socketpair to be
//     readable, reads what the engine wrote (one pooled 16 KiB buffer, held
//     only while bytes flow) and encrypts it to the client. A client that
//     takes nothing for WriteTimeout is dropped.
//
// So an idle TLS connection holds two parked goroutines, crypto/tls's
// state, a TCP socket and the two ends of a socketpair (three descriptors
// instead of one), and no I/O buffer of ours. Backpressure is preserved:
// a client that does not read fills its TCP socket, downstream blocks, the
// socketpair fills, and the engine's own writev sees a full socket (its
// WriteQueueBytes and WriteTimeout then apply as for a plain client); a
// client that sends faster than the engine reads (ReadAheadBytes) fills the
// socketpair and upstream stops reading its TCP socket.
//
// Closing: when the engine shuts down its sending side (after its close
// frame, or when it drops the socket) downstream reads EOF, sends TLS
// close_notify and a FIN, and gives the client CloseTimeout to close its
// side; when the client closes (close_notify or FIN) upstream shuts down
// the socketpair's sending side, which the event loop sees as a hang-up.
// Any error on either side tears everything down at once. The handshake is
// bounded by HandshakeTimeout (after which the engine's own HandshakeTimeout
// for the HTTP request starts).

// tlsBufSize is the pooled buffer of one direction while bytes flow: one
// maximal TLS record of plaintext.
const tlsBufSize = 16 << 10

var tlsBufPool = sync.Pool{New: func() any { b := make([]byte, tlsBufSize); return &b }}

// tlsFrontStopWait bounds how long stop waits for the front's connection
// goroutines once their sockets are closed.
const tlsFrontStopWait = 2 * time.Second

var errTLSNotConfigured = errors.New("engine: TLS is not configured (Config.TLSCertFile, TLSKeyFile) or the server has not started")

// tlsFront terminates TLS on the public port and feeds plaintext to the
// event loop through pipeListener.
type tlsFront struct {
	s     *Server
	ln    net.Listener // the public TCP port
	conf  *tls.Config
	cert  atomic.Pointer[tls.Certificate]
	pipes *pipeListener

	mu     sync.Mutex
	live   map[*tlsPipe]struct{} // every connection not torn down yet
	closed bool
	wg     sync.WaitGroup // connection goroutines

	handshakes       atomic.Uint64
	handshakeErrors  atomic.Uint64
	plaintextRefused atomic.Uint64
	// shed counts clients closed at accept because the front held
	// maxLive connections.
	shed atomic.Uint64
	// maxLive bounds the connections the front holds, handshakes
	// included: admission's accept cap (RLIMIT_NOFILE less a reserve, by
	// three descriptors per TLS connection), so that a flood of TLS
	// handshakes cannot take the descriptors health checks and the admin
	// port need before the engine ever sees it. 0: none.
	maxLive int
}

// newTLSConfig is the server's TLS configuration: TLS 1.2 and 1.3 only,
// forward-secret AEAD suites for 1.2 (1.3's are all fine and fixed),
// HTTP/1.1 as the only ALPN protocol (an h2 connection could not be
// upgraded to a WebSocket by this server), and the certificate from cert,
// read at each handshake so that a reload applies to the next one.
func newTLSConfig(cert *atomic.Pointer[tls.Certificate]) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
			tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return cert.Load(), nil
		},
	}
}

// loadCertificate reads a PEM certificate chain and its key.
func loadCertificate(certFile, keyFile string) (*tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("both a certificate and a key file are needed")
	}
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// newTLSFront takes over ln, the public TCP port, and returns the listener
// netpoll serves. The certificate is loaded first: a server whose
// certificate cannot be read does not start.
func (s *Server) newTLSFront(ln net.Listener) (*tlsFront, error) {
	cert, err := loadCertificate(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pl, err := newPipeListener(ln.Addr())
	if err != nil {
		return nil, err
	}
	f := &tlsFront{s: s, ln: ln, pipes: pl, live: make(map[*tlsPipe]struct{}), maxLive: int(s.adm.acceptCap)}
	f.cert.Store(cert)
	f.conf = newTLSConfig(&f.cert)
	pl.front = f
	f.logCert("tls certificate loaded", cert)
	return f, nil
}

func (f *tlsFront) logCert(msg string, c *tls.Certificate) {
	if c.Leaf == nil {
		f.s.log.Info(msg)
		return
	}
	f.s.log.Info(msg, "subject", c.Leaf.Subject.CommonName, "dns", c.Leaf.DNSNames,
		"not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	if time.Now().After(c.Leaf.NotAfter) {
		f.s.log.Warn("tls certificate has expired", "not_after", c.Leaf.NotAfter)
	}
}

// ReloadTLS reads Config.TLSCertFile and TLSKeyFile again; new handshakes
// get the new certificate, established connections keep theirs. On error
// (a missing, unreadable or mismatched file) the previous certificate stays
// in use, the error is logged and returned. The command calls it on SIGHUP.
// Valid after Start on a server with TLS configured.
func (s *Server) ReloadTLS() error {
	f := s.tls
	if f == nil {
		return errTLSNotConfigured
	}
	cert, err := loadCertificate(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
	if err != nil {
		s.log.Error("tls certificate reload failed; keeping the previous certificate", "err", err,
			"cert", s.cfg.TLSCertFile, "key", s.cfg.TLSKeyFile)
		return fmt.Errorf("engine: tls reload: %w", err)
	}
	f.cert.Store(cert)
	f.logCert("tls certificate reloaded", cert)
	return nil
}

// acceptLoop accepts clients on the public port until it is closed.
func (f *tlsFront) acceptLoop() {
	var delay time.Duration
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, most likely: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			f.s.log.Warn("tls accept failed; retrying", "err", err, "in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc, ok := nc.(*net.TCPConn)
		if !ok {
			_ = nc.Close()
			continue
		}
		p, err := f.newPipe(tc)
		if err != nil {
			if err == errFrontFull {
				// No TLS yet, so no 503 can be said: close at once,
				// before spending a goroutine and a handshake.
				_ = tc.SetLinger(0)
				f.logShed()
			}
			_ = tc.Close()
			continue
		}
		go p.handshake()
	}
}

// newPipe registers a connection; it fails once the front is closed.
func (f *tlsFront) newPipe(tc *net.TCPConn) (*tlsPipe, error) {
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	p := &tlsPipe{f: f, raw: tc}
	p.side = tcpSide{TCPConn: tc, rc: rc, writeTimeout: f.s.cfg.WriteTimeout}
	p.tc = tls.Server(&p.side, f.conf)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, net.ErrClosed
	}
	if f.maxLive > 0 && len(f.live) >= f.maxLive {
		return nil, errFrontFull
	}
	f.live[p] = struct{}{}
	p.refs.Store(1)
	f.wg.Add(1)
	return p, nil
}

var errFrontFull = errors.New("tls front: connection cap reached")

// logShed counts a client shed at accept (fanout_tls_shed_total, and with
// every other refusal in fanout_upgrades_refused_total{cause="accept_shed"},
// logged there at most once a minute).
func (f *tlsFront) logShed() {
	f.shed.Add(1)
	_ = f.s.adm.refuse(f.s, causeAcceptShed, nil, "tls_front_cap", f.maxLive)
}

// liveConns is the number of connections the front holds (tests).
func (f *tlsFront) liveConns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.live)
}

// closeListener stops accepting: the public port closes, and connections
// whose handshake completes from now on are not served.
func (f *tlsFront) closeListener() {
	_ = f.ln.Close()
}

// close tears down every connection the front still holds and waits
// (boundedly) for their goroutines. Called by stop, after the event loop
// let go of its sockets.
func (f *tlsFront) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	f.closed = true
	ps := make([]*tlsPipe, 0, len(f.live))
	for p := range f.live {
		ps = append(ps, p)
	}
	f.mu.Unlock()
	for _, p := range ps {
		p.teardown()
	}
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(tlsFrontStopWait):
		f.s.log.Error("tls connection goroutines did not stop in time", "after", tlsFrontStopWait)
	}
	f.pipes.release()
}

// tlsPipe is one TLS client and its socketpair to the event loop.
type tlsPipe struct {
	f    *tlsFront
	raw  *net.TCPConn
	side tcpSide // raw as crypto/tls sees it
	tc   *tls.Conn
	// pair is the front's end of the socketpair (nil until the handshake
	// completed); the engine's end belongs to netpoll.
	pair   *os.File
	pairRC syscall.RawConn

	refs     atomic.Int32 // running goroutines; the last one tears down
	tornDown atomic.Bool
}

// done is called by each of the connection's goroutines as it ends.
func (p *tlsPipe) done() {
	if p.refs.Add(-1) == 0 {
		p.teardown()
		p.f.wg.Done()
	}
}

// teardown closes both sockets at once (the client's gets a FIN, or a
// reset with unread input; the engine sees a hang-up) and forgets the
// connection. Idempotent, never blocks; the goroutines blocked on either
// socket return.
func (p *tlsPipe) teardown() {
	if !p.tornDown.CompareAndSwap(false, true) {
		return
	}
	_ = p.raw.Close()
	p.f.mu.Lock()
	pair := p.pair
	delete(p.f.live, p)
	p.f.mu.Unlock()
	if pair != nil {
		_ = pair.Close()
	}
}

// handshake runs the TLS handshake and hands the engine its end of a new
// socketpair, then starts upstream and downstream and ends: the handshake
// grows its goroutine's stack (key exchange, signature), and the two
// goroutines that stay for the connection's life start with small ones.
func (p *tlsPipe) handshake() {
	handedOver := false
	defer func() {
		if !handedOver {
			p.done()
		}
	}()
	s := p.f.s
	_ = p.raw.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err := p.tc.Handshake(); err != nil {
		p.f.handshakeErrors.Add(1)
		if p.refusePlaintext(err) {
			return
		}
		s.log.Debug("tls handshake failed", "remote", p.raw.RemoteAddr().String(), "err", err)
		return
	}
	p.f.handshakes.Add(1)
	_ = p.raw.SetDeadline(time.Time{})
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		s.log.Warn("tls: socketpair failed; connection dropped", "err", err)
		return
	}
	pair := os.NewFile(uintptr(fds[0]), "tls-pipe") // non-blocking: Go's poller
	rc, err := pair.SyscallConn()
	if err != nil {
		_ = pair.Close()
		_ = unix.Close(fds[1])
		return
	}
	p.f.mu.Lock()
	if p.tornDown.Load() {
		p.f.mu.Unlock()
		_ = pair.Close()
		_ = unix.Close(fds[1])
		return
	}
	p.pair, p.pairRC = pair, rc
	p.f.mu.Unlock()
	// From here on reads of the client's socket never wait inside
	// crypto/tls (upstream waits for readability itself), and writes time
	// out after WriteTimeout. Set before downstream starts.
	p.side.established = true
	if !p.f.pipes.push(&pipeConn{fd: fds[1], laddr: p.raw.LocalAddr(), raddr: p.raw.RemoteAddr()}) {
		_ = unix.Close(fds[1]) // the listener closed: not served
		return
	}
	p.refs.Add(1)
	go p.downstream()
	handedOver = true // upstream takes this goroutine's reference
	go p.upstream()
}

// upstream carries the client's plaintext to the engine.
func (p *tlsPipe) upstream() {
	defer p.done()
	// The first pass does not wait: the handshake may have read the
	// client's first request along with its last handshake record.
	for first := true; ; first = false {
		if !first {
			if err := waitReadable(p.side.rc); err != nil {
				p.teardown() // closed, or the client did not close within CloseTimeout
				return
			}
		}
		bp := tlsBufPool.Get().(*[]byte)
		for {
			n, err := p.tc.Read(*bp)
			if n > 0 {
				if _, werr := p.pair.Write((*bp)[:n]); werr != nil {
					tlsBufPool.Put(bp)
					p.teardown() // the engine closed its end
					return
				}
			}
			if err == nil {
				continue
			}
			tlsBufPool.Put(bp)
			if err == errWouldBlock {
				break
			}
			if err == io.EOF {
				// The client closed its sending side (close_notify or FIN):
				// the engine sees a hang-up and closes its end, which ends
				// downstream.
				_ = p.pairRC.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
				return
			}
			p.teardown()
			return
		}
	}
}

// downstream carries what the engine writes to the client.
func (p *tlsPipe) downstream() {
	defer p.done()
	var bp *[]byte
	for {
		n, err := readNoBuffer(p.pairRC, &bp)
		if n > 0 {
			if _, err := p.tc.Write((*bp)[:n]); err != nil {
				tlsBufPool.Put(bp)
				p.teardown() // the client is gone or took nothing for WriteTimeout
				return
			}
			continue
		}
		if err == io.EOF {
			// The engine shut down its sending side (close frame written,
			// or the socket dropped): close_notify and a FIN, and the
			// client gets CloseTimeout to close its side (upstream's wait
			// for readability times out then).
			_ = p.tc.CloseWrite()
			_ = p.raw.CloseWrite()
			_ = p.raw.SetReadDeadline(time.Now().Add(p.f.s.cfg.CloseTimeout))
			return
		}
		p.teardown()
		return
	}
}

// readNoBuffer waits until rc is readable without holding a buffer, then
// reads into a pooled one (*bp, taken here when needed): n > 0, or io.EOF,
// or another error. A buffer still held when the socket turns out empty
// goes back to the pool before waiting.
func readNoBuffer(rc syscall.RawConn, bp **[]byte) (n int, err error) {
	var rerr error
	cerr := rc.Read(func(fd uintptr) bool {
		if *bp == nil {
			*bp = tlsBufPool.Get().(*[]byte)
		}
		for {
			m, e := unix.Read(int(fd), **bp)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				tlsBufPool.Put(*bp)
				*bp = nil
				return false
			case e != nil:
				rerr = e
			case m == 0:
				rerr = io.EOF
			default:
				n = m
			}
			return true
		}
	})
	if n == 0 && *bp != nil {
		tlsBufPool.Put(*bp)
		*bp = nil
	}
	if cerr != nil {
		return 0, cerr
	}
	return n, rerr
}

// waitReadable waits until rc has input (or end of input, or an error)
// without reading it: MSG_PEEK of one byte into the stack.
func waitReadable(rc syscall.RawConn) error {
	return rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, e := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		return e != unix.EAGAIN
	})
}

// refusePlaintext answers a plain HTTP request sent to the TLS port with
// 400, as net/http does, instead of a TLS alert the client cannot read.
func (p *tlsPipe) refusePlaintext(err error) bool {
	var re tls.RecordHeaderError
	if !errors.As(err, &re) || re.Conn == nil || !looksLikeHTTP(re.RecordHeader) {
		return false
	}
	p.f.plaintextRefused.Add(1)
	_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
	// Let the client read the answer: closing with its request unread
	// would reset the connection, and the reset can destroy the answer.
	_ = p.raw.CloseWrite()
	_ = p.raw.SetReadDeadline(time.Now().Add(min(p.f.s.cfg.CloseTimeout, time.Second)))
	_, _ = io.Copy(io.Discard, io.LimitReader(p.raw, 64<<10))
	return true
}

// looksLikeHTTP reports whether a TLS record header is the start of an
// HTTP request (net/http's test).
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE", "TRACE":
		return true
	}
	return false
}

// tcpSide is the client's socket as crypto/tls uses it. During the
// handshake it is the plain blocking net.Conn (with the handshake
// deadline). Once established, a read never waits: it takes what the
// socket holds or returns errWouldBlock, and upstream waits for
// readability itself, holding no buffer; a write that finds the socket
// full waits at most WriteTimeout.
type tcpSide struct {
	*net.TCPConn
	rc           syscall.RawConn
	writeTimeout time.Duration
	established  bool // set once by upstream before downstream starts
}

// wouldBlock is what a read of an established client socket returns when
// the socket is empty. It is a temporary net.Error, which crypto/tls does
// not make sticky: the partial record read so far stays buffered.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "tls front: read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

var errWouldBlock error = wouldBlock{}

func (c *tcpSide) Read(b []byte) (int, error) {
	if !c.established {
		return c.TCPConn.Read(b)
	}
	var n int
	var rerr error
	cerr := c.rc.Read(func(fd uintptr) bool {
		for {
			m, e := unix.Read(int(fd), b)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				rerr = errWouldBlock
			case e != nil:
				rerr = os.NewSyscallError("read", e)
			case m == 0 && len(b) > 0:
				rerr = io.EOF
			default:
				n = m
			}
			return true
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	return n, rerr
}

func (c *tcpSide) Write(b []byte) (int, error) {
	if !c.established {
		return c.TCPConn.Write(b)
	}
	n, err := c.writeNow(b)
	if err != nil || n == len(b) {
		return n, err
	}
	// The client's socket is full: wait for it, but not for longer than
	// WriteTimeout (a deadline only on this rare path, no timer otherwise).
	_ = c.TCPConn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	m, err := c.TCPConn.Write(b[n:])
	_ = c.TCPConn.SetWriteDeadline(time.Time{})
	return n + m, err
}

// writeNow writes what the socket takes without waiting.
func (c *tcpSide) writeNow(b []byte) (n int, err error) {
	var werr error
	cerr := c.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, e := unix.Write(int(fd), b[n:])
			if m > 0 {
				n += m
			}
			if e == unix.EINTR {
				continue
			}
			if e != nil {
				if e != unix.EAGAIN {
					werr = os.NewSyscallError("write", e)
				}
				break
			}
		}
		return true
	})
	if cerr != nil {
		return n, cerr
	}
	return n, werr
}

// pipeListener is the netpoll.Listener of a TLS server: netpoll polls an
// eventfd (semaphore mode, level-triggered in netpoll's epoll), and each
// Accept takes one engine end of a socketpair from the queue the front
// fills. No thread, no descriptor per connection beyond the pair.
type pipeListener struct {
	addr  net.Addr
	front *tlsFront

	mu     sync.Mutex
	efd    int // -1 once released
	queue  []*pipeConn
	closed bool
	served bool // netpoll took the eventfd (Fd was called)
}

func newPipeListener(addr net.Addr) (*pipeListener, error) {
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC|unix.EFD_SEMAPHORE)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &pipeListener{addr: addr, efd: efd}, nil
}

// eventfdOne is the 8-byte counter increment an eventfd write takes.
var eventfdOne = func() (b [8]byte) {
	binary.NativeEndian.PutUint64(b[:], 1)
	return
}()

// push queues an engine end for Accept; false once the listener is closed.
func (l *pipeListener) push(c *pipeConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || l.efd < 0 {
		return false
	}
	l.queue = append(l.queue, c)
	if _, err := unix.Write(l.efd, eventfdOne[:]); err != nil {
		l.queue = l.queue[:len(l.queue)-1]
		return false
	}
	return true
}

// Accept is called by netpoll's poller while the eventfd is readable; it
// never waits. (nil, nil) means nothing to accept (netpoll's convention).
func (l *pipeListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.efd < 0 {
		return nil, net.ErrClosed
	}
	var v [8]byte
	if _, err := unix.Read(l.efd, v[:]); err != nil {
		if err == unix.EAGAIN {
			return nil, nil
		}
		return nil, err
	}
	if l.closed || len(l.queue) == 0 {
		return nil, net.ErrClosed
	}
	c := l.queue[0]
	l.queue[0] = nil
	l.queue = l.queue[1:]
	if len(l.queue) == 0 {
		l.queue = nil
	}
	return c, nil
}

// Close stops accepting (the engine's Shutdown and Close call it): the
// public port closes, queued ends are closed. The eventfd stays open while
// netpoll may still poll it: it is closed by netpoll's own second Close
// (after it detached the descriptor) or by release at stop.
func (l *pipeListener) Close() error {
	l.mu.Lock()
	if l.closed {
		if l.efd >= 0 {
			_ = unix.Close(l.efd)
			l.efd = -1
		}
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	q := l.queue
	l.queue = nil
	if !l.served && l.efd >= 0 {
		_ = unix.Close(l.efd)
		l.efd = -1
	}
	l.mu.Unlock()
	for _, c := range q {
		_ = unix.Close(c.fd)
	}
	if l.front != nil {
		l.front.closeListener()
	}
	return nil
}

// release closes the eventfd for good (stop, after netpoll shut down).
func (l *pipeListener) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.efd >= 0 {
		_ = unix.Close(l.efd)
		l.efd = -1
	}
	for _, c := range l.queue {
		_ = unix.Close(c.fd)
	}
	l.queue = nil
}

// Addr is the public TCP address.
func (l *pipeListener) Addr() net.Addr { return l.addr }

// Fd is the eventfd netpoll polls.
func (l *pipeListener) Fd() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.served = true
	return l.efd
}

// pipeConn carries the engine's end of a socketpair to netpoll, which
// copies its descriptor and addresses into its own connection and never
// uses the pipeConn again. RemoteAddr is the TLS client's address.
type pipeConn struct {
	fd           int
	laddr, raddr net.Addr
}

var errPipeConn = errors.New("engine: pipeConn only carries a descriptor")

func (c *pipeConn) Fd() int                          { return c.fd }
func (c *pipeConn) LocalAddr() net.Addr              { return c.laddr }
func (c *pipeConn) RemoteAddr() net.Addr             { return c.raddr }
func (c *pipeConn) Read([]byte) (int, error)         { return 0, errPipeConn }
func (c *pipeConn) Write([]byte) (int, error)        { return 0, errPipeConn }
func (c *pipeConn) Close() error                     { return nil } // netpoll owns the fd
func (c *pipeConn) SetDeadline(time.Time) error      { return errPipeConn }
func (c *pipeConn) SetReadDeadline(time.Time) error  { return errPipeConn }
func (c *pipeConn) SetWriteDeadline(time.Time) error { return errPipeConn }
