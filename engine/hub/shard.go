package hub

import (
	"sync"
	"sync/atomic"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
)

// maxRun caps how many publications (or presence pushes) of one channel a
// worker hands to a subscriber in one SendBatch (one writev).
const maxRun = 64

type opKind uint8

const (
	opPub      opKind = iota // deliver d
	opPresence               // deliver d (a join or leave) to presence listeners
	opAdd                    // sub becomes pending: buffer publications for it
	opActivate               // sub's reply is out: flush after pos, then live (and a listener if listener)
	opRemove                 // sub leaves
	opBarrier                // wg.Done once everything before is delivered
)

// delivery is one publication (or presence push) encoded once per encoding
// in use. The broadcaster gives every shard it queues d to one reference of
// each frame.
type delivery struct {
	pub    *codec.Publication       // nil for a presence push
	frames [numForms]*wsframe.Frame // index form; nil when no subscriber uses it
	// left counts the shards that have yet to hand a publication out;
	// the last one takes it out of its channel's inflight.
	left atomic.Int32
}

func (d *delivery) release() {
	for _, f := range d.frames {
		if f != nil {
			f.Release()
		}
	}
}

// item is one entry of a shard's queue.
type item struct {
	kind     opKind
	form     form
	listener bool // opActivate: sub asked for presence pushes
	ch       *channel
	d        *delivery
	sub      Subscriber
	pos      codec.StreamPosition
	wg       *sync.WaitGroup
}

// drop releases what an item that will never be processed holds.
func (it *item) drop() {
	switch it.kind {
	case opPub, opPresence:
		it.d.release()
	case opBarrier:
		it.wg.Done()
	}
}

// local is one channel's subscribers on one shard. Only that shard's worker
// touches it.
type local struct {
	subs    [numForms][]Subscriber // active subscribers per frame form
	index   map[Subscriber]int
	listen  [numForms][]Subscriber // active presence listeners per frame form (a subset of subs)
	lindex  map[Subscriber]int     // index in listen; nil until the first listener
	pending []*pendingSub
	// Queued and not yet sent: publications (run) or presence pushes
	// (prun), never both, so that sending one then the other keeps their
	// order.
	run     []*delivery
	prun    []*delivery
	touched bool // in shard.touched
}

func (l *local) empty() bool {
	for _, subs := range l.subs {
		if len(subs) > 0 {
			return false
		}
	}
	return len(l.pending) == 0
}

// pendingSub is a subscriber whose subscribe reply is not out yet: what is
// published meanwhile waits here (one frame reference each).
type pendingSub struct {
	sub      Subscriber
	form     form
	listener bool // buffers presence pushes too
	buf      []buffered
}

type buffered struct {
	f   *wsframe.Frame
	pub *codec.Publication // nil for a presence push
}

// shard is one fan-out worker and its input queue.
type shard struct {
	h  *Hub
	id int

	mu     sync.Mutex
	q      []item
	closed bool
	wake   chan struct{}

	// Worker-owned.
	spare   []item
	touched []*local
	scratch []*wsframe.Frame

	deliveries atomic.Uint64
	sends      atomic.Uint64
	batches    atomic.Uint64
	presence   atomic.Uint64
	_          [64]byte
}

func newShard(h *Hub, id int) *shard {
	return &shard{h: h, id: id, wake: make(chan struct{}, 1)}
}

// push queues it; it never blocks on the worker.
func (sh *shard) push(it item) {
	sh.mu.Lock()
	if sh.closed {
		sh.mu.Unlock()
		it.drop()
		return
	}
	wasEmpty := len(sh.q) == 0
	sh.q = append(sh.q, it)
	sh.mu.Unlock()
	if wasEmpty {
		select {
		case sh.wake <- struct{}{}:
		default:
		}
	}
}

func (sh *shard) depth() int {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return len(sh.q)
}

func (sh *shard) close() {
	sh.mu.Lock()
	sh.closed = true
	sh.mu.Unlock()
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

func (sh *shard) run() {
	defer sh.h.workers.Done()
	for {
		sh.mu.Lock()
		for len(sh.q) == 0 && !sh.closed {
			sh.mu.Unlock()
			<-sh.wake
			sh.mu.Lock()
		}
		items := sh.q
		sh.q = sh.spare[:0]
		closed := sh.closed
		sh.mu.Unlock()
		if closed {
			for i := range items {
				items[i].drop()
			}
			return
		}
		sh.process(items)
		for i := range items {
			if it := &items[i]; it.kind == opPub && it.d.left.Add(-1) == 0 {
				it.ch.handedOut()
			}
		}
		clear(items)
		sh.spare = items[:0]
	}
}

// process applies a drained batch in queue order. Publications (and
// presence pushes) are gathered per channel and sent when an op of that
// channel, a push of the other kind or the end of the batch comes, so a
// subscriber gets every publication of the batch in one SendBatch.
func (sh *shard) process(items []item) {
	for i := range items {
		it := &items[i]
		if it.kind == opBarrier {
			sh.flushAll()
			it.wg.Done()
			continue
		}
		l := it.ch.locals[sh.id]
		switch it.kind {
		case opPub:
			if l == nil {
				it.d.release()
				continue
			}
			sh.touch(l)
			sh.flushPresence(l)
			l.run = append(l.run, it.d)
			if len(l.run) >= maxRun {
				sh.flushPubs(l)
			}
		case opPresence:
			if l == nil {
				it.d.release()
				continue
			}
			sh.touch(l)
			sh.flushPubs(l)
			l.prun = append(l.prun, it.d)
			if len(l.prun) >= maxRun {
				sh.flushPresence(l)
			}
		case opAdd:
			if l == nil {
				l = &local{index: make(map[Subscriber]int)}
				it.ch.locals[sh.id] = l
			}
			sh.flush(l)
			l.pending = append(l.pending, &pendingSub{sub: it.sub, form: it.form, listener: it.listener})
		case opActivate:
			if l != nil {
				sh.flush(l)
				sh.activate(l, it)
			}
		case opRemove:
			if l != nil {
				sh.flush(l)
				sh.remove(l, it)
				if l.empty() {
					it.ch.locals[sh.id] = nil
				}
			}
		}
	}
	sh.flushAll()
}

// touch marks l for the flush at the end of the batch.
func (sh *shard) touch(l *local) {
	if !l.touched {
		l.touched = true
		sh.touched = append(sh.touched, l)
	}
}

func (sh *shard) flushAll() {
	for i, l := range sh.touched {
		sh.flush(l)
		l.touched = false
		sh.touched[i] = nil
	}
	sh.touched = sh.touched[:0]
}

// pendingIn counts l's pending subscribers of frame form e (only the
// presence listeners among them with listeners).
func (l *local) pendingIn(e int, listeners bool) int {
	n := 0
	for _, p := range l.pending {
		if int(p.form) == e && (p.listener || !listeners) {
			n++
		}
	}
	return n
}

// flush sends what l has queued (at most one of the two runs is not
// empty).
func (sh *shard) flush(l *local) {
	sh.flushPubs(l)
	sh.flushPresence(l)
}

// flushPresence sends l's queued presence pushes to its listeners: per
// encoding, one Retain per frame for the whole shard, then one Send or
// SendBatch per listener.
func (sh *shard) flushPresence(l *local) {
	ds := l.prun
	if len(ds) == 0 {
		return
	}
	for e := range l.listen {
		ls := l.listen[e]
		// Pending listeners (reply not out yet) keep the pushes with
		// their buffered publications, in queue order.
		np := l.pendingIn(e, true)
		n := len(ls) + np
		fs := sh.share(ds, e, n)
		if len(fs) == 0 {
			continue
		}
		sendAll(ls, fs)
		if np > 0 {
			for _, p := range l.pending {
				if p.listener && int(p.form) == e {
					for _, f := range fs {
						p.buf = append(p.buf, buffered{f: f})
					}
				}
			}
		}
		sh.presence.Add(uint64(len(ls) * len(fs)))
		clear(fs)
		sh.scratch = fs[:0]
	}
	clear(ds)
	l.prun = ds[:0]
}

// share takes, for n receivers, one reference of each frame of ds in
// encoding e (one Retain per frame for them all) and returns those frames
// in sh.scratch; a frame that nobody receives is released.
func (sh *shard) share(ds []*delivery, e, n int) []*wsframe.Frame {
	fs := sh.scratch[:0]
	for _, d := range ds {
		f := d.frames[e]
		switch {
		case f == nil:
			continue
		case n == 0:
			f.Release()
			continue
		case n > 1:
			f.Retain(n - 1)
		}
		fs = append(fs, f)
	}
	return fs
}

// sendAll hands fs (one reference each per receiver, taken by share) to
// every receiver: one Send for one frame, else one SendBatch (one writev).
func sendAll(receivers []Subscriber, fs []*wsframe.Frame) {
	switch len(fs) {
	case 0:
	case 1:
		for _, s := range receivers {
			s.Send(fs[0])
		}
	default:
		for _, s := range receivers {
			s.SendBatch(fs)
		}
	}
}

// flushPubs sends l's queued publications to its subscribers: per
// encoding, one Retain per frame for the whole shard, then one Send (one
// publication) or one SendBatch (several) per subscriber.
func (sh *shard) flushPubs(l *local) {
	ds := l.run
	if len(ds) == 0 {
		return
	}
	for e := range l.subs {
		subs := l.subs[e]
		np := l.pendingIn(e, false)
		n := len(subs) + np
		fs := sh.share(ds, e, n)
		if len(fs) == 0 {
			continue
		}
		if len(subs) > 0 {
			sendAll(subs, fs)
			if len(fs) > 1 {
				sh.batches.Add(uint64(len(subs)))
			}
			sh.sends.Add(uint64(len(subs)))
			sh.deliveries.Add(uint64(len(subs) * len(fs)))
		}
		if np > 0 {
			for _, p := range l.pending {
				if int(p.form) != e {
					continue
				}
				for _, d := range ds {
					if f := d.frames[e]; f != nil {
						p.buf = append(p.buf, buffered{f: f, pub: d.pub})
					}
				}
			}
		}
		clear(fs)
		sh.scratch = fs[:0]
	}
	clear(ds)
	l.run = ds[:0]
}

// activate makes a pending subscriber live: what it buffered after the
// position its reply carried is sent first, the rest released.
func (sh *shard) activate(l *local, it *item) {
	var p *pendingSub
	for i, q := range l.pending {
		if q.sub == it.sub {
			p = q
			last := len(l.pending) - 1
			l.pending[i] = l.pending[last]
			l.pending[last] = nil
			l.pending = l.pending[:last]
			break
		}
	}
	if p == nil {
		return
	}
	fs := sh.scratch[:0]
	for _, b := range p.buf {
		// Publications the reply's position covers are dropped; presence
		// pushes (no pub) are all kept.
		if b.pub != nil && b.pub.Epoch == it.pos.Epoch && b.pub.Offset <= it.pos.Offset {
			b.f.Release()
			continue
		}
		if b.pub == nil {
			sh.presence.Add(1)
		}
		fs = append(fs, b.f)
	}
	switch len(fs) {
	case 0:
	case 1:
		p.sub.Send(fs[0])
	default:
		p.sub.SendBatch(fs)
	}
	if len(fs) > 0 {
		sh.sends.Add(1)
		sh.deliveries.Add(uint64(len(fs)))
	}
	clear(fs)
	sh.scratch = fs[:0]
	e := p.form
	l.index[p.sub] = len(l.subs[e])
	l.subs[e] = append(l.subs[e], p.sub)
	if it.listener {
		if l.lindex == nil {
			l.lindex = make(map[Subscriber]int)
		}
		l.lindex[p.sub] = len(l.listen[e])
		l.listen[e] = append(l.listen[e], p.sub)
	}
}

// remove drops a subscriber, live or pending.
func (sh *shard) remove(l *local, it *item) {
	if i, ok := l.lindex[it.sub]; ok {
		ls := l.listen[it.form]
		last := len(ls) - 1
		moved := ls[last]
		ls[i] = moved
		l.lindex[moved] = i
		ls[last] = nil
		l.listen[it.form] = ls[:last]
		delete(l.lindex, it.sub)
	}
	if i, ok := l.index[it.sub]; ok {
		subs := l.subs[it.form]
		last := len(subs) - 1
		moved := subs[last]
		subs[i] = moved
		l.index[moved] = i
		subs[last] = nil
		l.subs[it.form] = subs[:last]
		delete(l.index, it.sub)
		return
	}
	for i, p := range l.pending {
		if p.sub == it.sub {
			for _, b := range p.buf {
				b.f.Release()
			}
			last := len(l.pending) - 1
			l.pending[i] = l.pending[last]
			l.pending[last] = nil
			l.pending = l.pending[:last]
			return
		}
	}
}

// Flush waits until every publication queued to the shard workers before
// it was called has been handed to its subscribers (for a drain: publish,
// Flush, then close the connections).
func (h *Hub) Flush() {
	if h.closed.Load() {
		return
	}
	h.sync()
}

// sync waits until every shard has delivered everything queued before it.
func (h *Hub) sync() {
	var wg sync.WaitGroup
	wg.Add(len(h.shards))
	for _, sh := range h.shards {
		sh.push(item{kind: opBarrier, wg: &wg})
	}
	wg.Wait()
}
