package engine

import (
	"strings"
	"testing"
)

// TestPublishTooLargeInAnyEncoding: a publish whose data fits in its own
// encoding but not in the other one (200 KB of msgpack control bytes is
// 1.2 MB of escaped JSON) is refused too_large, instead of building a frame
// that closes every JSON reader 1008.
func TestPublishTooLargeInAnyEncoding(t *testing.T) {
	s := startServer(t, Config{MaxMessageBytes: 1 << 20})
	pub := dialClient(t, s, true)
	reader := dialClient(t, s, false)
	reader.send(map[string]any{"op": "subscribe", "id": 1, "channel": "amp"})
	if m := reader.read(); m["ok"] != true {
		t.Fatalf("subscribe: %v", m)
	}
	data := strings.Repeat("\x01", 200_000) // 6 bytes each as a JSON \u0001
	pub.send(map[string]any{"op": "publish", "id": 2, "channel": "amp", "data": data})
	m := pub.read()
	if e, _ := m["error"].(map[string]any); e == nil || e["code"] != "too_large" {
		t.Fatalf("publish reply %v, want error too_large", m)
	}
	// Both stay connected and a normal publish flows.
	pub.send(map[string]any{"op": "publish", "id": 3, "channel": "amp", "data": "ok"})
	if m := pub.read(); m["ok"] != true {
		t.Fatalf("second publish: %v", m)
	}
	if m := reader.read(); m["push"] != "pub" || m["data"] != "ok" {
		t.Fatalf("reader got %v", m)
	}
}

// TestHistoryReplyBounded: a history request on a channel holding more than
// a reply may carry answers with the newest publications that fit and
// truncated:true; the reader is not closed 1008 (four publications of 400
// KB made a 1.6 MB reply, over the write queue bound of every reader).
func TestHistoryReplyBounded(t *testing.T) {
	for _, useMsgpack := range []bool{false, true} {
		s := startServer(t, Config{CommandRate: -1})
		c := dialClient(t, s, useMsgpack)
		big := strings.Repeat("x", 400_000)
		for i := 0; i < 4; i++ {
			c.send(map[string]any{"op": "publish", "id": 10 + i, "channel": "h", "data": big})
			if m := c.read(); m["ok"] != true {
				t.Fatalf("publish %d: %v", i, m)
			}
		}
		c.send(map[string]any{"op": "history", "id": 20, "channel": "h"})
		m := c.read()
		pubs, _ := m["publications"].([]any)
		if m["ok"] != true || m["truncated"] != true || len(pubs) == 0 || len(pubs) >= 4 {
			t.Fatalf("msgpack=%v: history reply ok=%v truncated=%v with %d publications, want a truncated reply", useMsgpack, m["ok"], m["truncated"], len(pubs))
		}
		last, _ := pubs[len(pubs)-1].(map[string]any)
		if off, _ := last["offset"].(float64); off != 4 {
			t.Fatalf("newest publication in the reply has offset %v, want 4 (the newest are kept)", last["offset"])
		}
		c.send(map[string]any{"op": "ping", "id": 21})
		if m := c.read(); m["ok"] != true {
			t.Fatalf("after history: %v", m)
		}
	}
}

// TestRecoverTooLargeAnswersNotRecovered: a recovery whose gap would not fit
// in a reply answers recovered:false with the newest position and no
// publications (it built a 100 MB+ frame, closed 1008, and the client looped
// reconnect -> recover -> 1008 for ever).
func TestRecoverTooLargeAnswersNotRecovered(t *testing.T) {
	s := startServer(t, Config{CommandRate: -1})
	pub := dialClient(t, s, false)
	big := strings.Repeat("y", 400_000)
	var epoch any
	for i := 0; i < 4; i++ {
		pub.send(map[string]any{"op": "publish", "id": i + 1, "channel": "r", "data": big})
		if m := pub.read(); m["ok"] != true {
			t.Fatalf("publish: %v", m)
		}
	}
	pub.send(map[string]any{"op": "history", "id": 9, "channel": "r", "limit": 1})
	epoch = pub.read()["epoch"]
	c := dialClient(t, s, false)
	c.send(map[string]any{"op": "subscribe", "id": 1, "channel": "r", "recover": map[string]any{"epoch": epoch, "offset": 0}})
	m := c.read()
	if m["ok"] != true || m["recovered"] != false || m["offset"] != float64(4) {
		t.Fatalf("recover reply ok=%v recovered=%v offset=%v", m["ok"], m["recovered"], m["offset"])
	}
	if pubs, _ := m["publications"].([]any); len(pubs) != 0 {
		t.Fatalf("recover reply carries %d publications, want none", len(pubs))
	}
	// Live delivery continues after it.
	pub.send(map[string]any{"op": "publish", "id": 10, "channel": "r", "data": "small"})
	if m := c.read(); m["push"] != "pub" || m["offset"] != float64(5) {
		t.Fatalf("live after recover: %v", m)
	}
}
