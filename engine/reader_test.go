package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestInputSplitAnywhere sends the upgrade request and a run of frames cut
// into pieces of every size: whatever a read returns (part of a head, part
// of a header, part of a payload, a frame and a half), the server must
// answer exactly as if it all came at once.
func TestInputSplitAnywhere(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 2500) // 40 KB: more than one read node
	frames := [][]byte{
		frame(true, ws.OpPing, []byte("p")),
		frame(false, ws.OpText, []byte("Hel")),
		frame(true, ws.OpContinuation, []byte("lo")),
		frame(true, ws.OpBinary, bytes.Repeat([]byte{7}, 300)),
	}
	want := []struct {
		op      ws.OpCode
		payload []byte
	}{{ws.OpPong, []byte("p")}, {ws.OpText, []byte("Hello")}, {ws.OpBinary, bytes.Repeat([]byte{7}, 300)}}
	tests := []struct {
		name  string
		chunk int
		pause time.Duration
		big   bool
	}{
		{"chunk=1", 1, time.Millisecond, false},
		{"chunk=3", 3, time.Millisecond, false},
		{"chunk=7", 7, 0, false},
		{"chunk=100", 100, 0, false},
		{"chunk=all", 1 << 20, 0, false},
		{"chunk=1000/big", 1000, 0, true},
	}
	s := startServer(t, Config{Echo: true})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, s)
			stream := []byte(upgradeRequest("GET", "/ws"))
			for _, f := range frames {
				stream = append(stream, f...)
			}
			if tt.big {
				stream = append(stream, frame(true, ws.OpBinary, big)...)
			}
			go func() {
				for len(stream) > 0 {
					n := min(tt.chunk, len(stream))
					if _, err := c.nc.Write(stream[:n]); err != nil {
						return
					}
					stream = stream[n:]
					if tt.pause > 0 {
						time.Sleep(tt.pause)
					}
				}
			}()
			if resp := c.response(); resp.StatusCode != 101 {
				t.Fatalf("upgrade: %s", resp.Status)
			}
			for i, w := range want {
				h, p := c.readFrame()
				if h.OpCode != w.op || !bytes.Equal(p, w.payload) {
					t.Fatalf("reply %d: %v %q, want %v %q", i, h.OpCode, p, w.op, w.payload)
				}
			}
			if tt.big {
				if h, p := c.readFrame(); h.OpCode != ws.OpBinary || !bytes.Equal(p, big) {
					t.Fatalf("big echo: %v, %d bytes", h.OpCode, len(p))
				}
			}
		})
	}
}

// TestSlowFrameTimesOutFromFirstByte: FrameTimeout runs from a frame's first
// byte, so a client trickling a frame (each byte well within the timeout)
// cannot hold the connection open with it.
func TestSlowFrameTimesOutFromFirstByte(t *testing.T) {
	s := startServer(t, Config{FrameTimeout: 300 * time.Millisecond})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame() // connected
	f := frame(true, ws.OpText, []byte(`{"op":"ping","id":1}`))
	done := make(chan struct{})
	defer close(done)
	go func() {
		for _, b := range f {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if _, err := c.nc.Write([]byte{b}); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	c.expectClose(1002)
	// The whole frame would take 2.6 s; the timeout must not wait for it.
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// serverConns returns the server's connections in the open state.
func serverConns(s *Server) []*Conn {
	var open []*Conn
	for i := range s.registry.shards {
		for _, c := range s.registry.shards[i].snapshot(nil) {
			if c.state.Load() == stateOpen {
				open = append(open, c)
			}
		}
	}
	return open
}

// TestBusyConnectionServedOnPollerThenTrimmed: a connection that keeps
// reading is marked busy (its reads run on netpoll's poller), and once it
// goes quiet the sweeper drops the input node it may hold and hands it back
// to the pool; it keeps working throughout.
func TestBusyConnectionServedOnPollerThenTrimmed(t *testing.T) {
	s := startServer(t, Config{Echo: true})
	c := dialRaw(t, s)
	c.upgrade()
	roundTrip := func(i int) {
		t.Helper()
		msg := []byte(fmt.Sprint("m", i))
		c.write(frame(true, ws.OpText, msg))
		if h, p := c.readFrame(); h.OpCode != ws.OpText || !bytes.Equal(p, msg) {
			t.Fatalf("echo %d: %v %q", i, h.OpCode, p)
		}
	}
	roundTrip(0)
	conns := serverConns(s)
	if len(conns) != 1 {
		t.Fatalf("%d open connections, want 1", len(conns))
	}
	sc := conns[0]
	// Busy takes reads less than busyWindow apart; a loaded machine may
	// stretch a few, so keep going until it shows.
	i := 1
	checkFor(t, 10*time.Second, 0, func() error {
		roundTrip(i)
		i++
		if !sc.busy.Load() {
			return fmt.Errorf("not busy after %d quick reads", i)
		}
		return nil
	})
	roundTrip(i) // read while busy: it may run on the poller
	if !sc.trimPending.Load() {
		t.Fatal("a read while busy did not mark the input for trimming")
	}
	checkFor(t, 5*time.Second, 50*time.Millisecond, func() error {
		if sc.busy.Load() || sc.trimPending.Load() {
			return errors.New("quiet connection not trimmed")
		}
		return nil
	})
	roundTrip(i + 1)
}

// TestClosingBusyConnections closes connections whose reads run on the
// poller, from the poller (protocol errors) and from other goroutines
// (drain, the sweeper dropping clients that ignore the close), while they
// are busy. netpoll must not be asked to free a
// connection from inside its own callback (that waits for the poller
// forever): afterwards the pollers, shared by every server in the process,
// must still serve a new server.
func TestClosingBusyConnections(t *testing.T) {
	s := startServer(t, Config{Echo: true, CloseTimeout: 300 * time.Millisecond,
		RetryAfterMin: time.Millisecond, RetryAfterSpread: time.Millisecond})
	const clients = 40
	var wg sync.WaitGroup
	codes := make(chan uint16, clients)
	for i := range clients {
		c := dialRaw(t, s)
		c.upgrade()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Round trips as fast as they go (the server sees a busy
			// connection); odd clients end with an unmasked frame, a
			// protocol error, even ones run until the drain closes them.
			ping := frame(true, ws.OpPing, []byte("x"))
			for n := 0; ; n++ {
				out := ping
				if i%2 == 1 && n == 100 {
					out = []byte{0x81, 0x01, 'x'}
				}
				if _, err := c.nc.Write(out); err != nil {
					codes <- 0
					return
				}
				h, err := ws.ReadHeader(c.br)
				if err != nil {
					t.Logf("client %d: %v", i, err)
					codes <- 0
					return
				}
				p := make([]byte, h.Length)
				if _, err := io.ReadFull(c.br, p); err != nil {
					codes <- 0
					return
				}
				if h.OpCode == ws.OpClose {
					codes <- uint16(p[0])<<8 | uint16(p[1])
					// Ignore the close and keep sending: the server
					// discards it on the poller until CloseTimeout and
					// then drops the socket under the busy reader.
					for {
						if _, err := c.nc.Write(ping); err != nil {
							return
						}
					}
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	wg.Wait()
	close(codes)
	got := map[uint16]int{}
	for code := range codes {
		got[code]++
	}
	if got[CloseProtocolError] == 0 || got[CloseRestart] == 0 || got[CloseProtocolError]+got[CloseRestart] != clients {
		t.Fatalf("close codes %v, want 1002 and 1012 only", got)
	}

	s2 := startServer(t, Config{Echo: true})
	c := dialRaw(t, s2)
	c.upgrade()
	c.write(frame(true, ws.OpText, []byte("still here")))
	if _, p := c.readFrame(); string(p) != "still here" {
		t.Fatalf("echo after: %q", p)
	}
}
