package engine

// Tests that pin the behaviour of netpoll (third_party/netpoll, v0.7.2) that
// the engine relies on and netpoll does not document. They use netpoll
// directly, in the same process and with the same process-wide
// configuration as the engine (tuneNetpoll: netpoll's Configure is global),
// so that an update of netpoll that changes any of it fails here, not in
// production.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// pinServe serves netpoll on a random loopback port with onRequest and
// opts, configured as the engine configures netpoll.
func pinServe(t *testing.T, onRequest netpoll.OnRequest, opts ...netpoll.Option) string {
	t.Helper()
	tuneNetpoll(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := netpoll.CreateListener("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	evl, err := netpoll.NewEventLoop(onRequest, opts...)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	go func() { _ = evl.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = evl.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// pinInlineCtx is a connection context for which the engine's netpoll
// runner (runCallback) runs OnRequest on the poller goroutine itself, as
// it does for a busy WebSocket. It is the one place these tests depend on
// the engine's Conn; pinOnPoller verifies that it does run inline.
func pinInlineCtx() context.Context {
	c := &Conn{Context: context.Background()}
	c.busy.Store(true)
	c.state.Store(stateOpen)
	return c
}

// pinFDIdentity names the open file a descriptor refers to.
func pinFDIdentity(fd int) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("dev %d ino %d", st.Dev, st.Ino), nil
}

// pinFD returns a netpoll connection's descriptor.
func pinFD(t testing.TB, c netpoll.Connection) int {
	t.Helper()
	f, ok := c.(interface{ Fd() int })
	if !ok {
		t.Fatal("netpoll connection has no Fd method")
	}
	return f.Fd()
}

// pinPollers returns the ids of the goroutines running a netpoll poller
// (defaultPoll.Wait), from a dump of all goroutines.
func pinPollers() map[uint64]bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	ids := map[uint64]bool{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !strings.Contains(g, "netpoll.(*defaultPoll).Wait") {
			continue
		}
		head := strings.TrimPrefix(g, "goroutine ")
		if i := strings.IndexByte(head, ' '); i > 0 {
			if id, err := strconv.ParseUint(head[:i], 10, 64); err == nil {
				ids[id] = true
			}
		}
	}
	return ids
}

// pinOnPoller reports whether the calling goroutine is a netpoll poller.
func pinOnPoller() bool {
	var b [16 << 10]byte
	n := runtime.Stack(b[:], false)
	return bytes.Contains(b[:n], []byte("netpoll.(*defaultPoll).Wait"))
}

// pinEnds are the ways a connection ends that the engine sees: the peer
// closes or resets it, or the engine shuts the socket down (closeSocket;
// it never uses netpoll's Close).
var pinEnds = []struct {
	name string
	end  func(client net.Conn, serverFD int)
}{
	{"peer closes", func(c net.Conn, _ int) { _ = c.Close() }},
	{"peer resets", func(c net.Conn, _ int) { wpSetLinger0(c); _ = c.Close() }},
	{"local shutdown", func(_ net.Conn, fd int) { _ = unix.Shutdown(fd, unix.SHUT_RDWR) }},
}

// pinCallbackObs is what a close callback saw.
type pinCallbackObs struct {
	fd           int
	identity     string // of fd when the connection was prepared
	seenIdentity string // of fd during the callback
	statErr      error
	active       bool
	readerLen    int
	releaseErr   error
	releasePanic any
	gid          uint64
	onPoller     bool
	pollers      map[uint64]bool
	stack        string
}

// pinConnServer serves connections that consume their input, report each
// OnRequest (connection, goroutine, whether on the poller) and each close
// callback's observations.
type pinConnServer struct {
	addr      string
	requests  chan pinRequest
	callbacks chan pinCallbackObs
}

type pinRequest struct {
	nc       netpoll.Connection
	gid      uint64
	onPoller bool
}

func newPinConnServer(t *testing.T, inline bool) *pinConnServer {
	t.Helper()
	ps := &pinConnServer{requests: make(chan pinRequest, 64), callbacks: make(chan pinCallbackObs, 8)}
	onRequest := func(_ context.Context, nc netpoll.Connection) error {
		r := nc.Reader()
		_ = r.Skip(r.Len())
		_ = r.Release()
		select {
		case ps.requests <- pinRequest{nc, wpGoroutineID(), pinOnPoller()}:
		default:
		}
		return nil
	}
	onPrepare := func(nc netpoll.Connection) context.Context {
		fd := pinFD(t, nc)
		id, _ := pinFDIdentity(fd)
		_ = nc.AddCloseCallback(func(nc netpoll.Connection) error {
			obs := pinCallbackObs{fd: fd, identity: id, gid: wpGoroutineID(), onPoller: pinOnPoller(), active: nc.IsActive()}
			obs.seenIdentity, obs.statErr = pinFDIdentity(fd)
			var b [16 << 10]byte
			obs.stack = string(b[:runtime.Stack(b[:], false)])
			obs.pollers = pinPollers()
			func() {
				defer func() { obs.releasePanic = recover() }()
				r := nc.Reader()
				obs.readerLen = r.Len()
				obs.releaseErr = r.Release()
			}()
			ps.callbacks <- obs
			return nil
		})
		if inline {
			return pinInlineCtx()
		}
		return context.Background()
	}
	ps.addr = pinServe(t, onRequest, netpoll.WithOnPrepare(onPrepare))
	return ps
}

// connect dials ps, sends a message and waits for its OnRequest.
func (ps *pinConnServer) connect(t *testing.T) (net.Conn, pinRequest) {
	t.Helper()
	c, err := net.DialTimeout("tcp", ps.addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	select {
	case req := <-ps.requests:
		return c, req
	case <-time.After(20 * time.Second):
		t.Fatal("OnRequest not called")
	}
	return nil, pinRequest{}
}

func (ps *pinConnServer) callback(t *testing.T) pinCallbackObs {
	t.Helper()
	select {
	case obs := <-ps.callbacks:
		return obs
	case <-time.After(20 * time.Second):
		t.Fatal("close callback not called")
	}
	return pinCallbackObs{}
}

// TestNetpollCloseCallbackBeforeFinalizer pins (a): a close callback added
// after the connection was created (the engine adds onClosed in OnPrepare)
// runs before netpoll's own finalizer closes the descriptor and the
// buffers: during the callback the descriptor is still open and is the
// same socket, and the connection's Reader still works. onClosed depends
// on it: it marks the descriptor released so that no direct writev can
// reach a reused number, and it is the last moment the input buffer may be
// touched. After the callbacks the descriptor is closed.
func TestNetpollCloseCallbackBeforeFinalizer(t *testing.T) {
	for _, tt := range pinEnds {
		t.Run(tt.name, func(t *testing.T) {
			ps := newPinConnServer(t, false)
			c, req := ps.connect(t)
			fd := pinFD(t, req.nc)
			tt.end(c, fd)
			obs := ps.callback(t)
			if obs.statErr != nil {
				t.Fatalf("during the close callback fstat(%d) failed: %v: the descriptor was closed before the callback", fd, obs.statErr)
			}
			if obs.seenIdentity != obs.identity {
				t.Fatalf("during the close callback fd %d is %s, was %s: already closed and reused", fd, obs.seenIdentity, obs.identity)
			}
			if obs.active {
				t.Error("IsActive() during the close callback: want false")
			}
			if obs.releasePanic != nil || obs.releaseErr != nil {
				t.Errorf("Reader().Release() during the close callback: panic %v, err %v", obs.releasePanic, obs.releaseErr)
			}
			if obs.readerLen != 0 {
				t.Errorf("Reader().Len() = %d during the close callback, want 0 (input consumed)", obs.readerLen)
			}
			// Then netpoll's finalizer closes the descriptor (it may be
			// reused at once: then it names another file).
			checkFor(t, 10*time.Second, 5*time.Millisecond, func() error {
				id, err := pinFDIdentity(fd)
				if err == nil && id == obs.identity {
					return fmt.Errorf("fd %d still open after the close callbacks", fd)
				}
				return nil
			})
			select {
			case extra := <-ps.callbacks:
				t.Fatalf("close callback ran twice (second on goroutine %d)", extra.gid)
			default:
			}
		})
	}
}

// TestNetpollCloseCallbackOffPoller pins (b): close callbacks never run on
// a poller goroutine: for a hang-up the poller hands them to a goroutine of
// their own (defaultPoll.onhups), also when OnRequest runs on the poller
// itself (the engine's runner does that for busy connections). onClosed
// takes locks that code on the poller may hold and frees netpoll state
// that the poller owns; run on the poller it could deadlock it.
func TestNetpollCloseCallbackOffPoller(t *testing.T) {
	for _, runner := range []struct {
		name   string
		inline bool
	}{{"pool runner", false}, {"inline runner", true}} {
		for _, tt := range pinEnds {
			t.Run(runner.name+"/"+tt.name, func(t *testing.T) {
				ps := newPinConnServer(t, runner.inline)
				c, req := ps.connect(t)
				if req.onPoller != runner.inline {
					t.Fatalf("OnRequest on the poller: %v, want %v (runCallback changed?)", req.onPoller, runner.inline)
				}
				tt.end(c, pinFD(t, req.nc))
				obs := ps.callback(t)
				if len(obs.pollers) == 0 {
					t.Fatal("no poller goroutine (defaultPoll.Wait) found in the goroutine dump: netpoll's structure changed")
				}
				if obs.onPoller || obs.pollers[obs.gid] {
					t.Fatalf("close callback ran on poller goroutine %d:\n%s", obs.gid, obs.stack)
				}
				if runner.inline && obs.gid == req.gid {
					t.Fatalf("close callback ran on the goroutine that ran OnRequest inline (%d)", obs.gid)
				}
				// The hang-up path: a goroutine started by the poller for
				// its hang-ups. (With the pool runner a callback can also
				// run at the end of an OnRequest task still running in the
				// pool, which is off the poller too.)
				if runner.inline && !strings.Contains(obs.stack, "netpoll.(*defaultPoll).onhups") {
					t.Errorf("close callback not started by defaultPoll.onhups:\n%s", obs.stack)
				}
			})
		}
	}
}

// pinReadServer reports the address of the first byte of each read as
// OnRequest sees it (a zero-copy Peek into netpoll's input node), and
// releases the input or not.
type pinReadServer struct {
	addr  string
	reads chan pinRead
}

type pinRead struct {
	nc       netpoll.Connection
	first    uintptr // address of the first byte read
	n        int
	onPoller bool
}

func newPinReadServer(t *testing.T, inline, release bool) *pinReadServer {
	t.Helper()
	ps := &pinReadServer{reads: make(chan pinRead, 16)}
	onRequest := func(_ context.Context, nc netpoll.Connection) error {
		r := nc.Reader()
		n := r.Len()
		p, err := r.Peek(n)
		if err != nil || n == 0 {
			return err
		}
		rd := pinRead{nc: nc, first: uintptr(unsafe.Pointer(&p[0])), n: n, onPoller: pinOnPoller()}
		_ = r.Skip(n)
		if release {
			_ = r.Release()
		}
		ps.reads <- rd
		return nil
	}
	onPrepare := func(netpoll.Connection) context.Context {
		if inline {
			return pinInlineCtx()
		}
		return context.Background()
	}
	ps.addr = pinServe(t, onRequest, netpoll.WithOnPrepare(onPrepare))
	return ps
}

// send writes msg on c and returns the server's observation of its read.
func (ps *pinReadServer) send(t *testing.T, c net.Conn, msg []byte) pinRead {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var rd pinRead
	select {
	case rd = <-ps.reads:
	case <-time.After(20 * time.Second):
		t.Fatal("OnRequest not called")
	}
	// One read is expected per message on an idle loopback socket; a
	// message split over two reads would make the observation moot.
	if rd.n != len(msg) {
		t.Skipf("message of %d bytes read as %d: cannot observe node reuse this time", len(msg), rd.n)
	}
	return rd
}

// TestNetpollReleaseDropsEmptiedNode pins (c): with the engine's 16 KiB
// BufferSize (above netpoll's 8 KiB page), a Release that leaves the input
// empty, made off the poller, drops the input node, so an idle connection
// holds no input buffer; made on the poller it keeps it (netpoll cannot
// take the operator there), which is why the sweeper trims connections
// served on the poller with a later Release (Conn.trimInput).
//
// Observable: a read that goes into the kept node lands right after the
// previous bytes in the same array; after the node was dropped it lands in
// a fresh node (even if the memory is reused, at its start, not after the
// previous bytes).
func TestNetpollReleaseDropsEmptiedNode(t *testing.T) {
	if readBufferSize <= 8<<10 {
		t.Fatalf("readBufferSize %d is at or below netpoll's page size: Release would never drop a node", readBufferSize)
	}
	msg := bytes.Repeat([]byte("x"), 100)
	contiguous := func(a, b pinRead) bool { return b.first == a.first+uintptr(a.n) }

	t.Run("no release keeps the node (the observation works)", func(t *testing.T) {
		ps := newPinReadServer(t, false, false)
		c := pinDial(t, ps.addr)
		r1 := ps.send(t, c, msg)
		r2 := ps.send(t, c, msg)
		if !contiguous(r1, r2) {
			t.Fatalf("without Release the second read is not after the first in the same node (%#x+%d, then %#x)", r1.first, r1.n, r2.first)
		}
	})
	// releaseWhenQuiet releases the input off the poller after growing
	// quiet periods until a read shows the node dropped. The poller must
	// have finished the event that ran OnRequest: it holds the
	// connection's operator until then, and a Release meanwhile keeps the
	// node. Nothing outside netpoll shows when that is, hence the quiet
	// periods (the sweeper trims after trimAfter of quiet).
	releaseWhenQuiet := func(t *testing.T, ps *pinReadServer, c net.Conn, prev pinRead) {
		t.Helper()
		for _, quiet := range []time.Duration{10 * time.Millisecond, 100 * time.Millisecond, time.Second, 3 * time.Second} {
			time.Sleep(quiet)
			if err := prev.nc.Reader().Release(); err != nil {
				t.Fatal(err)
			}
			next := ps.send(t, c, msg)
			if !contiguous(prev, next) {
				return // dropped
			}
			t.Logf("still the same node after a Release off the poller %v after the read", quiet)
			prev = next
		}
		t.Fatalf("a Release off the poller, with the connection quiet, did not drop the emptied node")
	}
	t.Run("release off the poller drops the node", func(t *testing.T) {
		ps := newPinReadServer(t, false, false)
		c := pinDial(t, ps.addr)
		r1 := ps.send(t, c, msg)
		if r1.onPoller {
			t.Fatal("OnRequest ran on the poller with the pool runner")
		}
		releaseWhenQuiet(t, ps, c, r1)
	})
	t.Run("release in a pooled OnRequest drops the node (mostly)", func(t *testing.T) {
		// A Release at the end of an OnRequest run in the pool races with
		// the poller finishing the event that started it; when the poller
		// is still there the node is kept until the next Release. So a
		// connection the pool serves usually, not always, keeps no input
		// node: pinned as "at least once in ten reads".
		ps := newPinReadServer(t, false, true)
		c := pinDial(t, ps.addr)
		prev := ps.send(t, c, msg)
		dropped := 0
		for range 10 {
			next := ps.send(t, c, msg)
			if !contiguous(prev, next) {
				dropped++
			}
			prev = next
		}
		t.Logf("node dropped after %d of 10 reads", dropped)
		if dropped == 0 {
			t.Fatal("a Release in a pooled OnRequest never dropped the emptied node")
		}
	})
	t.Run("release on the poller keeps the node until a release off it", func(t *testing.T) {
		ps := newPinReadServer(t, true, true)
		c := pinDial(t, ps.addr)
		r1 := ps.send(t, c, msg)
		if !r1.onPoller {
			t.Fatal("OnRequest did not run on the poller with the inline context (runCallback changed?)")
		}
		r2 := ps.send(t, c, msg)
		if !contiguous(r1, r2) {
			t.Fatalf("a Release on the poller dropped the node (%#x+%d, then %#x): trimming would be unnecessary", r1.first, r1.n, r2.first)
		}
		// What the sweeper does for a quiet connection.
		releaseWhenQuiet(t, ps, c, r2)
	})
}

func pinDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNetpollWriteBinaryNoCopyThreshold pins (d): netpoll's WriteBinary
// references a chunk of more than 4 KiB (BinaryInplaceThreshold) instead of
// copying it, so the caller's bytes must stay untouched until netpoll has
// written them (a pooled frame must not be recycled while netpoll holds
// it, even after a Flush timed out), and copies a smaller one. Observable:
// bytes changed after WriteBinary and before Flush are sent changed
// exactly when they were referenced.
func TestNetpollWriteBinaryNoCopyThreshold(t *testing.T) {
	if netpoll.BinaryInplaceThreshold != 4096 {
		t.Errorf("netpoll.BinaryInplaceThreshold = %d, want 4096", netpoll.BinaryInplaceThreshold)
	}
	tuneNetpoll(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	nc, err := netpoll.DialConnection("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var peer net.Conn
	select {
	case peer = <-accepted:
	case <-time.After(10 * time.Second):
		t.Fatal("no accept")
	}
	defer peer.Close()
	tests := []struct {
		size       int
		referenced bool
	}{
		{1, false},
		{4095, false},
		{4096, false},
		{4097, true},
		{64 << 10, true},
	}
	var mu sync.Mutex // one write at a time on the connection
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.size), func(t *testing.T) {
			mu.Lock()
			defer mu.Unlock()
			buf := bytes.Repeat([]byte{'a'}, tt.size)
			w := nc.Writer()
			if _, err := w.WriteBinary(buf); err != nil {
				t.Fatal(err)
			}
			for i := range buf {
				buf[i] = 'b'
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, tt.size)
			_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(peer, got); err != nil {
				t.Fatal(err)
			}
			want := byte('a')
			if tt.referenced {
				want = 'b'
			}
			if bytes.Count(got, []byte{want}) != tt.size {
				what := "copied"
				if tt.referenced {
					what = "referenced"
				}
				t.Fatalf("a %d-byte chunk was not %s (sent %q...)", tt.size, what, got[:min(8, len(got))])
			}
		})
	}
}

// TestNetpollAcceptsCloseOnExec pins patch 4 (third_party/README.md): a
// socket netpoll accepts is close-on-exec, so that a child process the
// server starts (a helper, a test's client, nginx) does not inherit it and
// keep it open, and its epoll registration alive, after the server closed
// it.
func TestNetpollAcceptsCloseOnExec(t *testing.T) {
	fds := make(chan int, 1)
	addr := pinServe(t, func(ctx context.Context, c netpoll.Connection) error {
		if f, ok := c.(interface{ Fd() int }); ok {
			select {
			case fds <- f.Fd():
			default:
			}
		}
		return c.Reader().Release()
	})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case fd := <-fds:
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		if flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("accepted fd %d has flags %#x: not close-on-exec", fd, flags)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no request")
	}
}
