package engine

import (
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// writePoller waits for full sockets to take more bytes. A connection whose
// non-blocking writev left bytes queued arms it (Conn.armLocked); the
// poller's goroutine waits in epoll_wait on an epoll set of its own
// (EPOLLOUT, one-shot) and, when the socket has room, writes the queue from
// there (Conn.onWritable). So no goroutine ever waits for one socket, no
// frame bytes are ever handed to netpoll's output buffer (whose close would
// race with them), and the connection's own lock is the only thing that
// orders its writes.
//
// Lock order: Conn.wmu, then writePoller.mu (a leaf). The poller goroutine
// takes a connection's wmu with no lock of its own held.
type writePoller struct {
	epfd   int
	wakefd int // eventfd that interrupts epoll_wait on close

	mu    sync.Mutex
	conns map[uint64]*Conn // armed connections by Conn.id

	nextID atomic.Uint64
	closed atomic.Bool
	done   chan struct{}
}

// wakeKey is the epoll key of wakefd; connection ids start at 1.
const wakeKey = 0

func newWritePoller() (*writePoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("engine: write poller: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("engine: write poller: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setKey(&ev, wakeKey)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("engine: write poller: epoll_ctl: %w", err)
	}
	return &writePoller{
		epfd:   epfd,
		wakefd: wakefd,
		conns:  make(map[uint64]*Conn),
		done:   make(chan struct{}),
	}, nil
}

func setKey(ev *unix.EpollEvent, key uint64) {
	ev.Fd = int32(uint32(key))
	ev.Pad = int32(uint32(key >> 32))
}

func getKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// arm registers c's socket for one EPOLLOUT event. Called with c.wmu held
// and c.fd not released. The epoll_ctl calls are made under p.mu, which
// close holds to free the epoll descriptor: a call never reaches a reused
// descriptor number.
func (p *writePoller) arm(c *Conn) error {
	if c.id == 0 {
		c.id = p.nextID.Add(1)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT}
	setKey(&ev, c.id)
	op := unix.EPOLL_CTL_ADD
	if c.registered {
		op = unix.EPOLL_CTL_MOD
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return errors.New("write poller closed")
	}
	if err := unix.EpollCtl(p.epfd, op, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl fd %d: %w", c.fd, err)
	}
	p.conns[c.id] = c
	c.registered = true
	c.armed = true
	return nil
}

// remove takes c's socket out of the epoll set. Called with c.wmu held,
// before netpoll closes the descriptor (onClosed).
func (p *writePoller) remove(c *Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c.id)
	if !p.closed.Load() {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	}
}

// run is the poller's goroutine: it waits for armed sockets to become
// writable and writes their queues, until close.
func (p *writePoller) run() {
	defer close(p.done)
	var events [256]unix.EpollEvent
	ready := make([]*Conn, 0, len(events))
	for !p.closed.Load() {
		n, err := unix.EpollWait(p.epfd, events[:], -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		p.mu.Lock()
		for i := range events[:n] {
			key := getKey(&events[i])
			if key == wakeKey {
				continue
			}
			// An event for a connection that was removed (closed) after
			// epoll_wait reported it finds nothing here.
			if c, ok := p.conns[key]; ok {
				delete(p.conns, key)
				ready = append(ready, c)
			}
		}
		p.mu.Unlock()
		for i, c := range ready {
			p.writable(c)
			ready[i] = nil
		}
		ready = ready[:0]
	}
}

// writable writes c's queue. A panic there (a bug) drops the connection
// and is logged; it must not stop the poller, which every full socket
// depends on.
func (p *writePoller) writable(c *Conn) {
	defer func() {
		if r := recover(); r != nil {
			c.srv.log.Error("panic writing a connection", "panic", r, "stack", string(debug.Stack()))
			c.closeSocket()
		}
	}()
	c.onWritable()
}

// close stops the poller's goroutine (started or not: run must not be
// called after close) and frees its descriptors. Armed connections are not
// written any more; the server drops them. Idempotent.
func (p *writePoller) close(started bool) {
	p.mu.Lock()
	if p.closed.Swap(true) {
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	if started {
		var one = [8]byte{1}
		_, _ = unix.Write(p.wakefd, one[:])
		<-p.done
	}
	p.mu.Lock()
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
	clear(p.conns)
	p.mu.Unlock()
}
