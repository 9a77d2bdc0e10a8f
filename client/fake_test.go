package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gorilla/websocket"
)

// fakeServer is a small, deterministic fanout server for the client's unit
// tests: enough of PROTOCOL.md (connected push, subscribe with recover,
// publish, presence, history, ping, errors, close codes) plus knobs to
// drop connections, refuse upgrades, lose history and intercept commands.
type fakeServer struct {
	t   *testing.T
	hs  *httptest.Server
	url string

	mu          sync.Mutex
	historySize int
	channels    map[string]*fakeChannel
	conns       map[*fakeConn]struct{}
	connCount   int           // connections accepted so far
	reject      int           // HTTP status refusing upgrades; 0 accepts
	rejectBody  string        // body of refusals
	headers     []http.Header // upgrade request headers, in order
	protocols   []string      // negotiated subprotocol per connection
	cmds        []fakeCmd     // commands received, in order
	closeCodes  []int         // close codes received from clients
	epochN      int           // for fresh epochs
	intercept   func(fc *fakeConn, cmd *codec.Command) bool
}

// fakeCmd records one command.
type fakeCmd struct {
	conn       int // 1-based connection number
	op         codec.Op
	channel    string
	presence   bool
	hasRecover bool
	recover    codec.StreamPosition
}

type fakeChannel struct {
	epoch   string
	offset  uint64
	history []*codec.Publication
	subs    map[*fakeConn]bool // value: wants presence
}

type fakeConn struct {
	srv  *fakeServer
	n    int
	ws   *websocket.Conn
	enc  codec.Encoding
	info codec.ClientInfo
	wmu  sync.Mutex
}

func newFakeServer(t *testing.T) *fakeServer {
	t.Helper()
	s := &fakeServer{
		t:           t,
		historySize: 100,
		channels:    make(map[string]*fakeChannel),
		conns:       make(map[*fakeConn]struct{}),
	}
	s.hs = httptest.NewServer(http.HandlerFunc(s.serve))
	s.url = "ws" + strings.TrimPrefix(s.hs.URL, "http") + "/ws"
	t.Cleanup(func() {
		s.dropAll()
		s.hs.Close()
	})
	return s
}

var upgrader = websocket.Upgrader{
	Subprotocols: []string{codec.SubprotocolJSON, codec.SubprotocolMsgpack},
	CheckOrigin:  func(*http.Request) bool { return true },
}

func (s *fakeServer) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.headers = append(s.headers, r.Header.Clone())
	if s.reject != 0 {
		status, body := s.reject, s.rejectBody
		s.mu.Unlock()
		http.Error(w, body, status)
		return
	}
	s.mu.Unlock()
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	enc := codec.JSON
	if ws.Subprotocol() == codec.SubprotocolMsgpack {
		enc = codec.Msgpack
	}
	s.mu.Lock()
	s.connCount++
	fc := &fakeConn{srv: s, n: s.connCount, ws: ws, enc: enc}
	fc.info = codec.ClientInfo{Client: fmt.Sprintf("fake-%d", fc.n)}
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		fc.info.User = tok
	}
	s.conns[fc] = struct{}{}
	s.protocols = append(s.protocols, ws.Subprotocol())
	s.mu.Unlock()
	ws.SetCloseHandler(func(code int, text string) error {
		s.mu.Lock()
		s.closeCodes = append(s.closeCodes, code)
		s.mu.Unlock()
		fc.wmu.Lock()
		defer fc.wmu.Unlock()
		return ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	})
	fc.write(codec.AppendConnected(nil, enc, fc.info))
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			break
		}
		var cmd codec.Command
		if err := codec.DecodeCommand(enc, msg, &cmd); err != nil {
			var ce *codec.CommandError
			if errors.As(err, &ce) {
				fc.write(codec.AppendError(nil, enc, cmd.ID, cmd.HasID, ce.Code, ce.Message))
				continue
			}
			fc.closeWith(1007, "not an object")
			break
		}
		s.handle(fc, &cmd)
	}
	ws.Close()
	s.mu.Lock()
	delete(s.conns, fc)
	for name, ch := range s.channels {
		if _, ok := ch.subs[fc]; ok {
			delete(ch.subs, fc)
			s.pushPresenceLocked(name, ch, codec.PushLeave, fc.info)
		}
	}
	s.mu.Unlock()
}

func (fc *fakeConn) write(msg []byte) {
	typ := websocket.TextMessage
	if fc.enc == codec.Msgpack {
		typ = websocket.BinaryMessage
	}
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.ws.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fc.ws.WriteMessage(typ, msg)
}

// closeWith sends a close frame with code and reason.
func (fc *fakeConn) closeWith(code int, reason string) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(time.Second))
}

func (s *fakeServer) channelLocked(name string) *fakeChannel {
	ch := s.channels[name]
	if ch == nil {
		s.epochN++
		ch = &fakeChannel{epoch: fmt.Sprintf("e%d", s.epochN), subs: make(map[*fakeConn]bool)}
		s.channels[name] = ch
	}
	return ch
}

func (s *fakeServer) handle(fc *fakeConn, cmd *codec.Command) {
	s.mu.Lock()
	rec := fakeCmd{conn: fc.n, op: cmd.Op, channel: string(cmd.Channel), presence: cmd.Presence, hasRecover: cmd.HasRecover}
	if cmd.HasRecover {
		rec.recover = codec.StreamPosition{Epoch: string(cmd.RecoverEpoch), Offset: cmd.RecoverOffset}
	}
	s.cmds = append(s.cmds, rec)
	icpt := s.intercept
	s.mu.Unlock()
	if icpt != nil && icpt(fc, cmd) {
		return
	}
	s.defaultHandle(fc, cmd)
}

// defaultHandle runs cmd the way the real server does.
func (s *fakeServer) defaultHandle(fc *fakeConn, cmd *codec.Command) {
	enc := fc.enc
	name := string(cmd.Channel)
	if cmd.Op != codec.OpPing && !codec.ValidChannel(cmd.Channel) {
		fc.write(codec.AppendError(nil, enc, cmd.ID, cmd.HasID, codec.CodeBadRequest, "bad channel name"))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cmd.Op {
	case codec.OpPing:
		fc.write(codec.AppendOK(nil, enc, cmd.ID))
	case codec.OpSubscribe:
		ch := s.channelLocked(name)
		if _, ok := ch.subs[fc]; ok {
			fc.write(codec.AppendError(nil, enc, cmd.ID, cmd.HasID, codec.CodeBadRequest, "already subscribed"))
			return
		}
		var pubs []*codec.Publication
		recovered := false
		if cmd.HasRecover && string(cmd.RecoverEpoch) == ch.epoch {
			for _, p := range ch.history {
				if p.Offset > cmd.RecoverOffset {
					pubs = append(pubs, p)
				}
			}
			recovered = cmd.RecoverOffset == ch.offset ||
				(len(ch.history) > 0 && ch.history[0].Offset <= cmd.RecoverOffset+1)
		}
		pos := codec.StreamPosition{Epoch: ch.epoch, Offset: ch.offset}
		fc.write(codec.AppendSubscribeOK(nil, enc, cmd.ID, pos, recovered, pubs))
		s.pushPresenceLocked(name, ch, codec.PushJoin, fc.info)
		ch.subs[fc] = cmd.Presence
	case codec.OpUnsubscribe:
		ch := s.channelLocked(name)
		if _, ok := ch.subs[fc]; ok {
			delete(ch.subs, fc)
			s.pushPresenceLocked(name, ch, codec.PushLeave, fc.info)
		}
		fc.write(codec.AppendOK(nil, enc, cmd.ID))
	case codec.OpPublish:
		off, err := s.publishLocked(name, enc, cmd.Data, fc.info)
		if err != nil {
			fc.write(codec.AppendError(nil, enc, cmd.ID, cmd.HasID, codec.CodeBadRequest, err.Error()))
			return
		}
		fc.write(codec.AppendPublishOK(nil, enc, cmd.ID, off))
	case codec.OpPresence:
		ch := s.channelLocked(name)
		var clients []codec.ClientInfo
		for c := range ch.subs {
			clients = append(clients, c.info)
		}
		fc.write(codec.AppendPresenceOK(nil, enc, cmd.ID, clients))
	case codec.OpHistory:
		ch := s.channelLocked(name)
		pubs := ch.history
		if cmd.Limit > 0 && cmd.Limit < len(pubs) {
			pubs = pubs[len(pubs)-cmd.Limit:]
		}
		fc.write(codec.AppendHistoryOK(nil, enc, cmd.ID, codec.StreamPosition{Epoch: ch.epoch, Offset: ch.offset}, pubs))
	default:
		fc.write(codec.AppendError(nil, enc, cmd.ID, cmd.HasID, codec.CodeUnknownOp, "unknown op"))
	}
}

func (s *fakeServer) pushPresenceLocked(name string, ch *fakeChannel, kind codec.PushKind, info codec.ClientInfo) {
	for c, presence := range ch.subs {
		if !presence {
			continue
		}
		if kind == codec.PushJoin {
			c.write(codec.AppendJoin(nil, c.enc, name, info))
		} else {
			c.write(codec.AppendLeave(nil, c.enc, name, info))
		}
	}
}

func (s *fakeServer) publishLocked(name string, enc codec.Encoding, data []byte, info codec.ClientInfo) (uint64, error) {
	other := codec.Msgpack
	if enc == codec.Msgpack {
		other = codec.JSON
	}
	conv, err := codec.Transcode(nil, enc, other, data)
	if err != nil {
		return 0, err
	}
	ch := s.channelLocked(name)
	ch.offset++
	p := &codec.Publication{Channel: name, Epoch: ch.epoch, Offset: ch.offset, Info: info}
	if enc == codec.JSON {
		p.JSON, p.Msgpack = data, conv
	} else {
		p.JSON, p.Msgpack = conv, data
	}
	ch.history = append(ch.history, p)
	if len(ch.history) > s.historySize {
		ch.history = ch.history[len(ch.history)-s.historySize:]
	}
	for c := range ch.subs {
		c.write(codec.AppendPub(nil, c.enc, p))
	}
	return ch.offset, nil
}

// publish publishes the JSON value data to channel from the server side.
func (s *fakeServer) publish(channel, data string) uint64 {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	off, err := s.publishLocked(channel, codec.JSON, []byte(data), codec.ClientInfo{Client: "server"})
	if err != nil {
		s.t.Fatalf("fake publish: %v", err)
	}
	return off
}

// loseHistory keeps only the newest keep publications of channel; with
// newEpoch it forgets the channel altogether (a restart without a broker).
func (s *fakeServer) loseHistory(channel string, keep int, newEpoch bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := s.channelLocked(channel)
	if newEpoch {
		s.epochN++
		ch.epoch = fmt.Sprintf("e%d", s.epochN)
		ch.offset = 0
		ch.history = nil
		return
	}
	if len(ch.history) > keep {
		ch.history = ch.history[len(ch.history)-keep:]
	}
}

func (s *fakeServer) liveConns() []*fakeConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*fakeConn
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// dropAll cuts every connection's TCP without a close frame.
func (s *fakeServer) dropAll() {
	for _, c := range s.liveConns() {
		c.ws.NetConn().Close()
	}
}

// closeAll sends every connection a close frame with code and reason.
func (s *fakeServer) closeAll(code int, reason string) {
	for _, c := range s.liveConns() {
		c.closeWith(code, reason)
	}
}

func (s *fakeServer) setReject(status int, body string) {
	s.mu.Lock()
	s.reject, s.rejectBody = status, body
	s.mu.Unlock()
}

func (s *fakeServer) setIntercept(f func(fc *fakeConn, cmd *codec.Command) bool) {
	s.mu.Lock()
	s.intercept = f
	s.mu.Unlock()
}

func (s *fakeServer) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connCount
}

func (s *fakeServer) commands(op codec.Op) []fakeCmd {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fakeCmd
	for _, c := range s.cmds {
		if c.op == op {
			out = append(out, c)
		}
	}
	return out
}

func (s *fakeServer) receivedCloseCodes() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.closeCodes...)
}

// eventually polls cond until it holds or 10s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testCtx is a context bounded for one test step.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fastOptions are Options with small timings for tests.
func fastOptions(enc codec.Encoding) Options {
	return Options{
		Encoding: enc,
		Reconnect: ReconnectOptions{
			MinBackoff: 5 * time.Millisecond,
			MaxBackoff: 50 * time.Millisecond,
		},
		Dialer:      DialerOptions{HandshakeTimeout: 5 * time.Second},
		PingTimeout: 5 * time.Second,
	}
}

// dial connects a client and closes it at the end of the test.
func dial(t *testing.T, url string, opts Options) *Client {
	t.Helper()
	cl, err := Dial(testCtx(t), url, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// subscribe subscribes and fails the test on error.
func subscribe(t *testing.T, cl *Client, channel string, opts SubscribeOptions) *Subscription {
	t.Helper()
	s, err := cl.Subscribe(testCtx(t), channel, opts)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", channel, err)
	}
	return s
}

// recv reads one publication from s or fails after 10s.
func recv(t *testing.T, s *Subscription) Publication {
	t.Helper()
	select {
	case p, ok := <-s.C():
		if !ok {
			t.Fatalf("subscription to %q ended: %v", s.Channel(), s.Err())
		}
		return p
	case <-time.After(10 * time.Second):
		t.Fatalf("no publication on %q", s.Channel())
	}
	return Publication{}
}

// recvOffsets reads n publications and returns their offsets.
func recvOffsets(t *testing.T, s *Subscription, n int) []uint64 {
	t.Helper()
	var out []uint64
	for range n {
		out = append(out, recv(t, s).Offset)
	}
	return out
}

// noPublication asserts that nothing is ready on s.C() after the pubs the
// server has certainly delivered (callers sync with a Ping first).
func noPublication(t *testing.T, s *Subscription) {
	t.Helper()
	select {
	case p, ok := <-s.C():
		if ok {
			t.Fatalf("unexpected publication %d on %q", p.Offset, s.Channel())
		}
	default:
	}
}

// stateRecorder records OnStateChange events.
type stateRecorder struct {
	mu  sync.Mutex
	evs []StateChange
}

func (r *stateRecorder) record(ev StateChange) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *stateRecorder) events() []StateChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]StateChange(nil), r.evs...)
}

// wait returns the first event into state to, waiting for it.
func (r *stateRecorder) wait(t *testing.T, to State) StateChange {
	t.Helper()
	var found StateChange
	eventually(t, "state "+to.String(), func() bool {
		for _, ev := range r.events() {
			if ev.To == to {
				found = ev
				return true
			}
		}
		return false
	})
	return found
}
