package engine

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"
)

// Connection states (Conn.state): the connection as the reader and the
// sweeper see it. The write side has its own state (Conn.wstate, below).
const (
	stateHandshake uint32 = iota // accepted, upgrade request not yet complete
	stateHTTP                    // handed to net/http
	stateRejected                // handshake refused; the response is on its way
	stateOpen                    // upgraded WebSocket
	stateClosing                 // close frame queued; input is discarded
	stateClosed                  // netpoll closed the connection, resources freed
)

// Write-side states (Conn.wstate, under Conn.wmu). See doc.go, "The write
// side", for who moves the state and when.
const (
	// wOpen: frames are accepted. The queue may hold frames the socket has
	// not taken yet; then the write poller is armed for the socket.
	wOpen uint8 = iota
	// wClosing: the connection's last bytes (a close frame, or a rejected
	// handshake's response) are queued; nothing more is accepted. Once
	// they are written the sending side is shut down (wShut).
	wClosing
	// wShut: everything was written and the sending side is shut down;
	// the peer has CloseTimeout to close its side.
	wShut
	// wDead: the socket failed or was dropped (shutdown(2) of both
	// sides), or netpoll closed it. The queue is empty and stays empty.
	wDead
)

// Conn is one accepted connection. Ownership (netpoll's model): one reader,
// the netpoll OnRequest goroutine, owns the read side and the fields marked
// "reader"; any goroutine may Send, and the write side is guarded by wmu.
// An idle connection holds no goroutine, timer, map or buffer of its own.
type Conn struct {
	// Context is what onPrepare hands netpoll as the connection's context:
	// the Conn itself, so onRequest finds it with a type assertion and no
	// per-connection context value is allocated.
	context.Context

	srv *Server
	nc  netpoll.Connection
	fd  int
	id  uint64 // key of the connection in the write poller
	// wheel is the connection's place in the sweeper's timing wheel, under
	// the wheel's lock.
	wheel wheelSlot
	info  codec.ClientInfo
	enc   codec.Encoding

	state      atomic.Uint32
	lastActive atomic.Int64 // server clock (unix nanos) of the last frame read
	// closingSince is the server clock when the last bytes (close frame or
	// rejection) were written and the sending side shut down, 0 before.
	closingSince atomic.Int64
	// blockedSince is the server clock since which the socket has been full
	// with bytes waiting and took none of them, 0 when it is not full. The
	// sweeper drops a socket blocked for longer than WriteTimeout.
	blockedSince atomic.Int64

	// partialSince is the server clock when the input still incomplete
	// began: the first fragment of a message being reassembled, else the
	// frame (or request head) at the start of inbuf; 0 when there is none.
	// The sweeper closes the connection FrameTimeout after it (markPartial).
	partialSince atomic.Int64

	// busy is set while the connection reads often enough to be served on
	// netpoll's poller (runCallback); trimPending after a read, while it
	// may hold an input node that only a later Release drops (trimInput).
	busy        atomic.Bool
	trimPending atomic.Bool
	pingSent    atomic.Bool // the idle ping went out; reset by a read
	// fragOp is the opcode of the message being reassembled, 0 if none
	// (reader, under rmu; here to share a word with the flags above).
	fragOp ws.OpCode
	// streak counts consecutive reads less than busyWindow apart, up to
	// busyStreak (reader, under rmu).
	streak uint8
	// deflate: the connection negotiated permessage-deflate (set by the
	// upgrade, constant after it). fragDeflate: the message being
	// reassembled is compressed (reader, under rmu).
	deflate     bool
	fragDeflate bool

	// rmu is held by the reader (onRequest), by trimInput and by onClosed
	// while it marks the connection closed: netpoll lets one goroutine at a
	// time use a connection's reader, and its buffers are freed right after
	// the close callback.
	rmu sync.Mutex
	// reader, under rmu
	lastRead int64 // monotonic nanos of the previous onRequest
	// inbuf holds input that is not a complete frame (or request head) yet;
	// nil for a connection with no such input, i.e. nearly always.
	inbuf *bytebufferpool.ByteBuffer
	frag  *bytebufferpool.ByteBuffer // reassembled fragments, nil when none
	subs  []string                   // channels this connection subscribed to
	// httpHead holds the bytes read from a connection lent to net/http
	// (a pointer: rare, and every idle WebSocket would pay for a slice).
	httpHead *[]byte

	// The write side, under wmu. Every write is a non-blocking writev made
	// with wmu held, so the bytes of a frame are never referenced by anyone
	// once the call that wrote them returns.
	wmu    sync.Mutex
	wstate uint8
	// armed is set while the write poller waits for the socket to take
	// more: no one else writes then (the poller does when it can).
	armed bool
	// registered is set once the socket was added to the write poller's
	// epoll set; onClosed removes it before netpoll closes the fd.
	registered bool
	// fdReleased is set by onClosed: netpoll is about to close the
	// descriptor, whose number may then name another socket. No system
	// call touches c.fd after it.
	fdReleased bool
	// cmdStrikes counts rate-limited commands, less one per accepted
	// command; at rateLimitStrikes the connection is closed 1008.
	cmdStrikes uint16           // reader; here to share a word with the flags above
	queue      []*wsframe.Frame // frames waiting for the socket, oldest first
	partial    int              // bytes of queue[0] already written
	queued     int              // bytes of the queue not yet written

	// ---- Read-side limits (reader.go, protocol.go, upgrade.go). Reader
	// fields, under rmu; 32 bytes, nothing allocated until needed.

	// subIdx maps each channel of subs to its index there, so that
	// unsubscribe need not scan; nil below subIndexMin subscriptions.
	subIdx map[string]int32
	// cmdTAT is the command rate limiter's state (a token bucket kept as
	// GCRA, see allowCommand): the monotime at which the bucket is full
	// again; 0 for a full bucket.
	cmdTAT int64
	// scanned: during the handshake, how many bytes of the request head
	// were already searched for its end; once open, how many bytes of the
	// text message being reassembled are known to be valid UTF-8.
	scanned int32
	// inCharged is how many bytes of inbuf are charged to the server's
	// reassembly budget (MaxReassemblyBytes).
	inCharged int32

	// ipEntry is the client address's count this connection holds against
	// MaxConnsPerIP (admission.go), nil when none; set by the upgrade,
	// released by connClosed.
	ipEntry *ipEntry

	// ---- Authentication (authn.go). 24 bytes; nothing allocated without
	// token keys.

	// authn is who the connection is and what it may do: nil when no token
	// keys are configured (every channel open). Set by the reader (upgrade,
	// connect, refresh), read by the sweeper (token expiry) and the API
	// (disconnect).
	authn atomic.Pointer[connAuth]
	// connectBy is the server clock by which a connection that upgraded
	// without a token must have sent connect; 0 once it has, or when it
	// never had to.
	connectBy atomic.Int64
	// pubTAT is an anonymous connection's publish byte bucket (GCRA, as
	// cmdTAT; see allowPublish). Reader.
	pubTAT int64
}

// Info implements hub.Subscriber.
func (c *Conn) Info() codec.ClientInfo { return c.info }

// Encoding implements hub.Subscriber.
func (c *Conn) Encoding() codec.Encoding { return c.enc }

// Deflate implements hub's optional DeflateSubscriber: the connection
// negotiated permessage-deflate, so the hub hands it a publication's shared
// compressed frame.
func (c *Conn) Deflate() bool { return c.deflate }

// sendData queues f, a finished data frame (a reply, an echo), compressed
// when the connection negotiated permessage-deflate and f is worth it
// (Config.CompressionMinBytes).
func (c *Conn) sendData(f *wsframe.Frame) {
	if c.deflate {
		if z := c.srv.compressor.Frame(f); z != nil {
			f.Release()
			f = z
		}
	}
	c.Send(f)
}

// Send queues f (taking one reference) and never blocks. See SendBatch.
func (c *Conn) Send(f *wsframe.Frame) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wstate != wOpen {
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
// does not take now is written by the write poller once the socket has
// room, and a connection whose backlog passes WriteQueueBytes is closed
// 1008 "slow consumer" without delaying anyone else.
func (c *Conn) SendBatch(fs []*wsframe.Frame) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wstate != wOpen {
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

// writeLocked writes what it can of the queue unless the write poller owns
// the socket, then enforces the backlog bound.
func (c *Conn) writeLocked() {
	if !c.armed {
		c.writeNowLocked()
	}
	if c.wstate == wOpen && c.backlogLocked() > c.srv.cfg.WriteQueueBytes {
		c.srv.stats.slowConsumers.Add(1)
		c.queueCloseLocked(errSlowConsumer, true)
	}
}

// backlogLocked is what the slow-consumer bound applies to: the bytes
// queued behind the frame being written. A single frame larger than the
// bound (a big reply to a fast reader) is not a slow consumer; a socket that
// takes none of it for WriteTimeout is dropped by the sweeper instead.
func (c *Conn) backlogLocked() int {
	if len(c.queue) == 0 {
		return 0
	}
	return c.queued - (c.queue[0].Len() - c.partial)
}

// writeNowLocked makes one non-blocking attempt to write the queue and
// moves the write state on: an empty queue in wClosing shuts the sending
// side down; a full socket arms the write poller; an error drops the
// socket. Called by the sender with the socket not armed, or by the write
// poller once the socket became writable.
func (c *Conn) writeNowLocked() {
	if c.wstate >= wShut || len(c.queue) == 0 {
		return
	}
	done, progressed, err := c.writevLocked()
	switch {
	case err != nil:
		c.srv.stats.writeErrors.Add(1)
		c.failLocked()
	case done:
		c.blockedSince.Store(0)
		if c.wstate == wClosing {
			c.shutdownWriteLocked()
		}
	default:
		if progressed || c.blockedSince.Load() == 0 {
			now := c.srv.now()
			c.blockedSince.Store(now)
			c.srv.wheel.scheduleBy(c, now+c.srv.cfg.WriteTimeout.Nanoseconds())
		}
		c.armLocked()
	}
}

// iovMax bounds the frames written by one writev; the rest wait for the
// next call. 64 iovecs keep the array on the stack.
const iovMax = 64

// writevLocked writes the head of the queue with non-blocking writevs until
// the queue is empty (done) or the socket is full, and drops the frames it
// completed. progressed reports that some bytes were written.
func (c *Conn) writevLocked() (done, progressed bool, err error) {
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
			if len(b) == 0 {
				continue // nothing to write; consumeLocked drops it
			}
			iov[n].Base = &b[0]
			iov[n].SetLen(len(b))
			n++
		}
		if n == 0 {
			c.consumeLocked(0)
			continue
		}
		r, _, errno := syscall.Syscall(syscall.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		switch errno {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false, progressed, nil
		default:
			return false, progressed, errno
		}
		c.srv.stats.writevs.Add(1)
		progressed = progressed || r > 0
		c.consumeLocked(int(r))
		if len(c.queue) > 0 && n < iovMax {
			return false, progressed, nil // the socket took less than offered: it is full
		}
	}
	c.trimQueueLocked()
	return true, progressed, nil
}

// consumeLocked drops written bytes from the head of the queue, and the
// empty frames that follow them.
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

// armLocked asks the write poller to write the queue once the socket has
// room. From here until then, only the write poller writes.
func (c *Conn) armLocked() {
	if c.fdReleased {
		return
	}
	if err := c.srv.wpoll.arm(c); err != nil {
		c.srv.log.Warn("write poller: arming a socket failed", "err", err)
		c.failLocked()
		return
	}
	c.srv.stats.socketFullWaits.Add(1)
}

// onWritable runs on the write poller once an armed socket can take more
// bytes (or failed: the writev then reports the error).
func (c *Conn) onWritable() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.armed = false
	if c.wstate == wOpen || c.wstate == wClosing {
		c.writeNowLocked()
	}
}

// reject answers a handshake that cannot succeed: f, the HTTP response, is
// queued as the connection's last bytes, and once it is written the sending
// side is shut down (see shutdownWriteLocked).
func (c *Conn) reject(f *wsframe.Frame) {
	c.srv.stats.handshakeFailed.Add(1)
	c.state.CompareAndSwap(stateHandshake, stateRejected)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wstate != wOpen {
		f.Release()
		return
	}
	c.wstate = wClosing
	c.reserveLocked()
	c.queue = append(c.queue, f)
	c.queued += f.Len()
	c.writeLocked()
}

// queueCloseLocked queues a close frame for reason and moves the write side
// to wClosing. With dropQueued the frames not yet started are dropped first
// (a slow consumer need not receive its backlog before learning why it is
// closed); a frame partly written is always finished, or the stream would
// be corrupt.
func (c *Conn) queueCloseLocked(reason *CloseError, dropQueued bool) {
	if c.wstate != wOpen {
		return
	}
	c.wstate = wClosing
	if dropQueued {
		keep := 0
		if c.partial > 0 {
			keep = 1
		}
		for _, f := range c.queue[keep:] {
			c.queued -= f.Len()
			f.Release()
		}
		clear(c.queue[keep:])
		c.queue = c.queue[:keep]
	}
	c.state.Store(stateClosing)
	// From here lastActive is when the close was queued (reads no longer
	// move it): the sweeper gives what is queued ahead of the close frame
	// WriteTimeout+CloseTimeout from then, however slowly the peer drains.
	c.lastActive.Store(c.srv.now())
	c.srv.stats.closeSent(reason.Code)
	f := wsframe.Close(reason.Code, reason.Reason)
	c.reserveLocked()
	c.queue = append(c.queue, f)
	c.queued += f.Len()
}

// CloseWith closes the connection with a close frame carrying reason: the
// frame is queued behind what the socket already has and the socket closes
// once it is written (or WriteTimeout passes). Idempotent: only the first
// reason is sent.
func (c *Conn) CloseWith(reason *CloseError) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.queueCloseLocked(reason, reason.Code == ClosePolicy)
	c.writeLocked()
}

// failLocked handles a socket that can no longer be written, or must be
// dropped: everything queued is dropped and both directions are shut down.
// The poller sees the hang-up and netpoll closes the connection (onClosed).
func (c *Conn) failLocked() {
	if c.wstate == wDead {
		return
	}
	c.wstate = wDead
	c.dropQueueLocked()
	if !c.fdReleased {
		// An error means the socket is not connected any more, which the
		// poller reports as a hang-up too.
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

func (c *Conn) dropQueueLocked() {
	for i, f := range c.queue {
		f.Release()
		c.queue[i] = nil
	}
	if c.queue != nil {
		c.queue = c.queue[:0]
		c.trimQueueLocked()
	}
	c.queued = 0
	c.partial = 0
	c.blockedSince.Store(0)
}

// shutdownWriteLocked ends the sending side once the last bytes are written:
// the peer reads everything, then EOF, and answers by closing its side,
// which the poller sees as a hang-up (netpoll then closes the connection).
// Input meanwhile is discarded. The sweeper drops the socket if the peer
// takes longer than CloseTimeout.
func (c *Conn) shutdownWriteLocked() {
	c.wstate = wShut
	if c.fdReleased {
		return
	}
	now := c.srv.now()
	c.closingSince.Store(now)
	c.srv.wheel.scheduleBy(c, now+c.srv.cfg.CloseTimeout.Nanoseconds())
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		// Not connected any more: the poller reports the hang-up anyway;
		// make sure of it.
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

// closeSocket drops the connection: the queue is freed and the socket shut
// down (failLocked); the poller sees the hang-up and netpoll closes the
// connection from a goroutine of its own, which runs onClosed. netpoll's
// Close is not used: called while the connection's onRequest runs on the
// poller (runCallback), it leaves the rest of the close to that callback,
// where freeing the connection's poller state waits for the poller itself,
// forever. A shutdown also runs no hub code here, which matters because the
// hub calls Send with its channel locks held. Safe from any goroutine,
// idempotent, never blocks.
func (c *Conn) closeSocket() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.failLocked()
}

// markPartial notes that the input kept in inbuf (a frame or request head
// not complete yet) started now: FrameTimeout runs from here.
func (c *Conn) markPartial() {
	now := c.srv.now()
	c.partialSince.Store(now)
	c.srv.wheel.scheduleBy(c, now+c.srv.cfg.FrameTimeout.Nanoseconds())
}

// trimInput drops the input node that a connection served on the poller
// kept (runCallback): netpoll's Release frees an emptied tail node only off
// the poller, as here. Called by the sweeper once the connection was quiet
// for trimAfter; the next read starts in the pool again. The state is read
// under rmu, which onClosed holds to mark the connection closed, and
// netpoll frees the buffers only after its close callback returns: so the
// Release never reaches a closed (or reused) buffer.
func (c *Conn) trimInput() {
	if !c.rmu.TryLock() {
		return // reading after all (or closing): next sweep
	}
	defer c.rmu.Unlock()
	if c.trimPending.Load() && c.state.Load() == stateOpen {
		c.busy.Store(false)
		_ = c.nc.Reader().Release()
		c.trimPending.Store(false)
	}
}

// onClosed runs exactly once, from netpoll's close callback, before netpoll
// closes the file descriptor and frees the connection's buffers: after it
// no write can reach a reused fd and no trim a freed buffer. It frees the
// connection's queue, reassembly buffer, subscriptions and registry entry.
// netpoll never runs it concurrently with onRequest.
func (c *Conn) onClosed() {
	c.wmu.Lock()
	if c.registered {
		c.srv.wpoll.remove(c)
		c.registered = false
	}
	c.armed = false
	c.fdReleased = true
	c.wstate = wDead
	c.dropQueueLocked()
	c.wmu.Unlock()

	c.rmu.Lock()
	prev := c.state.Swap(stateClosed)
	if prev != stateClosed {
		// The reader's buffers are freed under its lock, like every other
		// change to the reader's state.
		c.dropInbuf()
		c.dropFrag()
	}
	c.rmu.Unlock()
	if prev == stateClosed {
		return
	}
	c.srv.connClosed(c, prev)
	if prev == stateHTTP && c.httpHead != nil {
		head := *c.httpHead
		c.httpHead = nil
		// The poller may have read more of the request (a body arriving
		// while onRequest detached the socket); the connection is off
		// the poller now and its buffer not yet freed: net/http gets
		// those bytes too, or the request would wait for them forever.
		if r := c.nc.Reader(); r.Len() > 0 {
			if more, err := r.Next(r.Len()); err == nil {
				head = append(head, more...)
			}
		}
		c.srv.handoffHTTP(c.fd, head, c.nc.RemoteAddr())
	}
}
