package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/bytedance/gopkg/util/gopool"
	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

// Connection states.
const (
	stateHandshake uint32 = iota // accepted, upgrade request not yet complete
	stateHTTP                    // handed to net/http
	stateRejected                // handshake refused; the response is on its way
	stateOpen                    // upgraded WebSocket
	stateClosing                 // close frame queued; input is discarded
	stateClosed                  // socket closed, resources freed
)

// Conn is one accepted connection. Ownership (netpoll's model): one reader,
// the netpoll OnRequest goroutine, owns the read side and the fields marked
// "reader"; any goroutine may Send, and the write queue is guarded by wmu.
// An idle connection holds no goroutine, timer, map or buffer of its own.
type Conn struct {
	// Context is what onPrepare hands netpoll as the connection's context:
	// the Conn itself, so onRequest finds it with a type assertion and no
	// per-connection context value is allocated.
	context.Context

	srv  *Server
	nc   netpoll.Connection
	fd   int
	info codec.ClientInfo
	enc  codec.Encoding

	state      atomic.Uint32
	lastActive atomic.Int64 // server clock (unix nanos) of the last frame read
	// closingSince is the server clock when the last bytes (close frame or
	// rejection) were written and the sending side shut down, 0 before.
	closingSince atomic.Int64
	pingSent     atomic.Bool

	// partialSince is the server clock when the frame (or request head) at
	// the start of inbuf began, 0 when inbuf is empty; the sweeper reads it.
	partialSince atomic.Int64

	// busy is set while the connection reads often enough to be served on
	// netpoll's poller (runCallback); trimPending while it may hold an
	// input node that only a Release off the poller drops (trimInput).
	busy        atomic.Bool
	trimPending atomic.Bool

	// rmu is held by the reader (onRequest) and by trimInput: netpoll lets
	// one goroutine at a time use a connection's reader.
	rmu sync.Mutex
	// reader, under rmu
	lastRead int64 // monotonic nanos of the previous onRequest
	streak   int   // consecutive reads less than busyWindow apart
	// inbuf holds input that is not a complete frame (or request head) yet;
	// nil for a connection with no such input, i.e. nearly always.
	inbuf  *bytebufferpool.ByteBuffer
	fragOp ws.OpCode                  // opcode of the message being reassembled, 0 if none
	frag   *bytebufferpool.ByteBuffer // reassembled fragments, nil when none
	subs   []string                   // channels this connection subscribed to
	// httpHead holds the bytes read from a connection lent to net/http.
	httpHead []byte

	wmu     sync.Mutex
	queue   []*wsframe.Frame // frames waiting for the socket, oldest first
	partial int              // bytes of queue[0] already written
	queued  int              // bytes queued or handed to netpoll and not yet written
	// flushing is set while a flusher goroutine owns netpoll's writer; no
	// direct write may happen then, which keeps the byte order.
	flushing bool
	// closeQueued is set once a close frame is queued: nothing is accepted
	// after it and the socket closes as soon as it is written.
	closeQueued bool
	wclosed     bool // the socket is closed or failed; Send drops frames
	// fdReleased is set (under wmu) once netpoll is about to close or hand
	// over the descriptor: from then on c.fd may name another socket.
	fdReleased bool
}

// Info implements hub.Subscriber.
func (c *Conn) Info() codec.ClientInfo { return c.info }

// Encoding implements hub.Subscriber.
func (c *Conn) Encoding() codec.Encoding { return c.enc }

// Send queues f (taking one reference) and never blocks. See SendBatch.
func (c *Conn) Send(f *wsframe.Frame) {
	c.wmu.Lock()
	if c.wclosed || c.closeQueued {
		c.wmu.Unlock()
		f.Release()
		return
	}
	c.reserveLocked()
	c.queue = append(c.queue, f)
	c.queued += f.Len()
	c.writeLocked()
}

// SendBatch queues frames (taking one reference of each) and writes them
// with one writev when the socket has room. It never blocks: what the socket
// does not take now is written by a flusher goroutine that waits for the
// socket, and a connection whose unwritten backlog passes WriteQueueBytes is
// closed 1008 "slow consumer" without delaying anyone else.
func (c *Conn) SendBatch(fs []*wsframe.Frame) {
	c.wmu.Lock()
	if c.wclosed || c.closeQueued {
		c.wmu.Unlock()
		for _, f := range fs {
			f.Release()
		}
		return
	}
	c.reserveLocked()
	for _, f := range fs {
		c.queue = append(c.queue, f)
		c.queued += f.Len()
	}
	c.writeLocked()
}

// writeLocked writes what it can of the queue without blocking, enforces
// the backlog bound on what is left, and unlocks wmu. Called with wmu held.
func (c *Conn) writeLocked() {
	for {
		if !c.flushing && len(c.queue) > 0 {
			done, err := c.writevLocked()
			switch {
			case err != nil:
				c.failLocked()
				return
			case done && c.closeQueued:
				c.wclosed = true
				c.shutdownWriteLocked()
				c.wmu.Unlock()
				return
			case !done:
				c.flushing = true
				gopool.Go(c.flush)
			}
		}
		// The bound applies to bytes the socket did not take: a burst that
		// the socket absorbs is no slow consumer.
		if c.queued > c.srv.cfg.WriteQueueBytes && !c.closeQueued {
			c.srv.stats.slowConsumers.Add(1)
			c.queueCloseLocked(errSlowConsumer, true)
			continue
		}
		c.wmu.Unlock()
		return
	}
}

// iovMax bounds the frames written by one writev; the rest wait for the
// next call. 64 iovecs keep the array on the stack.
const iovMax = 64

// writevLocked writes the head of the queue with one non-blocking writev and
// drops the frames it completed. done reports an empty queue.
func (c *Conn) writevLocked() (done bool, err error) {
	for len(c.queue) > 0 {
		var iov [iovMax]unix.Iovec
		n := 0
		for i, f := range c.queue {
			if n == iovMax {
				break
			}
			b := f.Bytes()
			if i == 0 {
				b = b[c.partial:]
			}
			iov[n].Base = &b[0]
			iov[n].SetLen(len(b))
			n++
		}
		r, _, errno := syscall.Syscall(syscall.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		if errno == syscall.EINTR {
			continue
		}
		if errno == syscall.EAGAIN {
			return false, nil
		}
		if errno != 0 {
			return false, errno
		}
		written := int(r)
		c.srv.stats.writevs.Add(1)
		c.consumeLocked(written)
		if len(c.queue) > 0 && n < iovMax {
			return false, nil // the socket took less than offered: it is full
		}
	}
	c.trimQueueLocked()
	return true, nil
}

// consumeLocked drops written bytes from the head of the queue.
func (c *Conn) consumeLocked(written int) {
	c.queued -= written
	i := 0
	for ; i < len(c.queue); i++ {
		f := c.queue[i]
		rest := f.Len() - c.partial
		if written < rest {
			c.partial += written
			break
		}
		written -= rest
		c.partial = 0
		f.Release()
		c.queue[i] = nil
	}
	// Keep the backing array: shift what is left to the front.
	rest := copy(c.queue, c.queue[i:])
	clear(c.queue[rest:])
	c.queue = c.queue[:rest]
}

// queueArray is the pooled backing array of a connection's queue.
type queueArray [iovMax]*wsframe.Frame

// queuePool recycles queue arrays so that an idle connection holds none and
// a busy one allocates none.
var queuePool = sync.Pool{New: func() any { return new(queueArray) }}

// reserveLocked makes sure the queue has a backing array.
func (c *Conn) reserveLocked() {
	if c.queue == nil {
		c.queue = queuePool.Get().(*queueArray)[:0]
	}
}

// trimQueueLocked returns an emptied queue's array to the pool. An array
// that append grew past iovMax did not come from the pool and is left to
// the garbage collector.
func (c *Conn) trimQueueLocked() {
	if len(c.queue) != 0 || c.queue == nil {
		return
	}
	if cap(c.queue) == iovMax {
		queuePool.Put((*queueArray)(c.queue[:iovMax]))
	}
	c.queue = nil
}

// flush runs on its own goroutine while the socket is full: it hands the
// queue to netpoll's writer and waits in Flush (bounded by WriteTimeout)
// until the poller has written it, then goes again until the queue is
// empty. Only this goroutine touches netpoll's writer.
func (c *Conn) flush() {
	var batch []*wsframe.Frame
	for {
		c.wmu.Lock()
		if c.wclosed || len(c.queue) == 0 {
			c.flushing = false
			if c.closeQueued && !c.wclosed {
				c.wclosed = true
				c.shutdownWriteLocked()
			}
			c.wmu.Unlock()
			return
		}
		batch = append(batch[:0], c.queue...)
		partial := c.partial
		c.partial = 0
		clear(c.queue)
		c.queue = c.queue[:0]
		c.wmu.Unlock()

		w := c.nc.Writer()
		size := 0
		for i, f := range batch {
			b := f.Bytes()
			if i == 0 {
				b = b[partial:]
			}
			size += len(b)
			if _, err := w.WriteBinary(b); err != nil {
				break
			}
		}
		err := w.Flush()
		c.srv.stats.flushes.Add(1)
		c.wmu.Lock()
		c.queued -= size
		if err != nil {
			c.wmu.Unlock()
			// The poller may still hold these bytes: never recycle them.
			for _, f := range batch {
				f.Abandon()
			}
			c.wmu.Lock()
			c.flushing = false
			c.failLocked()
			return
		}
		c.wmu.Unlock()
		for i, f := range batch {
			f.Release()
			batch[i] = nil
		}
	}
}

// reject answers a handshake that cannot succeed: f, the HTTP response, is
// queued as the connection's last bytes, and once it is written the sending
// side is shut down (see shutdownWriteLocked).
func (c *Conn) reject(f *wsframe.Frame) {
	c.srv.stats.handshakeFailed.Add(1)
	c.state.CompareAndSwap(stateHandshake, stateRejected)
	c.wmu.Lock()
	if c.closeQueued || c.wclosed {
		c.wmu.Unlock()
		f.Release()
		return
	}
	c.closeQueued = true
	c.queue = append(c.queue, f)
	c.queued += f.Len()
	c.writeLocked()
}

// queueCloseLocked queues a close frame for reason. With dropQueued the
// frames not yet handed to the socket are dropped first (a slow consumer
// need not receive its backlog before learning why it is closed).
func (c *Conn) queueCloseLocked(reason *CloseError, dropQueued bool) {
	if c.closeQueued || c.wclosed {
		return
	}
	c.closeQueued = true
	if dropQueued {
		keep := 0
		if !c.flushing && c.partial > 0 {
			keep = 1 // a started frame must be finished or the stream is corrupt
		}
		for _, f := range c.queue[keep:] {
			c.queued -= f.Len()
			f.Release()
		}
		clear(c.queue[keep:])
		c.queue = c.queue[:keep]
	}
	c.state.Store(stateClosing)
	c.srv.stats.closeSent(reason.Code)
	f := wsframe.Close(reason.Code, reason.Reason)
	c.queue = append(c.queue, f)
	c.queued += f.Len()
}

// CloseWith closes the connection with a close frame carrying reason: the
// frame is queued behind what the socket already has and the socket closes
// once it is written (or WriteTimeout passes). Idempotent: only the first
// reason is sent.
func (c *Conn) CloseWith(reason *CloseError) {
	c.wmu.Lock()
	c.queueCloseLocked(reason, reason.Code == ClosePolicy)
	c.writeLocked()
}

// failLocked handles a socket that can no longer be written: everything
// queued is dropped and the socket closed. Unlocks wmu.
func (c *Conn) failLocked() {
	alreadyClosed := c.wclosed
	c.wclosed = true
	c.dropQueueLocked()
	c.wmu.Unlock()
	if !alreadyClosed {
		c.closeSocket()
	}
}

func (c *Conn) dropQueueLocked() {
	for _, f := range c.queue {
		f.Release()
	}
	c.queue = nil
	c.queued = 0
	c.partial = 0
}

// shutdownWriteLocked ends the sending side once the last bytes are written:
// the peer reads everything, then EOF, and answers by closing its side,
// which the poller sees as a hang-up (netpoll then closes the connection).
// Input meanwhile is discarded. The sweeper drops the socket if the peer
// takes longer than CloseTimeout. Called with wmu held.
func (c *Conn) shutdownWriteLocked() {
	if c.fdReleased {
		return
	}
	c.closingSince.Store(c.srv.clock.Load())
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		// Not connected any more: the poller reports the hang-up anyway;
		// make sure of it.
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

// closeSocket ends the TCP connection by shutting the socket down; the
// poller sees the hang-up and netpoll closes the connection from a goroutine
// of its own, which runs onClosed. netpoll's Close is not used: called while
// the connection's onRequest runs on the poller (runCallback), it leaves the
// rest of the close to that callback, where freeing the connection's poller
// state waits for the poller itself, forever. A shutdown also runs no hub
// code here, which matters because the hub calls Send with its channel locks
// held. Safe from any goroutine, idempotent, never blocks.
func (c *Conn) closeSocket() {
	c.wmu.Lock()
	if !c.fdReleased {
		// An error means the socket is not connected any more, which the
		// poller reports as a hang-up too.
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
	c.wmu.Unlock()
}

// trimInput drops the input node that a connection served on the poller
// kept (runCallback): netpoll's Release frees an emptied tail node only off
// the poller, as here. Called by the sweeper once the connection was quiet
// for trimAfter; the next read starts in the pool again.
func (c *Conn) trimInput() {
	if !c.rmu.TryLock() {
		return // reading after all (or waiting in the hub): next sweep
	}
	if c.trimPending.Load() && c.state.Load() == stateOpen {
		c.busy.Store(false)
		_ = c.nc.Reader().Release()
		c.trimPending.Store(false)
	}
	c.rmu.Unlock()
}

// onClosed runs exactly once, from netpoll's close callback, before netpoll
// closes the file descriptor: after it no direct write can reach a reused fd.
// It frees the connection's queue, reassembly buffer, subscriptions and
// registry entry.
func (c *Conn) onClosed() {
	c.wmu.Lock()
	c.wclosed = true
	c.fdReleased = true
	c.dropQueueLocked()
	c.wmu.Unlock()
	prev := c.state.Swap(stateClosed)
	if prev == stateClosed {
		return
	}
	c.dropInbuf()
	if c.frag != nil {
		bytebufferpool.Put(c.frag)
		c.frag = nil
	}
	c.srv.connClosed(c, prev)
	if prev == stateHTTP && c.httpHead != nil {
		head := c.httpHead
		c.httpHead = nil
		c.srv.handoffHTTP(c.fd, head)
	}
}
