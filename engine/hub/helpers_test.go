package hub

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// fakeSub is a Subscriber that decodes and records every frame it gets.
type fakeSub struct {
	info codec.ClientInfo
	enc  codec.Encoding

	// block, when set, makes the first Send or SendBatch wait until it is
	// closed (entered is closed when it starts waiting): tests use it to
	// hold a shard worker while publications queue up.
	block   chan struct{}
	entered chan struct{}
	once    sync.Once

	mu      sync.Mutex
	msgs    []codec.ServerMessage
	batches []int // frames per Send/SendBatch call
	errs    []error
}

var subSeq atomic.Int64

func newSub(enc codec.Encoding) *fakeSub {
	n := subSeq.Add(1)
	return &fakeSub{
		info: codec.ClientInfo{Client: fmt.Sprintf("c%d", n), User: fmt.Sprintf("u%d", n)},
		enc:  enc,
	}
}

func (s *fakeSub) Info() codec.ClientInfo   { return s.info }
func (s *fakeSub) Encoding() codec.Encoding { return s.enc }

func (s *fakeSub) Send(f *wsframe.Frame) {
	s.wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, 1)
	s.record(f)
}

func (s *fakeSub) SendBatch(fs []*wsframe.Frame) {
	s.wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, len(fs))
	for _, f := range fs {
		s.record(f)
	}
}

func (s *fakeSub) wait() {
	if s.block == nil {
		return
	}
	s.once.Do(func() {
		close(s.entered)
		<-s.block
	})
}

// record decodes f and releases it. Called with s.mu held.
func (s *fakeSub) record(f *wsframe.Frame) {
	defer f.Release()
	want := byte(0x80) | byte(ws.OpText)
	if s.enc == codec.Msgpack {
		want = 0x80 | byte(ws.OpBinary)
	}
	if got := f.Bytes()[0]; got != want {
		s.errs = append(s.errs, fmt.Errorf("frame byte 0 = %#x, want %#x", got, want))
	}
	var m codec.ServerMessage
	if err := codec.DecodeServerMessage(s.enc, f.Payload(), &m); err != nil {
		s.errs = append(s.errs, fmt.Errorf("decode %q: %w", f.Payload(), err))
		return
	}
	s.msgs = append(s.msgs, m)
}

// messages returns a copy of what s received so far.
func (s *fakeSub) messages() []codec.ServerMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]codec.ServerMessage(nil), s.msgs...)
}

// pubs returns the pub pushes s received.
func (s *fakeSub) pubs() []codec.ServerMessage {
	var out []codec.ServerMessage
	for _, m := range s.messages() {
		if m.Push == codec.PushPub {
			out = append(out, m)
		}
	}
	return out
}

func (s *fakeSub) count(kind codec.PushKind) int {
	n := 0
	for _, m := range s.messages() {
		if m.Push == kind {
			n++
		}
	}
	return n
}

func (s *fakeSub) checkErrs(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.errs {
		t.Errorf("%s: %v", s.info.Client, err)
	}
}

// newHub starts a hub closed at the end of the test.
func newHub(t testing.TB, cfg Config) *Hub {
	t.Helper()
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

func subscribe(t testing.TB, h *Hub, s Subscriber, req SubscribeRequest) {
	t.Helper()
	if err := h.Subscribe(s, req); err != nil {
		t.Fatalf("Subscribe(%s, %q): %v", s.Info().Client, req.Channel, err)
	}
}

func unsubscribe(t testing.TB, h *Hub, s Subscriber, ch string) {
	t.Helper()
	if err := h.Unsubscribe(s, ch); err != nil {
		t.Fatalf("Unsubscribe(%s, %q): %v", s.Info().Client, ch, err)
	}
}

// publish publishes the JSON number n to ch.
func publish(t testing.TB, h *Hub, ch string, n int) codec.StreamPosition {
	t.Helper()
	pos, err := h.Publish(context.Background(), ch, fmt.Appendf(nil, "%d", n), codec.JSON, codec.ClientInfo{Client: "pub"})
	if err != nil {
		t.Fatalf("Publish(%q, %d): %v", ch, n, err)
	}
	return pos
}

// reply returns the first message s received, which must be its reply.
func reply(t *testing.T, s *fakeSub) codec.ServerMessage {
	t.Helper()
	ms := s.messages()
	if len(ms) == 0 {
		t.Fatalf("%s: no reply", s.info.Client)
	}
	if ms[0].Push != codec.PushNone || !ms[0].HasID || !ms[0].OK {
		t.Fatalf("%s: first message %+v is not an ok reply", s.info.Client, ms[0])
	}
	return ms[0]
}

// checkOffsets fails unless the pubs' offsets are from, from+1, ... to.
func checkOffsets(t *testing.T, who string, pubs []codec.ServerMessage, from, to uint64) {
	t.Helper()
	want := from
	for _, p := range pubs {
		if p.Offset != want {
			t.Fatalf("%s: got offset %d, want %d (offsets %v)", who, p.Offset, want, offsets(pubs))
		}
		want++
	}
	if want != to+1 {
		t.Fatalf("%s: got offsets %v, want %d..%d", who, offsets(pubs), from, to)
	}
}

// offsets summarizes the offsets of ms as runs: "[1-5 7 9-10]".
func offsets(ms []codec.ServerMessage) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := 0; i < len(ms); {
		j := i
		for j+1 < len(ms) && ms[j+1].Offset == ms[j].Offset+1 {
			j++
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		if j == i {
			fmt.Fprint(&b, ms[i].Offset)
		} else {
			fmt.Fprintf(&b, "%d-%d", ms[i].Offset, ms[j].Offset)
		}
		i = j + 1
	}
	b.WriteByte(']')
	return b.String()
}

// checkFor polls cond until it returns nil or the timeout passes.
func checkFor(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		<-tick.C
	}
}

// fakeClock is a settable clock for history TTL tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
