package engine

// TestStress is the randomized stress test of issue 8: many connections
// with tiny socket buffers, random partial writes, slow consumers, client
// disconnects and server closes at random moments, under -race, against an
// echo server and a pub/sub server at once. Every byte a client receives
// after the 101 is checked as a stream of RFC 6455 server frames (wpStream),
// and its content too: echoes are the messages sent, in order; pongs answer
// the pings sent, in order; every publication on a channel follows the
// previous one (or the subscribe reply) without a gap. At the end every
// connection must have ended, the servers hold no connection, and no
// goroutine, descriptor or pooled frame is left.
//
//	go test -race -run TestStress ./engine/                      # ~20 s of traffic
//	FANOUT_STRESS_DURATION=30m go test -race -run TestStress -timeout 40m ./engine/
//	FANOUT_STRESS_SEED=<seed from the log> ...                  # replay the choices
//	FANOUT_STRESS_CONNS=400 ...                                 # concurrent connections
//
// A seed replays every random choice (sizes, chunking, pauses, reader and
// end kinds), not the scheduling.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
	"github.com/vmihailenco/msgpack/v5"
)

// stressEnv reads the knobs of TestStress from the environment.
func stressEnv(t *testing.T) (dur time.Duration, seed uint64, conns int) {
	t.Helper()
	dur = 20 * time.Second
	if testing.Short() {
		dur = 5 * time.Second
	}
	if v := os.Getenv("FANOUT_STRESS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("FANOUT_STRESS_DURATION: %v", err)
		}
		dur = d
	}
	seed = uint64(time.Now().UnixNano())
	if v := os.Getenv("FANOUT_STRESS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FANOUT_STRESS_SEED: %v", err)
		}
		seed = s
	}
	conns = 200
	if v := os.Getenv("FANOUT_STRESS_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("FANOUT_STRESS_CONNS: %q", v)
		}
		conns = n
	}
	return dur, seed, conns
}

// Reader kinds: how a client reads what the server sends.
const (
	readFast  = "fast"  // reads as fast as it can
	readSlow  = "slow"  // small reads with pauses
	readNever = "never" // reads nothing until its connection ends
	readLate  = "late"  // reads nothing for a while, then fast
)

// End kinds: how a connection ends.
const (
	endHandshake = "close-handshake" // client sends close 1000, server answers
	endFIN       = "client-fin"      // client closes the socket
	endRST       = "client-rst"      // client resets it (SO_LINGER 0)
	endHalfClose = "client-halfclose"
	endProtoErr  = "protocol-error"  // server closes 1002
	endStall     = "stall-mid-frame" // server closes 1002 after FrameTimeout
	endIdle      = "go-idle"         // server pings, then closes 1001
	endKeep      = "keep"            // open until Shutdown: 1012
)

var stressEnds = []struct {
	kind   string
	weight int
}{
	{endHandshake, 20}, {endFIN, 18}, {endRST, 18}, {endHalfClose, 6},
	{endProtoErr, 12}, {endStall, 6}, {endIdle, 5}, {endKeep, 15},
}

// clientEnded reports whether the client ended the connection itself
// (so its stream may stop anywhere).
func clientEnded(end string) bool { return end == endFIN || end == endRST }

type stressServer struct {
	name string
	echo bool
	s    *Server
	logs *wpLog
	// keepOpen counts keep connections upgraded and not ended.
	keepOpen atomic.Int64
}

type stressRun struct {
	t        *testing.T
	seed     uint64
	stop     chan struct{} // closed when the traffic phase ends
	hardEnd  time.Time     // no client I/O may wait beyond this
	maxFails int

	mu         sync.Mutex
	failures   []string
	nFailures  int
	lives      map[string]int // by server/end kind
	closeCodes map[string]int // by server/code
	truncated  map[string]int // streams that ended mid-frame, by reader/end kind
	bytesIn    int64
	frames     int64
	errReplies map[string]int
}

func (r *stressRun) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nFailures++
	if len(r.failures) < r.maxFails {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
}

func (r *stressRun) count(m map[string]int, key string) {
	r.mu.Lock()
	m[key]++
	r.mu.Unlock()
}

func (r *stressRun) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func TestStress(t *testing.T) {
	dur, seed, conns := stressEnv(t)
	t.Logf("seed %d (FANOUT_STRESS_SEED=%d replays the choices), traffic for %v, %d connections at a time", seed, seed, dur, conns)

	// Warm up netpoll (pollers, their descriptors, goroutine pool) so that
	// the baselines below do not count what the first server creates once
	// per process.
	warm, _ := wpStartServer(t, Config{Echo: true})
	wc := wpDial(t, warm, 0)
	wpUpgrade(t, wc)
	wc.nc.Close()
	wpCloseBounded(t, warm, 20*time.Second)
	time.Sleep(100 * time.Millisecond) // let the warm-up goroutines wind down (baseline only)

	baseG := runtime.NumGoroutine()
	baseFD := wpOpenFDs()
	baseLive := wsframe.Live()
	t.Logf("baseline: %d goroutines, %d fds, %d live frames", baseG, baseFD, baseLive)

	common := Config{
		SendBufferBytes:  8192,
		WriteQueueBytes:  128 << 10,
		WriteTimeout:     5 * time.Second,
		CloseTimeout:     3 * time.Second,
		IdleTimeout:      6 * time.Second,
		FrameTimeout:     5 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		MaxMessageBytes:  256 << 10,
		RetryAfterMin:    10 * time.Millisecond,
		RetryAfterSpread: 10 * time.Millisecond,
		DrainTimeout:     60 * time.Second,
	}
	echoCfg := common
	echoCfg.Echo = true
	pubCfg := common
	pubCfg.APIKey = "stress"
	// The stress is on the write and close paths; the per-connection
	// command and publish rates have tests of their own.
	pubCfg.CommandRate = -1
	pubCfg.PublishBytesPerSecond = -1
	echoS, echoLogs := wpStartServer(t, echoCfg)
	pubS, pubLogs := wpStartServer(t, pubCfg)
	servers := []*stressServer{
		{name: "echo", echo: true, s: echoS, logs: echoLogs},
		{name: "pubsub", s: pubS, logs: pubLogs},
	}

	run := &stressRun{
		t: t, seed: seed, stop: make(chan struct{}),
		hardEnd:    time.Now().Add(dur + 3*time.Minute),
		maxFails:   30,
		lives:      map[string]int{},
		closeCodes: map[string]int{},
		truncated:  map[string]int{},
		errReplies: map[string]int{},
	}

	// Publications from the HTTP API too, at random moments.
	var apiWG sync.WaitGroup
	apiWG.Add(1)
	go func() {
		defer apiWG.Done()
		run.apiPublisher(pubS, mrand.New(mrand.NewPCG(seed, 1<<32)))
	}()

	start := time.Now()
	var workers sync.WaitGroup
	var nonKeep atomic.Int64 // running lives that end by themselves
	for w := range conns {
		srv := servers[w%2]
		rng := mrand.New(mrand.NewPCG(seed, uint64(w)))
		workers.Add(1)
		go func() {
			defer workers.Done()
			for n := 0; !run.stopped(); n++ {
				l := newStressLife(run, srv, rng, fmt.Sprintf("%s/w%d/l%d", srv.name, w, n))
				if l.end != endKeep {
					nonKeep.Add(1)
					l.run()
					nonKeep.Add(-1)
				} else {
					l.run()
				}
			}
		}()
	}
	time.Sleep(dur) // the traffic phase
	close(run.stop)
	t.Logf("traffic phase over after %v; ending connections", time.Since(start).Round(time.Millisecond))

	// Every connection that ends by itself does so; the servers then hold
	// exactly the keep connections.
	if err := wpPoll(2*time.Minute, 50*time.Millisecond, func() error {
		if n := nonKeep.Load(); n > 0 {
			return fmt.Errorf("%d connections still running", n)
		}
		return nil
	}); err != nil {
		t.Errorf("2 min after the traffic phase: %v (see the failures)", err)
	}
	apiWG.Wait()
	for _, srv := range servers {
		err := wpPoll(time.Minute, 100*time.Millisecond, func() error {
			keep := srv.keepOpen.Load()
			v, err := wpMetric(srv.s, "fanout_connections")
			if err != nil {
				return err
			}
			if int64(v) != keep {
				return fmt.Errorf("%s server: fanout_connections = %v, %d connections open on the client side", srv.name, v, keep)
			}
			return nil
		})
		if err != nil {
			t.Errorf("connections the clients ended are still registered: %v", err)
		}
	}
	// Shutdown closes the rest with 1012 and must return.
	var shutWG sync.WaitGroup
	for _, srv := range servers {
		shutWG.Add(1)
		go func() {
			defer shutWG.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := srv.s.Shutdown(ctx); err != nil {
				t.Errorf("%s server: Shutdown: %v", srv.name, err)
			}
		}()
	}
	if !waitGroupFor(&shutWG, 90*time.Second) {
		t.Errorf("Shutdown did not return within 90 s")
	}
	if !waitGroupFor(&workers, 2*time.Minute) {
		t.Errorf("connections still running 2 min after Shutdown")
	}

	run.mu.Lock()
	t.Logf("lives by server/end: %v", sortedCounts(run.lives))
	t.Logf("close codes received by server/code: %v", sortedCounts(run.closeCodes))
	for _, sv := range []struct {
		name string
		s    *Server
	}{{"echo", echoS}, {"pubsub", pubS}} {
		st := &sv.s.stats
		t.Logf("%s server drops: write timeouts %d, write errors %d, close timeouts %d, slow consumers %d",
			sv.name, st.writeTimeouts.Load(), st.writeErrors.Load(), st.closeTimeouts.Load(), st.slowConsumers.Load())
	}
	t.Logf("streams that stopped mid-frame (allowed for dropped slow readers and client closes): %v", sortedCounts(run.truncated))
	t.Logf("error replies: %v", sortedCounts(run.errReplies))
	t.Logf("checked %d frames, %d bytes", run.frames, run.bytesIn)
	for _, f := range run.failures {
		t.Error(f)
	}
	if run.nFailures > len(run.failures) {
		t.Errorf("... and %d more failures", run.nFailures-len(run.failures))
	}
	run.mu.Unlock()

	for _, srv := range servers {
		wpCloseBounded(t, srv.s, 20*time.Second)
	}
	// No leak: frames, goroutines, descriptors back to their baselines.
	leaks := []func() error{
		func() error {
			if n := wsframe.Live(); n > baseLive {
				return fmt.Errorf("wsframe.Live() = %d, baseline %d: %d frame(s) never released", n, baseLive, n-baseLive)
			}
			return nil
		},
		func() error {
			if n := runtime.NumGoroutine(); n > baseG+10 {
				return fmt.Errorf("%d goroutines, baseline %d", n, baseG)
			}
			return nil
		},
		func() error {
			if n := wpOpenFDs(); n > baseFD+4 {
				return fmt.Errorf("%d open fds, baseline %d", n, baseFD)
			}
			return nil
		},
	}
	for _, leak := range leaks {
		if err := wpPoll(time.Minute, 100*time.Millisecond, leak); err != nil {
			t.Errorf("leak after a minute: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("replay with FANOUT_STRESS_SEED=%d FANOUT_STRESS_DURATION=%v FANOUT_STRESS_CONNS=%d", seed, dur, conns)
	}
}

func waitGroupFor(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func sortedCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return b.String()
}

// apiPublisher publishes through POST /api/publish at random moments until
// the traffic phase ends.
func (r *stressRun) apiPublisher(s *Server, rng *mrand.Rand) {
	url := "http://" + s.Addr().String() + "/api/publish"
	for n := 0; !r.stopped(); n++ {
		// Small bodies: the request then arrives in one read. (A body that
		// arrives after the head was seen can be lost in the hand-off to
		// net/http, a bug outside this test's subject: see the report.)
		data, _ := json.Marshal(map[string]any{"api": n, "pad": strings.Repeat("a", rng.IntN(1000))})
		body := `{"channel":"s` + strconv.Itoa(rng.IntN(stressChannels)) + `","data":` + string(data) + `}`
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer stress")
		resp, err := wpHTTP.Do(req)
		if err != nil {
			r.fail("api publish %d: %v", n, err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
			r.fail("api publish %d: %s", n, resp.Status)
		}
		time.Sleep(time.Duration(5+rng.IntN(45)) * time.Millisecond)
	}
}

const stressChannels = 8

// stressSize draws a message size: mostly small, some over netpoll's 4 KiB
// no-copy threshold, a few large.
func stressSize(rng *mrand.Rand, max int) int {
	switch p := rng.IntN(100); {
	case p < 60:
		return rng.IntN(300)
	case p < 90:
		return 300 + rng.IntN(8<<10)
	default:
		return rng.IntN(max + 1)
	}
}

// stressLife is one connection, from dial to its end.
type stressLife struct {
	sr     *stressRun
	srv    *stressServer
	rng    *mrand.Rand
	id     string
	rcvbuf int
	reader string
	end    string
	mpack  bool
	span   time.Duration
	// the reader goroutine's own randomness (rng belongs to the writer)
	readerSeed uint64
	lateDelay  time.Duration

	nc    net.Conn
	br    *bufio.Reader
	st    *wpStream
	drain chan struct{} // closed: read fast from now on
	done  chan struct{} // closed by the reader when the stream ended
	// readErr is how the reader stopped: nil for EOF or reset.
	readErr error
	// pings received from the server, for the writer to answer.
	pings chan []byte

	mu           sync.Mutex
	sent         [][]byte // echo: messages sent, in order
	echoed       int
	pingsOut     [][]byte // pings sent
	pongs        int
	subs         map[uint64]string // subscribe id -> channel
	offsets      map[string]float64
	clientClosed bool
}

func newStressLife(run *stressRun, srv *stressServer, rng *mrand.Rand, id string) *stressLife {
	l := &stressLife{
		sr: run, srv: srv, rng: rng, id: id,
		rcvbuf:  4096 + rng.IntN(12<<10),
		mpack:   !srv.echo && rng.IntN(5) == 0,
		drain:   make(chan struct{}),
		done:    make(chan struct{}),
		pings:   make(chan []byte, 16),
		subs:    map[uint64]string{},
		offsets: map[string]float64{},
	}
	switch p := rng.IntN(100); {
	case p < 55:
		l.reader = readFast
	case p < 75:
		l.reader = readSlow
	case p < 88:
		l.reader = readNever
	default:
		l.reader = readLate
	}
	l.readerSeed = rng.Uint64()
	l.lateDelay = time.Duration(200+rng.IntN(1800)) * time.Millisecond
	total := 0
	for _, e := range stressEnds {
		total += e.weight
	}
	pick := rng.IntN(total)
	for _, e := range stressEnds {
		if pick < e.weight {
			l.end = e.kind
			break
		}
		pick -= e.weight
	}
	switch p := rng.IntN(100); {
	case p < 50:
		l.span = time.Duration(100+rng.IntN(900)) * time.Millisecond
	case p < 90:
		l.span = time.Duration(1000+rng.IntN(3000)) * time.Millisecond
	default:
		l.span = time.Duration(4000+rng.IntN(4000)) * time.Millisecond
	}
	return l
}

func (l *stressLife) String() string {
	return fmt.Sprintf("%s (reader %s, end %s, rcvbuf %d, msgpack %v)", l.id, l.reader, l.end, l.rcvbuf, l.mpack)
}

func (l *stressLife) fail(format string, args ...any) {
	l.sr.fail("%v: %s", l, fmt.Sprintf(format, args...))
}

// writeChunked writes b in random pieces with random short pauses: the
// server sees frames (and the request head) cut anywhere.
func (l *stressLife) writeChunked(b []byte) error {
	for len(b) > 0 {
		n := len(b)
		switch p := l.rng.IntN(10); {
		case p < 5:
		case p < 8:
			n = 1 + l.rng.IntN(len(b))
		default:
			n = 1 + l.rng.IntN(min(len(b), 16))
		}
		if _, err := l.nc.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
		if len(b) > 0 {
			switch p := l.rng.IntN(100); {
			case p < 20:
				time.Sleep(time.Duration(l.rng.IntN(2000)) * time.Microsecond)
			case p < 22:
				time.Sleep(time.Duration(10+l.rng.IntN(40)) * time.Millisecond)
			}
		}
	}
	return nil
}

func (l *stressLife) run() {
	l.sr.count(l.sr.lives, l.srv.name+"/"+l.end)
	nc, err := wpDialer(l.rcvbuf).Dial("tcp", l.srv.s.Addr().String())
	if err != nil {
		l.fail("dial: %v", err)
		return
	}
	l.nc = nc
	defer nc.Close()
	_ = nc.SetDeadline(l.sr.hardEnd)
	var extra []string
	switch {
	case l.srv.echo:
	case l.mpack:
		extra = append(extra, "Sec-WebSocket-Protocol: fanout.v1.msgpack")
	default:
		extra = append(extra, "Sec-WebSocket-Protocol: fanout.v1.json")
	}
	if err := l.writeChunked([]byte(upgradeRequest("GET", "/ws", extra...))); err != nil {
		l.fail("writing the upgrade request: %v", err)
		return
	}
	l.br = bufio.NewReaderSize(nc, 16<<10)
	resp, err := http.ReadResponse(l.br, nil)
	if err != nil {
		l.fail("no upgrade response: %v", err)
		return
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		if l.sr.stopped() && resp.StatusCode == http.StatusServiceUnavailable {
			return // draining
		}
		l.fail("upgrade: %s", resp.Status)
		return
	}
	if l.end == endKeep {
		l.srv.keepOpen.Add(1)
		defer l.srv.keepOpen.Add(-1)
	}
	l.st = &wpStream{onMessage: l.onMessage, onControl: l.onControl}
	go l.read()

	ended := l.traffic()
	if !ended {
		l.finish()
	}
	// Wait for the stream to end (the reader has the hard deadline).
	<-l.done
	l.check()
}

// read is the connection's reader goroutine.
func (l *stressLife) read() {
	defer close(l.done)
	buf := make([]byte, 32<<10)
	switch l.reader {
	case readNever:
		select {
		case <-l.drain:
		case <-l.sr.stop:
		}
	case readLate:
		select {
		case <-l.drain:
		case <-l.sr.stop:
		case <-time.After(l.lateDelay):
		}
	}
	slow := l.reader == readSlow
	rng := mrand.New(mrand.NewPCG(l.readerSeed, 1))
	for {
		b := buf
		if slow {
			select {
			case <-l.drain:
				slow = false
			case <-l.sr.stop:
				slow = false
			default:
				b = buf[:64+rng.IntN(2048)]
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
			}
		}
		n, err := l.br.Read(b)
		if n > 0 {
			l.mu.Lock()
			_, _ = l.st.Write(b[:n])
			l.mu.Unlock()
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) || isReset(err) || errors.Is(err, io.EOF) {
				err = nil
			}
			l.readErr = err
			return
		}
	}
}

// traffic sends until the life's span passes or the traffic phase ends. It
// reports whether the connection already ended (the server closed it).
func (l *stressLife) traffic() bool {
	end := time.Now().Add(l.span)
	var id uint64
	if !l.srv.echo {
		// Subscribe to one to three distinct channels.
		chans := l.rng.Perm(stressChannels)[:1+l.rng.IntN(3)]
		for _, ch := range chans {
			id++
			name := "s" + strconv.Itoa(ch)
			l.mu.Lock()
			l.subs[id] = name
			l.mu.Unlock()
			if err := l.writeChunked(l.command(map[string]any{"op": "subscribe", "id": id, "channel": name})); err != nil {
				return l.writeFailed(err)
			}
		}
	}
	for time.Now().Before(end) || l.end == endKeep {
		if l.sr.stopped() {
			break
		}
		select {
		case <-l.done:
			return true
		default:
		}
		// Answer the server's pings.
		for answered := false; !answered; {
			select {
			case p := <-l.pings:
				if err := l.writeChunked(frame(true, ws.OpPong, p)); err != nil {
					return l.writeFailed(err)
				}
			default:
				answered = true
			}
		}
		var err error
		if l.srv.echo {
			err = l.sendEcho()
		} else {
			id++
			err = l.sendCommand(id)
		}
		if err != nil {
			return l.writeFailed(err)
		}
		time.Sleep(time.Duration(l.rng.IntN(60)) * time.Millisecond)
	}
	return false
}

// writeFailed: the server ended the connection while the client wrote
// (it may close at any time: slow consumer, idle, write timeout).
func (l *stressLife) writeFailed(error) bool {
	close(l.drain)
	return true
}

// sendEcho sends one echo message, sometimes fragmented with a ping in
// between.
func (l *stressLife) sendEcho() error {
	size := stressSize(l.rng, 96<<10)
	op := ws.OpBinary
	var msg []byte
	if l.rng.IntN(2) == 0 {
		op = ws.OpText
		runes := []string{"a", "b", "é", "€", "😀", " ", "{"}
		var b strings.Builder
		for b.Len() < size {
			b.WriteString(runes[l.rng.IntN(len(runes))])
		}
		msg = []byte(b.String())
	} else {
		msg = wpRandBytes(l.rng, size)
	}
	l.mu.Lock()
	l.sent = append(l.sent, msg)
	l.mu.Unlock()
	if len(msg) < 2 || l.rng.IntN(4) != 0 {
		return l.writeChunked(frame(true, op, msg))
	}
	// Fragments, cut anywhere (inside a UTF-8 sequence too).
	parts := 2 + l.rng.IntN(3)
	cuts := []int{0}
	for i := 1; i < parts; i++ {
		cuts = append(cuts, l.rng.IntN(len(msg)+1))
	}
	cuts = append(cuts, len(msg))
	sort.Ints(cuts)
	for i := 0; i+1 < len(cuts); i++ {
		fop := op
		if i > 0 {
			fop = ws.OpContinuation
		}
		if err := l.writeChunked(frame(i+2 == len(cuts), fop, msg[cuts[i]:cuts[i+1]])); err != nil {
			return err
		}
		if i+2 < len(cuts) && l.rng.IntN(2) == 0 {
			p := []byte("ping-" + strconv.Itoa(l.rng.IntN(1e6)))
			l.mu.Lock()
			l.pingsOut = append(l.pingsOut, p)
			l.mu.Unlock()
			if err := l.writeChunked(frame(true, ws.OpPing, p)); err != nil {
				return err
			}
		}
	}
	return nil
}

// command encodes a protocol command in the connection's encoding.
func (l *stressLife) command(cmd map[string]any) []byte {
	if l.mpack {
		b, _ := msgpack.Marshal(cmd)
		return frame(true, ws.OpBinary, b)
	}
	b, _ := json.Marshal(cmd)
	return frame(true, ws.OpText, b)
}

// sendCommand sends a publish, a ping or a history request.
func (l *stressLife) sendCommand(id uint64) error {
	ch := "s" + strconv.Itoa(l.rng.IntN(stressChannels))
	var cmd map[string]any
	switch p := l.rng.IntN(100); {
	case p < 35:
		cmd = map[string]any{"op": "publish", "id": id, "channel": ch,
			"data": map[string]any{"from": l.id, "n": id, "pad": strings.Repeat("d", stressSize(l.rng, 16<<10))}}
	case p < 95:
		cmd = map[string]any{"op": "ping", "id": id}
	default:
		cmd = map[string]any{"op": "history", "id": id, "channel": ch, "limit": 1 + l.rng.IntN(3)}
	}
	return l.writeChunked(l.command(cmd))
}

// finish performs the life's end.
func (l *stressLife) finish() {
	switch l.end {
	case endKeep:
		// Until Shutdown: the server sends 1012 and the reader sees EOF.
		// Meanwhile answer pings, so that the idle timeout does not end
		// it first.
		close(l.drain)
		go func() {
			for {
				select {
				case p := <-l.pings:
					if _, err := l.nc.Write(frame(true, ws.OpPong, p)); err != nil {
						return
					}
				case <-l.done:
					return
				}
			}
		}()
		return
	case endFIN, endRST:
		l.mu.Lock()
		l.clientClosed = true
		l.mu.Unlock()
		if l.end == endRST {
			wpSetLinger0(l.nc)
		}
		_ = l.nc.Close()
		close(l.drain) // a reader still waiting to read sees the close
		return
	}
	close(l.drain)
	var err error
	switch l.end {
	case endHandshake:
		err = l.writeChunked(frame(true, ws.OpClose, append([]byte{0x03, 0xe8}, "bye"...)))
	case endHalfClose:
		err = l.nc.(*net.TCPConn).CloseWrite()
	case endProtoErr:
		bad := [][]byte{
			{0x81, 0x01, 'x'}, // unmasked
			clientFrame(nopTB{}, true, 0, 3, true, 0, nil),                       // reserved opcode
			clientFrame(nopTB{}, true, 4, ws.OpText, true, 0, []byte("x")),       // RSV1
			clientFrame(nopTB{}, true, 0, ws.OpPing, true, 2, make([]byte, 126)), // control > 125
			frame(true, ws.OpContinuation, []byte("x")),                          // nothing to continue
		}
		err = l.writeChunked(bad[l.rng.IntN(len(bad))])
	case endStall:
		f := frame(true, ws.OpBinary, make([]byte, 1000))
		err = l.writeChunked(f[:1+l.rng.IntN(len(f)-1)])
	case endIdle:
		// Send nothing more and answer no ping.
	}
	_ = err // the server may have closed already: the reader sees how
}

// onControl sees the server's pings and pongs (under l.mu).
func (l *stressLife) onControl(op ws.OpCode, p []byte) {
	switch op {
	case ws.OpPing:
		select {
		case l.pings <- append([]byte(nil), p...):
		default:
		}
	case ws.OpPong:
		if l.pongs >= len(l.pingsOut) || !bytes.Equal(p, l.pingsOut[l.pongs]) {
			l.st.fail("pong %d %q does not answer ping %d", l.pongs, p, l.pongs)
			return
		}
		l.pongs++
	}
}

// onMessage checks a data message's content (under l.mu).
func (l *stressLife) onMessage(op ws.OpCode, p []byte) error {
	if l.srv.echo {
		if l.echoed >= len(l.sent) {
			return fmt.Errorf("echo %d of %d messages sent", l.echoed, len(l.sent))
		}
		if !bytes.Equal(p, l.sent[l.echoed]) {
			return fmt.Errorf("echo %d differs from the message sent (%d bytes sent)", l.echoed, len(l.sent[l.echoed]))
		}
		l.echoed++
		return nil
	}
	var m map[string]any
	if l.mpack {
		if op != ws.OpBinary {
			return fmt.Errorf("%v frame on a msgpack connection", op)
		}
		var raw any
		if err := msgpack.Unmarshal(p, &raw); err != nil {
			return fmt.Errorf("not msgpack: %v", err)
		}
		mm, ok := normalise(raw).(map[string]any)
		if !ok {
			return fmt.Errorf("not a msgpack map")
		}
		m = mm
	} else {
		if op != ws.OpText {
			return fmt.Errorf("%v frame on a json connection", op)
		}
		if err := json.Unmarshal(p, &m); err != nil {
			return fmt.Errorf("not a JSON object: %v", err)
		}
	}
	if push, _ := m["push"].(string); push != "" {
		if push != "pub" {
			return nil // connected, join, leave
		}
		ch, _ := m["channel"].(string)
		off, _ := m["offset"].(float64)
		last, ok := l.offsets[ch]
		if !ok {
			return fmt.Errorf("publication on %q before its subscribe reply", ch)
		}
		if off != last+1 {
			return fmt.Errorf("publication on %q at offset %v after %v: gap or repeat", ch, off, last)
		}
		l.offsets[ch] = off
		return nil
	}
	id, _ := m["id"].(float64)
	if e, ok := m["error"].(map[string]any); ok {
		code, _ := e["code"].(string)
		l.sr.count(l.sr.errReplies, code)
		return nil
	}
	if ch, ok := l.subs[uint64(id)]; ok && m["ok"] == true {
		off, _ := m["offset"].(float64)
		l.offsets[ch] = off
	}
	return nil
}

// check judges the stream once it ended.
func (l *stressLife) check() {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	l.sr.mu.Lock()
	l.sr.bytesIn += st.bytes
	l.sr.frames += int64(st.frames)
	l.sr.mu.Unlock()
	if err := st.Err(); err != nil {
		l.fail("invalid stream: %v (%v)", err, st)
		return
	}
	if l.clientClosed {
		return // cut by the client: any prefix is fine
	}
	if l.readErr != nil {
		l.fail("connection did not end: %v (%v)", l.readErr, st)
		return
	}
	if st.closed {
		l.sr.count(l.sr.closeCodes, l.srv.name+"/"+strconv.Itoa(st.closeCode))
		switch code := uint16(st.closeCode); {
		case code == CloseNormal || code == CloseGoingAway || code == ClosePolicy || code == CloseRestart:
		case code == CloseProtocolError && (l.end == endProtoErr || l.end == endStall || st.closeReason == errFrameTimeout.Reason):
		default:
			l.fail("unexpected close %d %q (%v)", st.closeCode, st.closeReason, st)
		}
	}
	if st.Pending() > 0 && !st.closed {
		l.sr.count(l.sr.truncated, l.reader+"/"+l.end)
		// A reader that kept up is never dropped for a write timeout,
		// and a close frame comes whole after the frames before it.
		if l.reader == readFast && l.end != endHalfClose {
			l.fail("stream stopped inside a frame although the client read all along (%v)", st)
		}
	}
}
