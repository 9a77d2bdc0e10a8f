package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
)

func TestParseSourceIPs(t *testing.T) {
	ips, err := parseSourceIPs("127.0.0.1-127.0.0.3, 10.0.0.9,::1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ip := range ips {
		got = append(got, ip.String())
	}
	if want := "127.0.0.1 127.0.0.2 127.0.0.3 10.0.0.9 ::1"; strings.Join(got, " ") != want {
		t.Errorf("got %v, want %s", got, want)
	}
	for _, bad := range []string{"", "x", "127.0.0.3-127.0.0.1", "::1-::2", "1.2.3.4-"} {
		if _, err := parseSourceIPs(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestSplitAndSlow(t *testing.T) {
	cfg := &Config{Conns: 10, ConnectRate: 100, Publishers: 3, Mode: modeSlow, SlowPct: 25}
	shares := cfg.split(3)
	n, first := 0, 0
	for i, s := range shares {
		if s.First != first {
			t.Errorf("share %d starts at %d, want %d", i, s.First, first)
		}
		first += s.N
		n += s.N
		if (i == 0) != (s.Publishers == 3) {
			t.Errorf("share %d has %d publishers", i, s.Publishers)
		}
	}
	if n != 10 || shares[0].N != 4 || shares[2].N != 3 {
		t.Errorf("shares %+v", shares)
	}
	slow := 0
	for i := 0; i < 1000; i++ {
		if cfg.isSlow(i) {
			slow++
		}
	}
	if slow != 250 {
		t.Errorf("%d of 1000 slow, want 250", slow)
	}
}

func TestPayloads(t *testing.T) {
	now := time.Now().UnixNano()
	p := &protocol{raw: true, size: 40}
	b := p.appendRaw(nil, now, 7)
	if ts, tag, ok := parseRaw(b); len(b) != 40 || !ok || ts != now || tag != 7 {
		t.Errorf("raw: len %d t %d tag %d", len(b), ts, tag)
	}
	for _, enc := range []codec.Encoding{codec.JSON, codec.Msgpack} {
		for _, size := range []int{1, 30, 64, 300, 70000} {
			p := &protocol{enc: enc, size: size}
			data := p.appendData(nil, now)
			if ts, ok := dataTime(enc, data); !ok || ts != now {
				t.Errorf("%v size %d: t %d ok %v", enc, size, ts, ok)
			}
			if size >= 64 && len(data) != size && !(enc == codec.Msgpack && len(data) >= size-2 && len(data) <= size) {
				t.Errorf("%v: data is %d bytes, want %d", enc, len(data), size)
			}
			// Through the codec as a publish, back as a pub push.
			msg, _ := p.appendPublish(nil, nil, []byte("ch"), 5, now)
			var cmd codec.Command
			if err := codec.DecodeCommand(enc, msg, &cmd); err != nil || cmd.Op != codec.OpPublish || cmd.ID != 5 {
				t.Fatalf("%v: publish does not decode: %v", enc, err)
			}
			pub := &codec.Publication{Channel: "ch", Epoch: "e", Offset: 9}
			pub.JSON, _ = codec.Transcode(nil, enc, codec.JSON, cmd.Data)
			pub.Msgpack, _ = codec.Transcode(nil, enc, codec.Msgpack, cmd.Data)
			var m codec.ServerMessage
			if err := codec.DecodeServerMessage(enc, codec.AppendPub(nil, enc, pub), &m); err != nil {
				t.Fatal(err)
			}
			if ts, ok := dataTime(enc, pubData(enc, &m.Pub)); !ok || ts != now || m.Pub.Offset != 9 {
				t.Errorf("%v: pub push t %d offset %d", enc, ts, m.Pub.Offset)
			}
		}
	}
	if v, ok := jsonObjectInt([]byte(`{"p":"\"t\":1", "t" : -42}`), "t"); !ok || v != -42 {
		t.Errorf("jsonObjectInt: %d %v", v, ok)
	}
}

func TestHistDataRoundTrip(t *testing.T) {
	h := newHist()
	for i := int64(1); i <= 1000; i++ {
		recordClamped(h, i*i)
	}
	recordClamped(h, 1<<40) // clamped to the maximum
	g := exportHist(h).toHist()
	if g.TotalCount() != h.TotalCount() || g.ValueAtQuantile(99) != h.ValueAtQuantile(99) || g.Max() != h.Max() {
		t.Errorf("round trip changed the histogram: %d/%d", g.TotalCount(), h.TotalCount())
	}
}

func TestAcceptKey(t *testing.T) {
	// RFC 6455 section 1.3.
	if got := acceptKey("dGhlIHNhbXBsZSBub25jZQ=="); got != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Errorf("acceptKey = %s", got)
	}
	if causeOf(&net.OpError{Op: "dial", Err: statusError(503)}) != "status_503" {
		t.Errorf("status cause")
	}
}
