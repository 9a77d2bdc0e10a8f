package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bytedance/gopkg/util/gopool"
	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"

	"github.com/fanout-dev/fanout/codec"
)

// Phases of a worker.
const (
	phaseConnect int32 = iota // ramping connections
	phaseReady                // connected, waiting for start
	phaseRun                  // load phase
	phaseDrain                // load stopped, collecting in-flight messages
	phaseDone                 // closing
)

// agent is the part of a run one process executes: it holds its share of
// the connections and reports to the coordinator. With --procs 1 it runs
// inside the coordinator's process; otherwise in a worker process.
type agent struct {
	cfg    *Config
	index  int
	share  share
	t0     time.Time
	proto  *protocol
	dialer *dialer
	emitMu sync.Mutex
	enc    *json.Encoder

	ctr         counters
	connFails   causeSet // connect failures by cause
	disconnects causeSet // established connections lost, by cause
	pubErrs     causeSet // publish error replies by code
	subErrs     causeSet // connected but never ready, by cause
	decodeErrs  causeSet // protocol errors that did not end a connection
	slowCauses  causeSet // how non-reading subscribers ended
	lat         *latRecorder
	handshake   lockedHist
	series      *seriesRec
	prof        cpuProfile

	subs []*client // non-publisher connections
	pubs []*client

	phase     atomic.Int32
	loadStart atomic.Int64 // unix ns
	loadStop  atomic.Int64
	stopCh    chan struct{}   // closed when the load phase ends
	sem       chan struct{}   // bounds handshakes in progress
	bg        sync.WaitGroup  // background goroutines (probes, churn)
	pubWG     sync.WaitGroup  // publishers
	runCtx    context.Context // ends at finish: aborts reconnects
	cancelRun context.CancelFunc
}

// Messages between coordinator and workers: one JSON object per line.
type ctrlMsg struct {
	Type   string  `json:"type"` // config, start, publish, stop, finish
	Config *Config `json:"config,omitempty"`
	Index  int     `json:"index,omitempty"`
	Count  int     `json:"count,omitempty"`
	T0     int64   `json:"t0,omitempty"`
}

type workerMsg struct {
	Type   string        `json:"type"` // progress, ready, started, stopped, result, error
	Index  int           `json:"index"`
	Counts *Counts       `json:"counts,omitempty"`
	P50    int64         `json:"p50_us,omitempty"` // last second
	P99    int64         `json:"p99_us,omitempty"`
	Result *WorkerResult `json:"result,omitempty"`
	Err    string        `json:"err,omitempty"`
}

// WorkerResult is everything one process measured.
type WorkerResult struct {
	Index           int              `json:"index"`
	Counts          Counts           `json:"counts"`
	ConnectFailures map[string]int64 `json:"connect_failures"`
	NotReady        map[string]int64 `json:"not_ready"`
	ProtocolErrors  map[string]int64 `json:"protocol_errors"`
	Disconnects     map[string]int64 `json:"disconnects"`
	PublishErrors   map[string]int64 `json:"publish_errors"`
	SlowOutcomes    map[string]int64 `json:"slow_outcomes"`
	Handshake       HistData         `json:"handshake"`
	Latency         HistData         `json:"latency"`
	Series          []Second         `json:"series"`
	CPUUser         float64          `json:"cpu_user_s"`
	CPUSys          float64          `json:"cpu_sys_s"`
	MaxRSS          int64            `json:"max_rss_bytes"`
	LoadStart       int64            `json:"load_start_ns"`
	LoadStop        int64            `json:"load_stop_ns"`
}

var netpollOnce sync.Once

// inlineCallbacks makes netpoll run connection callbacks on its poller
// goroutine instead of handing each readable event to a pool goroutine.
// With broadcast traffic every message to every subscriber is its own
// event, and that handoff (a goroutine start and a scheduler wake-up) cost
// more than reading and timing the message (a long-lived worker fed by a
// channel saved only part of it). The poller must never wait for anything
// that needs the poller, so: onRequest never blocks (wsConn.onRequest);
// except in echo mode (echo clients send from the callback, and a write
// that waits for socket space waits for the poller, so echo uses the pool)
// no callback writes (pings and close frames are answered by a goroutine:
// wsConn.reply); and started connections are never closed with Close but
// with wsConn.shutdown, as Close during a callback makes netpoll free the
// connection's poller state from that callback, which waits for the poller.
var inlineCallbacks atomic.Bool

// readBufferSize is the size of a connection's netpoll input buffer nodes,
// hence the most one read takes from a socket. Each connection keeps one
// node while idle, so it costs that much memory per connection. 1 KiB
// capped reads at about four broadcast frames, and with ~250-byte frames one
// frame in four was split over two reads (two syscalls and a copy); at
// 4 KiB a read carries up to ~16 frames when the server coalesces and one
// frame in ~16 is split: at full rate the client's CPU per message halved.
// Larger nodes gained little more and cost memory (10,000 connections at
// 64 KiB held over 1 GiB).
const readBufferSize = 4 << 10

// configureNetpoll tunes netpoll for many client sockets: moderate input
// buffers (readBufferSize), a poller per two cores (callbacks run inline on
// them when inlineCallbacks is set, so they are the client's readers: on a
// 16-core machine a poller per four cores capped a broadcast run at three
// cores' worth of reading), no log spam.
func configureNetpoll() {
	netpollOnce.Do(func() {
		netpoll.LinkBufferCap = readBufferSize
		_ = netpoll.Configure(netpoll.Config{
			PollerNum:    max(1, runtime.GOMAXPROCS(0)/2),
			BufferSize:   readBufferSize,
			LoggerOutput: io.Discard,
			LoadBalance:  netpoll.RoundRobin,
			Runner:       runCallback,
		})
	})
}

// runCallback is netpoll's runner for connection callbacks.
func runCallback(ctx context.Context, f func()) {
	if !inlineCallbacks.Load() {
		gopool.CtxGo(ctx, f)
		return
	}
	// Like the pool, do not let a panicking callback end the process (and
	// the poller with it).
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(os.Stderr, "flood: panic in a connection callback: %v\n%s", r, debug.Stack())
		}
	}()
	f()
}

// runWorker is a worker's life: it reads the config and commands from in
// and writes progress and its result to out. When in closes (the
// coordinator is gone) it stops at once.
func runWorker(in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	var first ctrlMsg
	if err := dec.Decode(&first); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if first.Type != "config" || first.Config == nil {
		return errors.New("first message is not the config")
	}
	cmds := make(chan ctrlMsg, 4)
	go func() {
		defer close(cmds)
		for {
			var m ctrlMsg
			if err := dec.Decode(&m); err != nil {
				return
			}
			cmds <- m
		}
	}()
	a, err := newAgent(first.Config, first.Index, first.Count, time.Unix(0, first.T0), out)
	if err != nil {
		a.emit(workerMsg{Type: "error", Err: err.Error()})
		return err
	}
	return a.run(cmds)
}

func newAgent(cfg *Config, index, count int, t0 time.Time, out io.Writer) (*agent, error) {
	configureNetpoll()
	inlineCallbacks.Store(cfg.Mode != modeEcho)
	a := &agent{
		cfg:    cfg,
		index:  index,
		share:  cfg.split(count)[index],
		t0:     t0,
		proto:  newProtocol(cfg),
		enc:    json.NewEncoder(out),
		lat:    newLatRecorder(),
		series: newSeriesRec(),
		stopCh: make(chan struct{}),
		sem:    make(chan struct{}, cfg.DialConcurrency),
	}
	a.ctr.lat = a.lat
	d, err := newDialer(cfg, a.proto.subprotocol())
	if err != nil {
		return a, err
	}
	a.dialer = d
	a.plan()
	return a, nil
}

// plan creates the clients of this worker's share.
func (a *agent) plan() {
	cfg := a.cfg
	channel := []byte(cfg.Channel) // shared, read-only
	for i := 0; i < a.share.Publishers; i++ {
		c := &client{a: a, gid: -1 - i, role: rolePub, tag: uint32(i + 1), channel: channel}
		if cfg.Rate == 0 {
			c.window = make(chan struct{}, cfg.Inflight)
		}
		a.pubs = append(a.pubs, c)
	}
	a.subs = make([]*client, a.share.N)
	for i := range a.subs {
		gid := a.share.First + i
		c := &client{a: a, gid: gid, channel: channel}
		switch cfg.Mode {
		case modeConnect:
			c.role = roleConn
		case modeEcho:
			c.role = roleEcho
			c.channel = []byte(cfg.Channel + ".echo." + strconv.Itoa(gid))
		default:
			c.role = roleSub
			if cfg.isSlow(gid) {
				c.role = roleSlow
			}
		}
		a.subs[i] = c
	}
}

func (a *agent) emit(m workerMsg) {
	m.Index = a.index
	a.emitMu.Lock()
	defer a.emitMu.Unlock()
	_ = a.enc.Encode(m)
}

func (a *agent) emitProgress(typ string) {
	cs := a.ctr.snapshot()
	p50, p99 := a.series.lastPercentiles()
	a.emit(workerMsg{Type: typ, Counts: &cs, P50: p50, P99: p99})
}

func (a *agent) measuring() bool {
	p := a.phase.Load()
	return p == phaseRun || p == phaseDrain
}

func (a *agent) running() bool { return a.phase.Load() == phaseRun }

// deliver counts one measured message sent at t and received at now
// (unix ns).
func (a *agent) deliver(shard int, t, now int64) {
	d := now - t
	if d < 0 {
		d = 0
	}
	a.lat.record(shard, time.Duration(d)) // counts the delivery too
}

// run executes the phases as the coordinator commands them.
func (a *agent) run(cmds <-chan ctrlMsg) error {
	hard := time.NewTimer(time.Until(a.t0.Add(a.cfg.hardDeadline() + 10*time.Second)))
	defer hard.Stop()
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	a.runCtx, a.cancelRun = runCtx, cancelRun
	tickCtx, cancelTick := context.WithCancel(context.Background())
	tickDone := make(chan struct{})
	go func() { a.tickLoop(tickCtx); close(tickDone) }()

	connCtx, cancelConn := context.WithCancel(runCtx)
	defer cancelConn()
	connected := make(chan struct{})
	go func() { a.connectPhase(connCtx); close(connected) }()

	readySent := false
	finish := func() error {
		cancelConn()
		<-connected
		a.stopLoad()
		a.finish()
		cancelTick()
		<-tickDone
		a.emit(workerMsg{Type: "result", Result: a.result()})
		return nil
	}
	for {
		var conn <-chan struct{}
		if !readySent {
			conn = connected
		}
		select {
		case <-conn:
			readySent = true
			a.phase.CompareAndSwap(phaseConnect, phaseReady)
			a.emitProgress("ready")
		case m, ok := <-cmds:
			if !ok { // coordinator gone
				cancelConn()
				<-connected
				a.closeAll()
				cancelTick()
				return errors.New("coordinator closed the control pipe")
			}
			switch m.Type {
			case "start":
				a.startLoad()
				a.emitProgress("started")
			case "publish":
				a.startPublishing()
			case "stop":
				cancelConn()
				a.stopLoad()
				// Report "stopped" once no publisher can send any more, so
				// that the coordinator's drain compares final send counts.
				go func() {
					a.pubWG.Wait()
					a.emitProgress("stopped")
				}()
			case "finish":
				return finish()
			}
		case <-hard.C:
			return finish()
		}
	}
}

// tickLoop samples the time series once a second (aligned to the run's
// start) and reports progress five times a second.
func (a *agent) tickLoop(ctx context.Context) {
	tk := time.NewTicker(200 * time.Millisecond)
	defer tk.Stop()
	next := 1
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		for time.Since(a.t0) >= time.Duration(next)*time.Second {
			a.series.sample(next-1, &a.ctr, a.lat)
			next++
		}
		a.expireStalled()
		a.emitProgress("progress")
	}
}

// expireStalled applies the read timeout to frames that started to arrive
// on event-driven connections (wsConn.expireStalled).
func (a *agent) expireStalled() {
	now := time.Now().UnixNano()
	for _, list := range [][]*client{a.pubs, a.subs} {
		for _, c := range list {
			if w := c.ws.Load(); w != nil && w.np != nil {
				w.expireStalled(now)
			}
		}
	}
}

// connectPhase opens this worker's connections: publishers at once, the
// rest ramped at the share's connect rate, at most --dial-concurrency
// handshakes at a time. It returns when every attempt has settled.
func (a *agent) connectPhase(ctx context.Context) {
	var wg sync.WaitGroup
	launch := func(c *client) bool {
		select {
		case a.sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-a.sem }()
			a.connectClient(ctx, c)
		}()
		return true
	}
	for _, c := range a.pubs {
		if !launch(c) {
			break
		}
	}
	wg.Wait() // publishers first: raw readiness probes need them
	if a.proto.raw && len(a.pubs) > 0 {
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.probeLoop() }()
	}
	start := time.Now()
	rate := a.share.ConnectRate
	for i, c := range a.subs {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		if ctx.Err() != nil || !launch(c) {
			break
		}
	}
	wg.Wait()
	a.awaitRawReady(ctx)
}

// connectClient dials one client and makes it ready (subscribed where the
// mode needs it). Failures are counted by cause.
func (a *agent) connectClient(ctx context.Context, c *client) {
	t := transportEvent
	rcvbuf := 0
	if c.role == roleSlow {
		t, rcvbuf = transportPaused, a.cfg.SlowRcvBuf
	}
	a.ctr.attempted.Add(1)
	began := time.Now()
	w, err := a.dialer.dial(ctx, c.gid, c, t, rcvbuf)
	if err != nil {
		a.ctr.connFail.Add(1)
		a.connFails.add(causeOf(err), 1)
		c.dead.Store(true)
		return
	}
	a.handshake.record(time.Since(began))
	a.ctr.connOK.Add(1)
	a.ctr.open.Add(1)
	c.ws.Store(w)
	if a.proto.raw || c.role == roleConn || c.role == rolePub {
		if c.role == roleEcho || c.role == roleSlow {
			c.markReady()
		}
		if t == transportPaused {
			return
		}
		if err := w.start(); err != nil {
			w.abort("start_failed")
		}
		return
	}
	// fanout subscribers and echo clients subscribe before they count. A
	// subscribe answered "unavailable" (a cluster node whose broker did not
	// answer in time: busy, or down) is sent again after a pause, as a
	// client would, until --connect-timeout; each retry is counted.
	c.retryUnavail.Store(true)
	defer c.retryUnavail.Store(false)
	done, err := c.subscribe(w)
	if err == nil && t != transportPaused {
		err = w.start()
	}
	if err != nil {
		a.subErrs.add("subscribe_write", 1)
		c.dead.Store(true)
		w.abort("subscribe_write")
		return
	}
	deadline := began.Add(a.cfg.ConnectTimeout)
	backoff := 100 * time.Millisecond
	for {
		if t == transportPaused {
			_ = w.serveUntil(func() bool {
				select {
				case <-done:
					return true
				default:
					return false
				}
			}, deadline)
		} else {
			tm := time.NewTimer(time.Until(deadline))
			select {
			case <-done:
			case <-tm.C:
			case <-ctx.Done():
			}
			tm.Stop()
		}
		if c.ready.Load() || c.subID.Load() != 0 {
			break // subscribed, or no reply in time
		}
		c.mu.Lock()
		code := c.subErr
		c.mu.Unlock()
		if code != codec.CodeUnavailable {
			break // counted by onReply
		}
		pause := backoff/2 + rand.N(backoff)
		backoff = min(2*backoff, 2*time.Second)
		if time.Now().Add(pause).After(deadline) || !sleepCtx(ctx, pause) {
			a.subErrs.add("subscribe_unavailable", 1)
			break
		}
		a.ctr.subRetries.Add(1)
		if done, err = c.subscribe(w); err != nil {
			a.subErrs.add("subscribe_write", 1)
			c.dead.Store(true)
			w.abort("subscribe_write")
			return
		}
	}
	if !c.ready.Load() {
		if c.subID.Load() != 0 {
			a.subErrs.add("subscribe_timeout", 1)
		}
		c.dead.Store(true)
		w.closeWith(ws.StatusNormalClosure, causeClient)
	}
}

// sleepCtx waits d, or less when ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// probeLoop sends raw readiness probes (time 0) through the first
// publisher until the load starts: a raw server registers a connection
// at some point after its upgrade, and a subscriber that received a
// broadcast is known to be registered.
func (a *agent) probeLoop() {
	p := a.pubs[0]
	tk := time.NewTicker(100 * time.Millisecond)
	defer tk.Stop()
	msg := a.proto.appendRaw(nil, 0, 0)
	for a.phase.Load() < phaseRun {
		if w := p.ws.Load(); w != nil {
			if err := w.writeFrame(ws.OpBinary, msg); err != nil {
				return
			}
		}
		select {
		case <-tk.C:
		case <-a.stopCh:
			return
		}
	}
}

// awaitRawReady waits (at most --connect-timeout) for every connected raw
// subscriber to see a probe; the rest count as failed.
func (a *agent) awaitRawReady(ctx context.Context) {
	if !a.proto.raw || len(a.subs) == 0 || a.subs[0].role == roleEcho || a.subs[0].role == roleConn {
		return
	}
	deadline := time.Now().Add(a.cfg.ConnectTimeout)
	for {
		pending := 0
		for _, c := range a.subs {
			if c.role == roleSub && !c.dead.Load() && !c.ready.Load() && c.ws.Load() != nil {
				pending++
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			for _, c := range a.subs {
				if c.role == roleSub && !c.dead.Load() && !c.ready.Load() {
					if w := c.ws.Load(); w != nil {
						a.subErrs.add("no_broadcast_received", 1)
						c.dead.Store(true)
						w.closeWith(ws.StatusNormalClosure, causeClient)
					}
				}
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startLoad begins the load phase.
func (a *agent) startLoad() {
	if !a.phase.CompareAndSwap(phaseReady, phaseRun) {
		return
	}
	a.prof.start(a.cfg.CPUProfile, a.index)
	a.loadStart.Store(time.Now().UnixNano())
	for _, c := range a.subs {
		if c.role == roleSub && c.ready.Load() && !c.dead.Load() {
			c.measure.Store(true)
			a.ctr.measured.Add(1)
		}
	}
	switch a.cfg.Mode {
	case modeChurn:
		a.bg.Add(1)
		go func() { defer a.bg.Done(); a.churnLoop() }()
	case modeEcho:
		a.startEcho()
	}
}

// startPublishing starts the publishers (worker 0). The coordinator sends
// "publish" once every worker has started measuring, so that no worker
// misses the first publications.
func (a *agent) startPublishing() {
	if a.phase.Load() == phaseRun && a.cfg.usesPublishers() {
		a.startPublishers()
	}
}

// stopLoad ends the load phase; in-flight messages are still counted until
// finish.
func (a *agent) stopLoad() {
	for {
		p := a.phase.Load()
		if p >= phaseDrain {
			return
		}
		if a.phase.CompareAndSwap(p, phaseDrain) {
			break
		}
	}
	a.loadStop.Store(time.Now().UnixNano())
	a.prof.stop()
	close(a.stopCh)
	if a.cfg.Mode == modeSlow {
		a.resumeSlow()
	}
}

// finish stops everything and closes every connection.
func (a *agent) finish() {
	a.phase.Store(phaseDone)
	a.cancelRun()
	for _, c := range a.pubs { // unblocks a publisher stuck on a full socket
		if w := c.ws.Load(); w != nil {
			w.abort(causeClient)
		}
	}
	a.pubWG.Wait()
	a.bg.Wait()
	a.closeAll()
	// Close callbacks run asynchronously; give them a moment so that the
	// open count in the result is final.
	for deadline := time.Now().Add(2 * time.Second); a.ctr.open.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// closeAll closes every connection with a normal close frame.
func (a *agent) closeAll() {
	for _, list := range [][]*client{a.pubs, a.subs} {
		for _, c := range list {
			if w := c.ws.Load(); w != nil {
				w.closeWith(ws.StatusNormalClosure, causeClient)
			}
		}
	}
}

func (a *agent) result() *WorkerResult {
	series, lat := a.series.flush(a.lat)
	user, sys, rss := selfUsage()
	return &WorkerResult{
		Index:           a.index,
		Counts:          a.ctr.snapshot(),
		ConnectFailures: a.connFails.snapshot(),
		NotReady:        a.subErrs.snapshot(),
		ProtocolErrors:  a.decodeErrs.snapshot(),
		Disconnects:     a.disconnects.snapshot(),
		PublishErrors:   a.pubErrs.snapshot(),
		SlowOutcomes:    a.slowCauses.snapshot(),
		Handshake:       a.handshake.export(),
		Latency:         lat,
		Series:          series,
		CPUUser:         user,
		CPUSys:          sys,
		MaxRSS:          rss,
		LoadStart:       a.loadStart.Load(),
		LoadStop:        a.loadStop.Load(),
	}
}
