package engine

import (
	"context"
	"errors"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

// Upgrades on kept-alive connections (a reverse proxy's upstream pool).
//
// A connection whose first request is not for /ws is lent to net/http
// (detachHTTP), which then serves it for its keep-alive life. A proxy that
// keeps its upstream connections alive (nginx's upstream keepalive,
// HAProxy's http-reuse) sends a browser's upgrade request on whichever idle
// connection it has, so that request reaches net/http's /ws handler. That
// handler gives the connection back to the event loop, and the upgrade
// then runs exactly as for a fresh connection:
//
//  1. keptAliveUpgrade (net/http's goroutine) rebuilds the request head
//     from the parsed request (net/http keeps no raw copy: header order and
//     the case of names differ, nothing that matters to gobwas/ws or to
//     admission), hijacks the connection, appends every byte net/http had
//     read past the head (a client may send frames right behind its
//     request), duplicates the descriptor and closes net/http's copy (which
//     leaves Go's poller; the socket stays open).
//  2. The descriptor and the client's address travel to netpoll through a
//     pipeListener (tls.go's model: an eventfd netpoll polls, and a queue),
//     served by an event loop of its own that shares netpoll's pollers and
//     the server's callbacks; the head waits in keepaliveLoop.pending under
//     the descriptor's number.
//  3. onPrepareKeptAlive runs the server's onPrepare (the accept cap,
//     MaxConns accounting, the registry, HandshakeTimeout) and puts the
//     head in the connection's input buffer; onConnectKeptAlive, which
//     netpoll runs before any read callback, hands it to handshake: the
//     same admission (origin, limits, memory), authentication and upgrade
//     as a fresh connection, the same refusals counted in
//     fanout_upgrades_refused_total.
//
// From then on the WebSocket is an ordinary connection of the event loop:
// no goroutine of its own (net/http's per-connection goroutine ends with
// the hijack), the sweeper's deadlines, the write path, Shutdown's 1012.
// fanout_keepalive_upgrades_total counts the upgrades done this way.
//
// The loop starts at the first such upgrade (a server that never sees one
// never has it) and stops when the server stops (s.closed).

// keepaliveLoop is the event loop of connections that net/http gives back.
type keepaliveLoop struct {
	once sync.Once
	ln   *pipeListener // nil if it could not start
	err  error

	mu sync.Mutex
	// pending holds each handed-over descriptor's request head (and any
	// bytes read after it) until onPrepareKeptAlive takes it.
	pending map[int][]byte

	upgrades atomic.Uint64 // upgrades completed on a kept-alive connection
}

// errKeepaliveStopped: the server is stopping, or the loop could not start.
var errKeepaliveStopped = errors.New("engine: keep-alive upgrade loop stopped")

// listener returns the loop's listener, starting the loop at first use.
func (s *Server) keepaliveListener() (*pipeListener, error) {
	k := &s.adm.keepalive
	k.once.Do(func() {
		select {
		case <-s.closed:
			k.err = errKeepaliveStopped
			return
		default:
		}
		pl, err := newPipeListener(s.ln.Addr())
		if err != nil {
			k.err = err
			return
		}
		evl, err := netpoll.NewEventLoop(s.onRequest,
			netpoll.WithOnPrepare(s.onPrepareKeptAlive),
			netpoll.WithOnConnect(s.onConnectKeptAlive))
		if err != nil {
			pl.release()
			k.err = err
			return
		}
		k.pending = make(map[int][]byte)
		k.ln = pl
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := evl.Serve(pl); err != nil && !errors.Is(err, net.ErrClosed) {
				select {
				case <-s.closed:
				default:
					s.log.Error("keep-alive upgrade loop stopped", "err", err)
				}
			}
			k.stop() // later hand-overs are refused, not queued for no one
		}()
		go func() {
			<-s.closed
			// Wake netpoll's accept: it finds the listener closed and
			// Serve returns; Shutdown then closes what the loop still
			// holds (stop already shut every registered socket down).
			k.stop()
			<-served
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = evl.Shutdown(ctx)
			cancel()
			pl.release()
		}()
	})
	if k.err != nil {
		return nil, k.err
	}
	return k.ln, nil
}

// stop closes the listener to new hand-overs and wakes netpoll's accept,
// which then sees it closed. Queued descriptors are closed, their heads
// dropped.
func (k *keepaliveLoop) stop() {
	l := k.ln
	l.mu.Lock()
	l.closed = true
	q := l.queue
	l.queue = nil
	if l.efd >= 0 {
		_, _ = unix.Write(l.efd, eventfdOne[:])
	}
	l.mu.Unlock()
	for _, c := range q {
		k.take(c.fd)
		_ = unix.Close(c.fd)
	}
}

// hand queues fd with its head for the loop; false (fd untouched) when the
// loop is stopped.
func (k *keepaliveLoop) hand(fd int, head []byte, laddr, raddr net.Addr) bool {
	k.mu.Lock()
	k.pending[fd] = head
	k.mu.Unlock()
	if k.ln.push(&pipeConn{fd: fd, laddr: laddr, raddr: raddr}) {
		return true
	}
	k.take(fd)
	return false
}

// take removes and returns fd's head.
func (k *keepaliveLoop) take(fd int) []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	head := k.pending[fd]
	delete(k.pending, fd)
	return head
}

// onPrepareKeptAlive is the loop's OnPrepare: the server's own, then the
// head goes into the connection's input buffer.
func (s *Server) onPrepareKeptAlive(nc netpoll.Connection) context.Context {
	var head []byte
	if f, ok := nc.(interface{ Fd() int }); ok {
		// Taken before onPrepare, which may close the descriptor (its
		// number could then be handed over again).
		head = s.adm.keepalive.take(f.Fd())
	}
	ctx := s.onPrepare(nc)
	c, ok := ctx.(*Conn)
	if !ok {
		return ctx // refused at accept (answered 503) or the server stopping
	}
	// The connection was counted when it was first accepted.
	s.stats.accepted.Add(^uint64(0))
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(head) == 0 {
		c.closeSocket() // cannot happen: every hand-over has a head
		return c
	}
	c.inbuf = bytebufferpool.Get()
	c.inbuf.B = append(c.inbuf.B[:0], head...)
	return c
}

// onConnectKeptAlive is the loop's OnConnect, which netpoll runs (in the
// pool: the connection is in its handshake) before any read callback: the
// upgrade of the head onPrepareKeptAlive stored, as onRequest would run it.
func (s *Server) onConnectKeptAlive(ctx context.Context, _ netpoll.Connection) context.Context {
	c, ok := ctx.(*Conn)
	if !ok {
		return ctx
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("panic upgrading a kept-alive connection", "panic", p, "stack", string(debug.Stack()))
			c.dropInbuf()
			c.closeSocket()
		}
	}()
	if c.state.Load() != stateHandshake || c.inbuf == nil {
		return ctx // closed already (HandshakeTimeout, Shutdown)
	}
	b := c.inbuf.B
	used, detach := s.handshake(c, b)
	if detach || used == 0 {
		// keptAliveUpgrade hands over only complete heads for /ws.
		c.dropInbuf()
		c.closeSocket()
		return ctx
	}
	if used > 0 && c.state.Load() == stateOpen {
		s.adm.keepalive.upgrades.Add(1)
		c.lastActive.Store(s.now())
		s.wheel.scheduleBy(c, s.now()+s.cfg.IdleTimeout.Nanoseconds()/2)
		used += s.readFrames(c, b[used:])
	}
	c.keepUnread(b, used)
	return ctx
}

// keptAliveUpgrade is net/http's /ws handler: an upgrade request on a
// connection that served ordinary HTTP first. It gives the connection back
// to the event loop (see above); only what cannot go there is answered
// here.
func (s *Server) keptAliveUpgrade(w http.ResponseWriter, r *http.Request) {
	head, ok := requestHead(r)
	if !ok {
		http.Error(w, "malformed request header", http.StatusBadRequest)
		return
	}
	if !isWebSocketPath(head) {
		// "/ws#x" and the like: net/http's mux routes it here, the event
		// loop would not.
		http.Error(w, "WebSocket endpoint is /ws", http.StatusNotFound)
		return
	}
	if s.listenerClosed.Load() {
		s.refuseKeptAlive(w, "server stopping", nil)
		return
	}
	k := &s.adm.keepalive
	if _, err := s.keepaliveListener(); err != nil {
		s.refuseKeptAlive(w, "server stopping", err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok { // HTTP/1.1 only reaches this server's net/http
		http.Error(w, "cannot upgrade this connection", http.StatusInternalServerError)
		return
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		s.adm.refuse(s, causeKeepalive, nil, "err", err)
		return
	}
	// Every byte net/http read past the head: its buffer first, then what
	// prefixConn had not replayed yet, then the socket.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		head = append(head, b...)
	}
	inner, remote := nc, nc.RemoteAddr()
	if pc, ok := nc.(*prefixConn); ok {
		head = append(head, pc.head...)
		pc.head = nil
		inner = pc.Conn
	}
	fd, err := dupConnFD(inner)
	if err != nil {
		// Out of descriptors, most likely: the client hears it.
		_, _ = nc.Write([]byte(s.keepaliveRefusal()))
		_ = nc.Close()
		s.adm.refuse(s, causeKeepalive, nil, "err", err)
		return
	}
	laddr := nc.LocalAddr()
	_ = nc.Close() // net/http's descriptor; the socket lives on in fd
	if !k.hand(fd, head, laddr, remote) {
		_, _ = unix.Write(fd, []byte(s.keepaliveRefusal()))
		_ = unix.Close(fd)
		s.adm.refuse(s, causeKeepalive, nil, "reason", "server stopping")
	}
}

// refuseKeptAlive answers 503 before hijacking, counted and logged as a
// refusal of cause keepalive.
func (s *Server) refuseKeptAlive(w http.ResponseWriter, reason string, err error) {
	w.Header().Set("Retry-After", s.retryAfter())
	w.Header().Set("Connection", "close")
	http.Error(w, "server draining, retry later", http.StatusServiceUnavailable)
	args := []any{"reason", reason}
	if err != nil {
		args = append(args, "err", err)
	}
	s.adm.refuse(s, causeKeepalive, nil, args...)
}

// keepaliveRefusal is the 503 written straight to a hijacked connection.
func (s *Server) keepaliveRefusal() string {
	body := "server draining, retry later\n"
	return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + s.retryAfter() +
		"\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// retryAfter is the Retry-After of a 503, in seconds.
func (s *Server) retryAfter() string {
	return strconv.FormatInt(int64(max(s.cfg.RetryAfterMin.Round(time.Second)/time.Second, 1)), 10)
}

// dupConnFD duplicates nc's descriptor (close-on-exec; non-blocking, a flag
// the duplicate shares).
func dupConnFD(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, errors.New("engine: connection has no descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	return fd, nil
}

// requestHead rebuilds the head of a request net/http parsed: request
// line, Host, every header value in order per name. ok is false when a
// name or value holds a line break (net/http refuses those already; the
// head must not gain lines).
func requestHead(r *http.Request) ([]byte, bool) {
	n := len(r.Method) + len(r.RequestURI) + len(r.Proto) + len(r.Host) + 16
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	b := make([]byte, 0, n+4096) // room for bytes read after the head
	b = append(b, r.Method...)
	b = append(b, ' ')
	b = append(b, r.RequestURI...)
	b = append(b, ' ')
	b = append(b, r.Proto...)
	b = append(b, "\r\n"...)
	if r.Host != "" {
		b = append(b, "Host: "...)
		b = append(b, r.Host...)
		b = append(b, "\r\n"...)
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if hasLineBreak(k) || hasLineBreak(v) {
				return nil, false
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	if hasLineBreak(r.Method) || hasLineBreak(r.RequestURI) || hasLineBreak(r.Host) {
		return nil, false
	}
	return append(b, "\r\n"...), true
}

func hasLineBreak(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' || s[i] == '\n' {
			return true
		}
	}
	return false
}
