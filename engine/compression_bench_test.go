package engine

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/gobwas/ws"
)

// BenchmarkBroadcastCompression measures a broadcast end to end over real
// loopback sockets, with and without permessage-deflate: the server's
// encode (and compress, once per publication), fan-out and writev, and
// the client side reading frames (not inflating them). It reports the
// time per delivery (the whole process: server and readers share the
// CPUs) and the bytes on the wire per delivery, headers included.
//
//	go test -run x -bench BroadcastCompression -benchtime 200x ./engine
func BenchmarkBroadcastCompression(b *testing.B) {
	const subscribers = 500
	for _, payload := range []string{"chat", "base64"} {
		for _, size := range []int{128, 1024, 8192} {
			for _, level := range []int{0, 1, 6} { // 0: compression off
				if level == 6 && size != 8192 {
					continue
				}
				b.Run(fmt.Sprintf("payload=%s/size=%d/level=%d", payload, size, level), func(b *testing.B) {
					data := chatPayload(size)
					if payload == "base64" {
						data = base64Payload(size)
					}
					benchBroadcastCompression(b, subscribers, data, level)
				})
			}
		}
	}
}

// base64Payload is a JSON string of random base64, about n bytes: what
// deflate compresses least short of random binary (6 bits of 8 used).
func base64Payload(n int) []byte {
	raw := make([]byte, n)
	for i := range raw {
		raw[i] = byte(i*2654435761>>13 ^ i*40503)
	}
	s := base64.StdEncoding.EncodeToString(raw)
	return []byte(`"` + s[:n-2] + `"`)
}

// chatPayload is a JSON chat message of about n bytes: compressible the
// way real chat traffic is (repeated keys, words), not a run of one byte.
func chatPayload(n int) []byte {
	words := strings.Fields("the quick brown fox jumps over a lazy dog while fanout sends each message once to every reader in the room")
	var b strings.Builder
	b.WriteString(`{"user":"alice","text":"`)
	for i := 0; b.Len() < n-2; i++ {
		b.WriteString(words[(i*7+i/3)%len(words)])
		b.WriteByte(' ')
	}
	return []byte(b.String()[:n-2] + `"}`)
}

func benchBroadcastCompression(b *testing.B, n int, data []byte, level int) {
	compress := level > 0
	mode := CompressionOff
	if compress {
		mode = CompressionOn
	}
	s := benchServer(b, Config{Addr: "127.0.0.1:0", Compression: mode, CompressionLevel: level, WriteQueueBytes: 64 << 20, MaxMessageBytes: 1 << 20})
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	var (
		frames atomic.Int64
		bytes  atomic.Int64
		wg     sync.WaitGroup
	)
	offer := ""
	if compress {
		offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
	}
	for range n {
		nc, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { nc.Close() })
		_, _ = io.WriteString(nc, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: fanout.v1.json\r\n"+offer+"\r\n")
		br := bufio.NewReaderSize(nc, 64<<10)
		for { // the 101 response's head
			line, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if line == "\r\n" {
				break
			}
		}
		sub := clientFrameCompressed(b, []byte(`{"op":"subscribe","id":1,"channel":"bench"}`), false)
		if _, err := nc.Write(sub); err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				h, err := ws.ReadHeader(br)
				if err != nil {
					return
				}
				if _, err := br.Discard(int(h.Length)); err != nil {
					return
				}
				frames.Add(1)
				bytes.Add(int64(ws.HeaderSize(h)) + h.Length)
			}
		}()
	}
	// The connected push and the subscribe reply of each.
	waitFrames(b, &frames, int64(2*n))
	ctx := context.Background()
	info := codec.ClientInfo{Client: "publisher"}
	frames.Store(0)
	bytes.Store(0)
	b.SetBytes(int64(len(data) * n))
	b.ResetTimer()
	for range b.N {
		if _, err := s.hub.Publish(ctx, "bench", data, codec.JSON, info); err != nil {
			b.Fatal(err)
		}
	}
	waitFrames(b, &frames, int64(b.N*n))
	b.StopTimer()
	deliveries := float64(b.N * n)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(bytes.Load())/deliveries, "wire-B/delivery")
	_ = s.Close()
	wg.Wait()
}

func waitFrames(b *testing.B, frames *atomic.Int64, want int64) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for frames.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d frames arrived", frames.Load(), want)
		}
		time.Sleep(time.Millisecond)
	}
}
