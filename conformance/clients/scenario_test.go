package clients

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine"
)

// clientSpec is what a client can do, which decides what the scenario
// expects of it.
type clientSpec struct {
	name      string
	encodings []string // "json", "msgpack": those the client has a codec for
	deflate   bool     // offers permessage-deflate
	fragments bool     // can send a fragmented message
	// closeSeen, when set, judges how the client reported a close whose
	// code it may not understand (see TestPythonWebsocketClient); it
	// returns the code to check against the expected one.
	closeSeen func(t *testing.T, want int, r reply) int
}

var compressionModes = []struct {
	name string
	mode engine.CompressionMode
}{
	{"compression-off", engine.CompressionOff},
	{"compression-on", engine.CompressionOn},
}

// runMatrix runs the scenario for every encoding of the client and both
// server compression settings, with one driver (one client process, one
// browser) for them all.
func runMatrix(t *testing.T, spec clientSpec, d driver) {
	t.Helper()
	for _, enc := range spec.encodings {
		for _, cm := range compressionModes {
			t.Run(enc+"/"+cm.name, func(t *testing.T) { scenario(t, spec, d, enc, cm.mode) })
		}
	}
}

// other is the encoding of the Go client that publishes to the client
// under test, so that every case also crosses encodings.
func other(enc string) string {
	if enc == "json" {
		return "msgpack"
	}
	return "json"
}

// scenario drives one client against a fresh server: three connections,
// ending with 1008, 1009 and 1012.
func scenario(t *testing.T, spec clientSpec, d driver, enc string, mode engine.CompressionMode) {
	s := startServer(t, engine.Config{
		Compression:     mode,
		TokenSecret:     tokenSecret,
		APIKey:          apiKey,
		MaxMessageBytes: maxMessageBytes,
	})
	if err := d.open("http://" + s.Addr().String() + "/conformance-clients-blank"); err != nil {
		t.Fatalf("open page: %v", err)
	}
	const room = "room"

	// Connection 1 (alice): handshake, publish and receive, then 1008.
	id, ext := connect(t, spec, d, s, "alice", enc, mode)
	must(t, d, map[string]any{"cmd": "subscribe", "channel": room})

	roundTrip := func(what, data string, fragments int) {
		t.Helper()
		r := must(t, d, map[string]any{"cmd": "publish", "channel": room, "data": data, "fragments": fragments})
		off := r.num("offset")
		if off < 1 {
			t.Fatalf("%s: publish reply without offset: %v", what, r)
		}
		got := must(t, d, map[string]any{"cmd": "recv", "channel": room})
		checkPub(t, what, got, data, off, id)
	}
	roundTrip("small message", "hello from "+spec.name, 0)
	before := compressedFrames(t, s)
	roundTrip("256 KiB message", payload(largeBytes, 1), 0)
	// What was negotiated is what was sent: the 256 KiB publication went
	// to this client compressed exactly when it negotiated compression.
	if made := compressedFrames(t, s) - before; (made > 0) != (ext != "") {
		t.Fatalf("extension %q negotiated, %v compressed frames made for the 256 KiB publication", ext, made)
	}
	if spec.fragments {
		roundTrip("fragmented message", payload(fragmentedBytes, 2), 4)
	} else {
		t.Logf("%s cannot send a fragmented message: not checked", spec.name)
	}

	// A Go client in the other encoding publishes; the client receives it.
	g := newGoDriver(gorillaLib{})
	gid, _ := connect(t, clientSpec{name: "gorilla (publisher)", deflate: true}, g, s, "gopher", other(enc), mode)
	for _, data := range []string{"from a Go client", payload(largeBytes, 3)} {
		r := must(t, g, map[string]any{"cmd": "publish", "channel": room, "data": data})
		got := must(t, d, map[string]any{"cmd": "recv", "channel": room})
		checkPub(t, "publication of a Go client", got, data, r.num("offset"), gid)
	}
	must(t, g, map[string]any{"cmd": "close"})

	disconnectUser(t, s, "alice")
	expectClose(t, spec, d, int(engine.ClosePolicy), "")

	// Connection 2 (bob): a message over MaxMessageBytes.
	connect(t, spec, d, s, "bob", enc, mode)
	must(t, d, map[string]any{"cmd": "send", "channel": room, "data": payload(tooLargeBytes, 4)})
	expectClose(t, spec, d, int(engine.CloseTooBig), "")

	// Connection 3 (carol): the server drains.
	connect(t, spec, d, s, "carol", enc, mode)
	must(t, d, map[string]any{"cmd": "subscribe", "channel": room})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	expectClose(t, spec, d, int(engine.CloseRestart), "retry_after_ms=")
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// connect opens a connection and checks the handshake: the subprotocol,
// and the extension the client negotiated.
func connect(t *testing.T, spec clientSpec, d driver, s *engine.Server, user, enc string, mode engine.CompressionMode) (client, extensions string) {
	t.Helper()
	r := must(t, d, map[string]any{"cmd": "connect", "url": wsURL(t, s, user), "encoding": enc})
	if got, want := r.str("protocol"), "fanout.v1."+enc; got != want {
		t.Fatalf("%s negotiated subprotocol %q, want %q", spec.name, got, want)
	}
	ext := r.str("extensions")
	switch {
	case mode == engine.CompressionOff && ext != "":
		t.Fatalf("CompressionOff: handshake answered Sec-WebSocket-Extensions %q, want none", ext)
	case mode == engine.CompressionOn && spec.deflate && !strings.HasPrefix(ext, "permessage-deflate"):
		t.Fatalf("CompressionOn: %s offers permessage-deflate, negotiated %q", spec.name, ext)
	case mode == engine.CompressionOn && !spec.deflate && ext != "":
		t.Fatalf("%s offers no extension, server answered %q", spec.name, ext)
	}
	if user == "alice" {
		t.Logf("%s: subprotocol %s, extensions %q", spec.name, r.str("protocol"), ext)
	}
	id := r.str("client")
	if id == "" {
		t.Fatalf("no connected push with a client id: %v", r)
	}
	return id, ext
}

// compressedFrames reads the server's fanout_hub_compressed_total.
func compressedFrames(t *testing.T, s *engine.Server) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "fanout_hub_compressed_total "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatal("no fanout_hub_compressed_total in /metrics")
	return 0
}

// checkPub checks a publication the client received against the one
// published: same data (length and SHA-256, as the client decoded it),
// offset and publisher.
func checkPub(t *testing.T, what string, got reply, data string, offset int, publisher string) {
	t.Helper()
	if got.num("len") != len(data) || got.str("sha256") != sha(data) {
		t.Fatalf("%s: received %d bytes (sha256 %s, type %s), published %d (sha256 %s)",
			what, got.num("len"), got.str("sha256"), got.str("type"), len(data), sha(data))
	}
	if got.num("offset") != offset {
		t.Fatalf("%s: received offset %d, published at %d", what, got.num("offset"), offset)
	}
	if got.str("publisher") != publisher {
		t.Fatalf("%s: info.client %q, want %q", what, got.str("publisher"), publisher)
	}
}

// expectClose waits for the server to close the client's connection and
// checks the code the client library reports (and part of the reason).
func expectClose(t *testing.T, spec clientSpec, d driver, want int, reason string) {
	t.Helper()
	r := must(t, d, map[string]any{"cmd": "wait_close"})
	code := r.num("code")
	if spec.closeSeen != nil {
		code = spec.closeSeen(t, want, r)
	}
	if code != want {
		t.Fatalf("%s saw close %d %q (raised %q), want %d", spec.name, code, r.str("reason"), r.str("raised"), want)
	}
	if reason != "" && code == r.num("code") && !strings.Contains(r.str("reason"), reason) {
		t.Fatalf("close %d reason %q, want it to contain %q", code, r.str("reason"), reason)
	}
}
