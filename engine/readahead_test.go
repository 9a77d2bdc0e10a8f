package engine

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/gobwas/ws"
)

// gatedBroker is the memory broker with a gate on Publish: while closed,
// publishes wait, as they would for a slow distributed engine.
type gatedBroker struct {
	hub.Broker
	gate    chan struct{}
	waiting atomic.Int32
}

func (b *gatedBroker) Publish(ctx context.Context, ch string, pub *codec.Publication) (codec.StreamPosition, error) {
	b.waiting.Add(1)
	defer b.waiting.Add(-1)
	select {
	case <-b.gate:
	case <-ctx.Done():
		return codec.StreamPosition{}, ctx.Err()
	}
	return b.Broker.Publish(ctx, ch, pub)
}

// TestReadAheadBounded: a client that pipelines publishes faster than they
// are processed is not read ahead without bound (it was: RSS 11 MB -> 3.6
// GB in 13 s). While its commands wait, the server stops reading its
// socket, so the client's writes stall after what the kernel buffers hold;
// once the commands proceed, every byte is read and the connection works.
func TestReadAheadBounded(t *testing.T) {
	gb := &gatedBroker{Broker: hub.NewMemoryBroker(hub.MemoryBrokerConfig{}), gate: make(chan struct{})}
	s := startServer(t, Config{Broker: gb, ReadAheadBytes: 32 << 10, IdleTimeout: time.Minute, CommandRate: -1, PublishBytesPerSecond: -1})
	c := dialRaw(t, s)
	c.upgrade()
	c.readFrame() // connected

	// Publishes without an id: no replies, so the client needs to read
	// nothing and only the server's reading limits it.
	pub := frame(true, ws.OpText, []byte(fmt.Sprintf(`{"op":"publish","channel":"flood","data":"%0200d"}`, 7)))
	chunk := make([]byte, 0, 64<<10)
	for len(chunk)+len(pub) <= cap(chunk) {
		chunk = append(chunk, pub...)
	}
	const attempt = 64 << 20 // more than the kernel buffers of both ends
	var written atomic.Int64
	var stop atomic.Bool
	writerDone := make(chan error, 1)
	go func() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(2 * time.Minute))
		for written.Load() < attempt && !stop.Load() {
			n, err := c.nc.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()

	// Wait until the first publish waits at the gate and the writer stalls.
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if gb.waiting.Load() == 0 {
			return fmt.Errorf("no publish reached the broker")
		}
		return nil
	})
	var last int64 = -1
	stalledSince := time.Now()
	checkFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		n := written.Load()
		if n >= attempt {
			return nil // reported below
		}
		if n != last {
			last, stalledSince = n, time.Now()
			return fmt.Errorf("client still writing (%d bytes)", n)
		}
		if time.Since(stalledSince) < time.Second {
			return fmt.Errorf("client paused at %d bytes", n)
		}
		return nil
	})
	// Kernel buffers on loopback hold at most tcp_rmem's and tcp_wmem's
	// maxima (32 MiB and 4 MiB here); without the bound the server read
	// everything.
	const bound = 40 << 20
	if n := written.Load(); n > bound {
		t.Fatalf("client wrote %d bytes while its commands waited: the server reads ahead without bound (want < %d)", n, bound)
	}
	t.Logf("client stalled after %d KiB while the broker was gated", written.Load()>>10)

	// A second client is served meanwhile.
	other := dialRaw(t, s)
	other.upgrade()
	other.readFrame()
	other.write(frame(true, ws.OpText, []byte(`{"op":"ping","id":1}`)))
	if _, p := other.readFrame(); string(p) != `{"id":1,"ok":true}` {
		t.Fatalf("other client: %s", p)
	}

	// Open the gate: the flood drains (the writer stops at a frame
	// boundary) and the connection still answers, after every publish.
	stop.Store(true)
	close(gb.gate)
	if err := <-writerDone; err != nil {
		t.Fatalf("writer: %v", err)
	}
	c.write(frame(true, ws.OpText, []byte(`{"op":"ping","id":2}`)))
	if _, p := c.readFrame(); string(p) != `{"id":2,"ok":true}` {
		t.Fatalf("flooding client after the flood: %s", p)
	}
	if got, want := s.hub.Stats().Published, uint64(written.Load())/uint64(len(pub)); got != want {
		t.Fatalf("published %d, want every one of the %d sent", got, want)
	}
}
