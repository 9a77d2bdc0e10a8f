package redisbroker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server started by a test, on a port of its own,
// with its append-only file in a temporary directory so that a restart
// keeps what was acknowledged.
type redisServer struct {
	t    testing.TB
	path string
	port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
	URL  string
}

// startRedis starts redis-server from PATH. Without it the test is skipped,
// loudly, unless FANOUT_REQUIRE_CLIENTS=1 (CI), where it fails.
func startRedis(t testing.TB) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("FANOUT_REQUIRE_CLIENTS") == "1" {
			t.Fatal("redis-server not installed (apt-get install redis-server) and FANOUT_REQUIRE_CLIENTS=1")
		}
		line := "SKIPPED: " + t.Name() + ": redis-server not installed (apt-get install redis-server), so the cluster broker tests did not run; FANOUT_REQUIRE_CLIENTS=1 makes this a failure"
		if path := os.Getenv("FANOUT_SKIP_LOG"); path != "" { // scripts/test.sh prints it at the end
			if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				_, _ = fmt.Fprintln(f, line)
				_ = f.Close()
			}
		}
		t.Skip(line)
	}
	port := freePort(t)
	r := &redisServer{t: t, path: path, port: port, dir: t.TempDir(), URL: fmt.Sprintf("redis://127.0.0.1:%d", port)}
	r.start()
	t.Cleanup(func() { r.stop(true) })
	return r
}

// freePort returns a free port below the ephemeral range. A port in that
// range can be taken while redis-server is down or starting by a client's
// outgoing connection (on loopback even by a connection to that very port,
// which then connects to itself), and redis-server would fail to bind it.
func freePort(t testing.TB) int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		_, _ = fmt.Sscan(string(b), &lo)
	}
	if lo > 11000 {
		for range 100 {
			p := 10000 + rand.IntN(lo-10000)
			if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
				ln.Close()
				return p
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (r *redisServer) start() {
	r.t.Helper()
	r.cmd = exec.Command(r.path, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", r.dir, "--save", "", "--appendonly", "yes", "--appendfsync", r.fsync(),
		"--daemonize", "no", "--loglevel", "warning", "--protected-mode", "no")
	r.cmd.Stdout, r.cmd.Stderr = io.Discard, io.Discard
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan struct{})
	r.done = done
	go func(c *exec.Cmd) { _ = c.Wait(); close(done) }(r.cmd)
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), MaxRetries: -1, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := c.Ping(context.Background()).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("redis-server not answering: %v", err)
		}
		select {
		case <-done:
			r.t.Fatalf("redis-server exited at start (port %d taken?): %v", r.port, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop kills redis-server (SIGKILL: what is acknowledged is in the
// append-only file already) or stops it (SIGTERM).
func (r *redisServer) stop(kill bool) {
	if r.cmd == nil {
		return
	}
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	_ = r.cmd.Process.Signal(sig)
	<-r.done
	r.cmd = nil
}

func (r *redisServer) client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", r.port), Protocol: 2, DisableIdentity: true})
	r.t.Cleanup(func() { c.Close() })
	return c
}

func quietLogger() *slog.Logger {
	if os.Getenv("REDISBROKER_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// recorder is a BrokerHandler that keeps what it was handed, per channel,
// and fails the test on a concurrent call for one channel.
type recorder struct {
	t    testing.TB
	mu   sync.Mutex
	pubs map[string][]*codec.Publication
	busy map[string]bool
}

func newRecorder(t testing.TB) *recorder {
	return &recorder{t: t, pubs: map[string][]*codec.Publication{}, busy: map[string]bool{}}
}

func (r *recorder) HandlePublication(ch string, p *codec.Publication) {
	r.mu.Lock()
	if r.busy[ch] {
		r.t.Errorf("concurrent HandlePublication for %q", ch)
	}
	r.busy[ch] = true
	r.mu.Unlock()
	time.Sleep(time.Microsecond)
	r.mu.Lock()
	r.busy[ch] = false
	r.pubs[ch] = append(r.pubs[ch], p)
	r.mu.Unlock()
}

func (r *recorder) get(ch string) []*codec.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*codec.Publication(nil), r.pubs[ch]...)
}

// waitFor polls f until it returns nil or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newTestBroker(t testing.TB, url string, h *recorder, cfg Config) *Broker {
	t.Helper()
	cfg.URL = url
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = 200 * time.Millisecond
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Run(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// fsync is the append-only file's fsync policy: "always" by default, so
// that a SIGKILL loses nothing acknowledged (with "everysec" Redis may
// postpone a write while a background fsync runs, and acknowledge what a
// SIGKILL then loses: docs/CLUSTER.md); REDISBROKER_FSYNC overrides it.
func (r *redisServer) fsync() string {
	if v := os.Getenv("REDISBROKER_FSYNC"); v != "" {
		return v
	}
	return "always"
}
