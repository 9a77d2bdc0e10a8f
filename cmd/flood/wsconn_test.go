package main

import (
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/fanout-dev/fanout/codec"
	"github.com/gobwas/ws"
)

// serverFrame encodes one frame as a server would send it (masked when
// mask is set, which servers do not do but the reader accepts).
func serverFrame(fin bool, op ws.OpCode, payload []byte, mask bool) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	var maskBit byte
	if mask {
		maskBit = 0x80
	}
	b := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		b = append(b, maskBit|byte(n))
	case n <= 0xffff:
		b = append(b, maskBit|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, maskBit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	p := append([]byte(nil), payload...)
	if mask {
		key := [4]byte{1, 2, 3, 4}
		b = append(b, key[:]...)
		ws.Cipher(p, key, 0)
	}
	return append(b, p...)
}

type recHandler struct {
	msgs   []string
	causes []string
}

func (h *recHandler) onMessage(_ *wsConn, op ws.OpCode, p []byte) {
	kind := "binary"
	if op == ws.OpText {
		kind = "text"
	}
	h.msgs = append(h.msgs, kind+":"+string(p))
}

func (h *recHandler) onClose(_ *wsConn, cause string) { h.causes = append(h.causes, cause) }

// TestReadAvailableSplitFrames feeds a stream of frames to the
// non-blocking netpoll reader in chunks of every size: each message comes
// out once, whole, wherever the reads split it.
func TestReadAvailableSplitFrames(t *testing.T) {
	var stream []byte
	var want []string
	add := func(fin bool, op ws.OpCode, payload string, mask bool) {
		stream = append(stream, serverFrame(fin, op, []byte(payload), mask)...)
	}
	for _, m := range []struct {
		payload string
		mask    bool
	}{
		{"hello", false}, {"", false}, {strings.Repeat("a", 125), false}, {strings.Repeat("b", 126), true},
		{strings.Repeat("c", 300), false}, {strings.Repeat("d", 70000), true}, {"x", true},
	} {
		add(true, ws.OpText, m.payload, m.mask)
		want = append(want, "text:"+m.payload)
	}
	add(false, ws.OpBinary, "ab", false) // fragmented, with a pong between
	add(true, ws.OpPong, "p", false)
	add(true, ws.OpContinuation, "cd", true)
	want = append(want, "binary:abcd")
	add(true, ws.OpText, "last", false)
	want = append(want, "text:last")

	for _, chunk := range []int{1, 2, 3, 5, 9, 13, 14, 100, 4096, len(stream)} {
		h := &recHandler{}
		w := &wsConn{h: h, readTimeout: time.Second}
		lb := netpoll.NewLinkBuffer()
		for off := 0; off < len(stream); off += chunk {
			if _, err := lb.WriteBinary(stream[off:min(off+chunk, len(stream))]); err != nil {
				t.Fatal(err)
			}
			if err := lb.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := w.readAvailable(lb); err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
			if lb.Len() != 0 {
				t.Fatalf("chunk %d: %d bytes left unread", chunk, lb.Len())
			}
			if (len(w.partial) > 0) != (w.partialSince.Load() != 0) {
				t.Fatalf("chunk %d: %d bytes partial, since %d", chunk, len(w.partial), w.partialSince.Load())
			}
			_ = lb.Release()
		}
		if len(w.partial) != 0 {
			t.Errorf("chunk %d: %d bytes left partial", chunk, len(w.partial))
		}
		if strings.Join(h.msgs, "|") != strings.Join(want, "|") {
			t.Errorf("chunk %d: got %d messages, want %d", chunk, len(h.msgs), len(want))
		}
	}
}

func TestReadAvailableTooLarge(t *testing.T) {
	for _, hdr := range [][]byte{
		{0x82, 127, 0, 0, 0, 0, 0x10, 0, 0, 0},    // 256 MiB, no payload yet
		{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1}, // 2^63: must not wrap
	} {
		w := &wsConn{h: &recHandler{}}
		lb := netpoll.NewLinkBuffer()
		_, _ = lb.WriteBinary(hdr)
		_ = lb.Flush()
		if err := w.readAvailable(lb); !errors.Is(err, errTooLarge) {
			t.Errorf("%x: %v, want errTooLarge", hdr, err)
		}
	}
}

// TestExpireStalled: a frame whose rest does not come within the read
// timeout ends the connection with read_timeout.
func TestExpireStalled(t *testing.T) {
	h := &recHandler{}
	a, b := net.Pipe()
	defer b.Close()
	w := &wsConn{h: h, nc: a, readTimeout: time.Second}
	now := time.Now().UnixNano()
	w.expireStalled(now)
	w.partialSince.Store(now - int64(500*time.Millisecond))
	w.expireStalled(now)
	if len(h.causes) != 0 {
		t.Fatalf("closed early: %v", h.causes)
	}
	w.partialSince.Store(now - int64(2*time.Second))
	w.expireStalled(now)
	if len(h.causes) != 1 || h.causes[0] != "read_timeout" {
		t.Fatalf("causes %v, want read_timeout", h.causes)
	}
}

// TestReceivePubNoAllocs: handling a pub push at a measuring subscriber
// allocates nothing (ScanPub, the data's time, offset check, histogram).
func TestReceivePubNoAllocs(t *testing.T) {
	for _, enc := range []codec.Encoding{codec.JSON, codec.Msgpack} {
		cfg := &Config{Mode: modeBroadcast, Protocol: protoFanoutJSON, Size: 128}
		if enc == codec.Msgpack {
			cfg.Protocol = protoFanoutMsgpack
		}
		a := &agent{cfg: cfg, proto: newProtocol(cfg), lat: newLatRecorder()}
		a.ctr.lat = a.lat
		a.phase.Store(phaseRun)
		c := &client{a: a, role: roleSub, synced: true}
		c.measure.Store(true)
		w := &wsConn{h: c}
		c.ws.Store(w)

		sent := time.Now().UnixNano()
		data := a.proto.appendData(nil, sent)
		pub := &codec.Publication{Channel: "flood", Epoch: "e1", Offset: 1, Info: codec.ClientInfo{Client: "c-1"}}
		if enc == codec.Msgpack {
			pub.Msgpack = data
		} else {
			pub.JSON = data
		}
		frame := serverFrame(true, a.proto.opcode(), codec.AppendPub(nil, enc, pub), false)
		hl, _, _ := parseFrameHeader(frame)
		w.rxTime = sent + int64(time.Millisecond)
		if err := w.handleFrameBytes(frame, hl); err != nil {
			t.Fatal(err)
		}
		if a.lat.count() != 1 || c.last != 1 {
			t.Fatalf("%v: delivered %d, last offset %d", enc, a.lat.count(), c.last)
		}
		if n := testing.AllocsPerRun(1000, func() { _ = w.handleFrameBytes(frame, hl) }); n != 0 {
			t.Errorf("%v: %v allocations per pub push", enc, n)
		}
		if got := a.ctr.snapshot().Delivered; got != 1002 {
			t.Errorf("%v: delivered %d, want 1002", enc, got)
		}
		h := newHist()
		a.lat.drainInto(h)
		if h.TotalCount() != 1002 || h.Max() < 999 || h.Max() > 1001 {
			t.Errorf("%v: %d latencies, max %dµs, want 1002 of 1ms", enc, h.TotalCount(), h.Max())
		}
		if a.ctr.dups.Load() != 1001 {
			t.Errorf("%v: dups %d, want 1001", enc, a.ctr.dups.Load())
		}
	}
}

// closingHandler aborts its connection from within the first onMessage
// (on netpoll's poller, with inline callbacks) and reports onClose.
type closingHandler struct {
	closed chan string
}

func (h *closingHandler) onMessage(w *wsConn, _ ws.OpCode, _ []byte) { w.abort("test_abort") }
func (h *closingHandler) onClose(_ *wsConn, cause string)            { h.closed <- cause }

// TestCloseFromInlineCallback: closing a connection while its callback
// runs on the poller must not stall the poller (netpoll's Close would make
// the callback wait for the poller itself: see wsConn.shutdown), and every
// connection of that poller keeps working.
func TestCloseFromInlineCallback(t *testing.T) {
	configureNetpoll()
	prev := inlineCallbacks.Load()
	inlineCallbacks.Store(true)
	defer inlineCallbacks.Store(prev)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for i := 0; i < 50; i++ {
					if _, err := c.Write(serverFrame(true, ws.OpText, []byte("m"), false)); err != nil {
						return
					}
					time.Sleep(time.Millisecond)
				}
				_, _ = c.Read(make([]byte, 1)) // until the client closes
			}()
		}
	}()
	for i := 0; i < 20; i++ {
		conn, err := netpoll.DialConnection("tcp", ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		h := &closingHandler{closed: make(chan string, 1)}
		w := &wsConn{h: h, np: conn, readTimeout: time.Second}
		if err := w.startEventDriven(); err != nil {
			t.Fatal(err)
		}
		select {
		case cause := <-h.closed:
			if cause != "test_abort" {
				t.Fatalf("connection %d: cause %q", i, cause)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("connection %d: not closed within 5s (poller stalled?)", i)
		}
	}
}
