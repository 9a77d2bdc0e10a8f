package peers_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var (
	peers = []string{"gorilla", "gws", "nbio"}
	modes = []string{"echo", "broadcast"}
)

const (
	numClients = 3
	ioTimeout  = 10 * time.Second
)

// wsMsg is one received WebSocket data message.
type wsMsg struct {
	typ  int
	data []byte
}

func (m wsMsg) String() string { return fmt.Sprintf("{op=%d %q}", m.typ, m.data) }

// Payloads every test sends: a text message and a binary one containing a
// newline and invalid UTF-8 (so batching or text munging would show), and a
// larger binary one that spans several frames / read buffers.
var payloads = []wsMsg{
	{websocket.TextMessage, []byte("hello fanout")},
	{websocket.BinaryMessage, []byte{0, 1, '\n', 0xff, 0xfe, '\n'}},
	{websocket.BinaryMessage, bytes.Repeat([]byte("0123456789abcdef"), 4096)}, // 64 KiB
}

func TestPeers(t *testing.T) {
	binDir := t.TempDir()
	for _, peer := range peers {
		t.Run(peer, func(t *testing.T) {
			bin := buildPeer(t, peer, binDir)
			for _, mode := range modes {
				t.Run(mode, func(t *testing.T) {
					addr := startPeer(t, bin, mode)
					clients := dialClients(t, addr, numClients)
					switch mode {
					case "echo":
						testEcho(t, clients)
					case "broadcast":
						testBroadcast(t, clients)
					}
				})
			}
		})
	}
}

// testEcho checks that every client gets each of its messages back
// verbatim, with the same opcode, in order.
func testEcho(t *testing.T, clients []*websocket.Conn) {
	t.Helper()
	for i, c := range clients {
		for _, p := range payloads {
			write(t, c, p)
		}
		for j, want := range payloads {
			got := read(t, c)
			if got.typ != want.typ || !bytes.Equal(got.data, want.data) {
				t.Fatalf("client %d echo %d: got %s, want %s", i, j, trunc(got), trunc(want))
			}
		}
	}
}

// testBroadcast checks that one message sent by one client reaches every
// client, the sender included, exactly once, verbatim and with its opcode.
func testBroadcast(t *testing.T, clients []*websocket.Conn) {
	t.Helper()
	// The server may register a connection a moment after the handshake
	// completes. A client that receives its own broadcast is registered
	// (every peer registers a connection before reading from it), so once
	// each client has seen its own "ready" message all of them will see
	// what follows. No sleeps needed.
	for i, c := range clients {
		marker := fmt.Sprintf("ready-%d", i)
		write(t, c, wsMsg{websocket.TextMessage, []byte(marker)})
		for {
			m := read(t, c)
			if m.typ == websocket.TextMessage && string(m.data) == marker {
				break
			}
		}
	}

	// One sender; a fence message after the payloads marks the end, since
	// every peer preserves the order of messages from a single sender.
	fence := wsMsg{websocket.TextMessage, []byte("fence")}
	sender := clients[0]
	for _, p := range payloads {
		write(t, sender, p)
	}
	write(t, sender, fence)

	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got []wsMsg
			for {
				_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
				typ, data, err := c.ReadMessage()
				if err != nil {
					errs[i] = fmt.Errorf("client %d: read after %d messages: %w", i, len(got), err)
					return
				}
				m := wsMsg{typ, data}
				if strings.HasPrefix(string(data), "ready-") {
					continue // a late copy of another client's marker
				}
				if typ == fence.typ && bytes.Equal(data, fence.data) {
					break
				}
				got = append(got, m)
			}
			if len(got) != len(payloads) {
				errs[i] = fmt.Errorf("client %d: got %d messages before the fence, want %d", i, len(got), len(payloads))
				return
			}
			for j, want := range payloads {
				if got[j].typ != want.typ || !bytes.Equal(got[j].data, want.data) {
					errs[i] = fmt.Errorf("client %d message %d: got %s, want %s", i, j, trunc(got[j]), trunc(want))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, c *websocket.Conn, m wsMsg) {
	t.Helper()
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := c.WriteMessage(m.typ, m.data); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func read(t *testing.T, c *websocket.Conn) wsMsg {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	typ, data, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return wsMsg{typ, data}
}

func trunc(m wsMsg) string {
	if len(m.data) > 32 {
		return fmt.Sprintf("{op=%d %q... (%d bytes)}", m.typ, m.data[:32], len(m.data))
	}
	return m.String()
}

// buildPeer builds ./<peer> into dir and returns the binary's path.
func buildPeer(t *testing.T, peer, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, peer)
	cmd := exec.Command("go", "build", "-o", bin, "./"+peer)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./%s: %v\n%s", peer, err, out)
	}
	return bin
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// syncBuffer collects a child process's output for failure messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startPeer runs bin in mode on a free port, waits for /healthz, and
// registers a cleanup that sends SIGTERM to the process's PID (SIGKILL if it
// does not exit in time) and checks that it exited cleanly.
func startPeer(t *testing.T, bin, mode string) string {
	t.Helper()
	addr := freeAddr(t)
	out := &syncBuffer{}
	cmd := exec.Command(bin, "--addr", addr, "--mode", mode)
	cmd.Stdout = out
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		pid := cmd.Process.Pid
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("kill -TERM %d: %v", pid, err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("%s (pid %d) exited with %v after SIGTERM; output:\n%s", bin, pid, err, out)
			}
		case <-time.After(ioTimeout):
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-exited
			t.Errorf("%s (pid %d) ignored SIGTERM for %v; killed; output:\n%s", bin, pid, ioTimeout, out)
		}
	})

	client := &http.Client{Timeout: time.Second}
	checkFor(t, ioTimeout, func() error {
		select {
		case err := <-exited:
			exited <- err // keep it for the cleanup
			t.Fatalf("%s exited early: %v; output:\n%s", bin, err, out)
		default:
		}
		resp, err := client.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			return fmt.Errorf("/healthz: %d %q", resp.StatusCode, body)
		}
		return nil
	})
	if want := "listening on " + addr + "\n"; out.String() != want {
		t.Errorf("startup output = %q, want %q", out.String(), want)
	}
	return addr
}

// dialClients opens n WebSocket connections to addr's /ws and closes them
// when the test ends.
func dialClients(t *testing.T, addr string, n int) []*websocket.Conn {
	t.Helper()
	dialer := websocket.Dialer{HandshakeTimeout: ioTimeout}
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		c, resp, err := dialer.Dial("ws://"+addr+"/ws", nil)
		if err != nil {
			t.Fatalf("dial client %d: %v", i, err)
		}
		_ = resp.Body.Close()
		conns[i] = c
		t.Cleanup(func() { _ = c.Close() })
	}
	return conns
}

// checkFor polls f until it returns nil or timeout passes, then fails the
// test with f's last error.
func checkFor(t *testing.T, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", timeout, err)
		}
		time.Sleep(delay)
	}
}
