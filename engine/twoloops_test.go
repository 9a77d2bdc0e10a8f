package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestDrainLeavesOtherEventLoopsAlone: servers in one process share
// netpoll's epoll set. One that drains and stops while another serves must
// not touch the other's sockets: closing its listener early let netpoll
// later remove, by descriptor number, the registration of whichever socket
// of the other server had been given that number, and that connection was
// never read again (its client waited for replies until its timeout).
func TestDrainLeavesOtherEventLoopsAlone(t *testing.T) {
	steady := startServer(t, Config{})
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		cycles   atomic.Int64
		churnMu  sync.Mutex
		churnErr error
	)
	wg.Add(1)
	go func() { // servers that start, serve a client, drain and stop
		defer wg.Done()
		for !stop.Load() {
			s, err := New(Config{Addr: "127.0.0.1:0", DrainDelay: time.Millisecond, DrainTimeout: 5 * time.Second, Logger: discardLogger()})
			if err == nil {
				err = s.Start()
			}
			if err == nil {
				err = roundTrips(s, 2, 2)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if serr := s.Shutdown(ctx); err == nil {
					err = serr
				}
				cancel()
			}
			if err != nil {
				churnMu.Lock()
				churnErr = err
				churnMu.Unlock()
				return
			}
			cycles.Add(1)
		}
	}()
	// The steady server's clients connect while the others come and go:
	// every publish must be answered.
	deadline := time.Now().Add(8 * time.Second)
	rounds := 0
	for time.Now().Before(deadline) || cycles.Load() < 3 {
		if err := roundTrips(steady, 1, 4); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("steady server, round %d (after %d drains of the other): %v", rounds, cycles.Load(), err)
		}
		rounds++
		if time.Now().After(deadline.Add(time.Minute)) {
			break
		}
	}
	stop.Store(true)
	wg.Wait()
	if churnErr != nil {
		t.Fatalf("draining server: %v", churnErr)
	}
	if cycles.Load() < 3 {
		t.Fatalf("only %d drains of the other server", cycles.Load())
	}
}

// roundTrips connects conns clients to s in turn, each publishing n
// fragmented 64 KiB messages and waiting for every reply.
func roundTrips(s *Server, conns, n int) error {
	for k := range conns {
		d := websocket.Dialer{Subprotocols: []string{"fanout.v1.json"}, HandshakeTimeout: 15 * time.Second, EnableCompression: k%2 == 0}
		c, _, err := d.Dial(wsURL(s), nil)
		if err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		if _, _, err := c.ReadMessage(); err != nil { // connected
			c.Close()
			return err
		}
		for i := 1; i <= n; i++ {
			msg := fmt.Sprintf(`{"op":"publish","id":%d,"channel":"c","data":"%s"}`, i, strings.Repeat("y", 64<<10))
			w, err := c.NextWriter(websocket.TextMessage)
			if err != nil {
				c.Close()
				return err
			}
			for j := 0; j < len(msg); j += 16 << 10 {
				_, _ = w.Write([]byte(msg[j:min(j+16<<10, len(msg))]))
			}
			if err := w.Close(); err != nil {
				c.Close()
				return err
			}
			_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, b, err := c.ReadMessage()
			if err != nil {
				c.Close()
				return fmt.Errorf("reply to publish %d: %w", i, err)
			}
			if !strings.Contains(string(b), fmt.Sprintf(`"id":%d`, i)) {
				c.Close()
				return fmt.Errorf("reply to publish %d: %s", i, b)
			}
		}
		c.Close()
	}
	return nil
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
