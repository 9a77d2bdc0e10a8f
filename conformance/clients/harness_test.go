package clients

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine"
	"github.com/fanout-dev/fanout/engine/auth"
)

// Server settings every case runs with: tokens (so that POST
// /api/disconnect can close a client's connection with 1008), the API key
// for that endpoint, and a message limit between the 256 KiB message that
// must pass and the one of tooLargeBytes that must be refused.
const (
	tokenSecret     = "conformance-clients-secret"
	apiKey          = "conformance-clients-key"
	maxMessageBytes = 320 << 10
	largeBytes      = 256 << 10
	fragmentedBytes = 64 << 10
	tooLargeBytes   = 400 << 10
)

// cmdTimeout bounds one command of the line protocol. Generous: a browser
// on a busy 2-core machine under -race can take seconds for a page.
const cmdTimeout = 60 * time.Second

// startServer starts a real server on a random loopback port; the test's
// cleanup closes it.
func startServer(t *testing.T, cfg engine.Config) *engine.Server {
	t.Helper()
	cfg.Addr = "127.0.0.1:0"
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// wsURL is the server's WebSocket endpoint with a token for user in the
// query (every client library can carry a query; not all can set headers).
func wsURL(t *testing.T, s *engine.Server, user string) string {
	t.Helper()
	tok, err := auth.Mint([]byte(tokenSecret), auth.Claims{Subject: user, Channels: []string{"*"}, Publish: []string{"*"}}, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return "ws://" + s.Addr().String() + "/ws?token=" + tok
}

// disconnectUser asks the server to close user's connections (1008).
func disconnectUser(t *testing.T, s *engine.Server, user string) {
	t.Helper()
	body := fmt.Sprintf(`{"user":%q}`, user)
	req, err := http.NewRequest("POST", "http://"+s.Addr().String()+"/api/disconnect", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+apiKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"disconnected":1`)) {
		t.Fatalf("POST /api/disconnect %s: %s %s", body, resp.Status, b)
	}
}

// requireClients reports whether a missing client program fails the test
// (.ci/run sets FANOUT_REQUIRE_CLIENTS=1) instead of skipping it.
func requireClients() bool { return os.Getenv("FANOUT_REQUIRE_CLIENTS") == "1" }

// missing fails or skips t for a client program that is not installed. A
// skip says so in one "SKIPPED:" line: go test shows nothing of a passing
// package without -v, so the line is also appended to $FANOUT_SKIP_LOG,
// which ./scripts/test.sh prints at the end.
func missing(t *testing.T, why string) {
	t.Helper()
	if requireClients() {
		t.Fatalf("%s, and FANOUT_REQUIRE_CLIENTS=1", why)
	}
	line := "SKIPPED: " + t.Name() + ": " + why + "; FANOUT_REQUIRE_CLIENTS=1 makes this a failure"
	if path := os.Getenv("FANOUT_SKIP_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			_, _ = fmt.Fprintln(f, line)
			_ = f.Close()
		}
	}
	t.Skip(line)
}

// pkgDir is this package's directory, where python/ and node/ live.
func pkgDir(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Dir(file)
}

// nodeModules checks that npm ci has been run in node/ and returns it.
func nodeModules(t *testing.T, pkgs ...string) string {
	t.Helper()
	dir := filepath.Join(pkgDir(t), "node", "node_modules")
	for _, p := range pkgs {
		if _, err := os.Stat(filepath.Join(dir, p, "package.json")); err != nil {
			missing(t, fmt.Sprintf("npm package %s not installed (run npm ci in conformance/clients/node)", p))
		}
	}
	return dir
}

// payload is n bytes of deterministic, mildly compressible ASCII text:
// words of random letters, so that deflate has something to do and a
// corrupted inflate shows up in the hash.
func payload(n int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		if r.IntN(7) == 0 {
			b[i] = ' '
		} else {
			b[i] = byte('a' + r.IntN(26))
		}
	}
	return string(b)
}

func sha(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// reply is one JSON line a client answers.
type reply map[string]any

func (r reply) str(k string) string { s, _ := r[k].(string); return s }
func (r reply) num(k string) int    { return int(toFloat(r[k])) }

func toFloat(v any) float64 {
	switch n := v.(type) {
	case float64:
		return n
	case float32:
		return float64(n)
	case int:
		return float64(n)
	case int8:
		return float64(n)
	case int16:
		return float64(n)
	case int32:
		return float64(n)
	case int64:
		return float64(n)
	case uint:
		return float64(n)
	case uint8:
		return float64(n)
	case uint16:
		return float64(n)
	case uint32:
		return float64(n)
	case uint64:
		return float64(n)
	}
	return -1
}

// driver is one client, commanded in the line protocol: a command is a
// JSON object with "cmd"; the answer is a JSON object, with "error" when
// the command failed.
type driver interface {
	do(cmd map[string]any) (reply, error)
	// open prepares a connection's environment: browsers load a page of
	// the server's origin (httpURL), the others do nothing.
	open(httpURL string) error
}

// must runs a command and fails t if it did not succeed.
func must(t *testing.T, d driver, cmd map[string]any) reply {
	t.Helper()
	r, err := d.do(cmd)
	if err != nil {
		t.Fatalf("%s: %v", describe(cmd), err)
	}
	if e := r.str("error"); e != "" {
		t.Fatalf("%s: client says: %s", describe(cmd), e)
	}
	return r
}

// describe shortens a command for messages (data can be 400 KiB).
func describe(cmd map[string]any) string {
	c := make(map[string]any, len(cmd))
	for k, v := range cmd {
		if s, ok := v.(string); ok && len(s) > 64 {
			v = fmt.Sprintf("<%d bytes>", len(s))
		}
		c[k] = v
	}
	b, _ := json.Marshal(c)
	return string(b)
}

// procDriver is a client program answering the line protocol on its
// stdin and stdout.
type procDriver struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte
	stderr *lockedBuffer
	mu     sync.Mutex
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 1<<20 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startProc starts a client program for the whole test; cleanup kills it.
func startProc(t *testing.T, name string, env []string, argv ...string) *procDriver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = pkgDir(t)
	// Its own process group, ended as a whole (as engine/browser_e2e_test.go
	// does): a driver's children (node's browser) must not outlive the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	p := &procDriver{name: name, cmd: cmd, lines: make(chan []byte, 4), stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin = stdin
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		defer close(p.lines)
		br := bufio.NewReaderSize(stdout, 1<<16)
		for {
			line, err := br.ReadBytes('\n')
			if len(bytes.TrimSpace(line)) > 0 {
				p.lines <- line
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = stdin.Close() // the programs exit at the end of their input
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			<-done
		}
		cancel()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything left in its group
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, p.stderr.String())
		}
	})
	return p
}

func (p *procDriver) open(httpURL string) error {
	if !strings.HasPrefix(p.name, "firefox") {
		return nil
	}
	r, err := p.do(map[string]any{"cmd": "open", "url": httpURL})
	if err == nil && r.str("error") != "" {
		err = errors.New(r.str("error"))
	}
	return err
}

func (p *procDriver) do(cmd map[string]any) (reply, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	if _, err := p.stdin.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("%s: write command: %v (stderr: %s)", p.name, err, tail(p.stderr.String()))
	}
	select {
	case line, ok := <-p.lines:
		if !ok {
			return nil, fmt.Errorf("%s exited (stderr: %s)", p.name, tail(p.stderr.String()))
		}
		var r reply
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("%s: bad answer %q: %v", p.name, tail(string(line)), err)
		}
		return r, nil
	case <-time.After(cmdTimeout):
		return nil, fmt.Errorf("%s: no answer within %v (stderr: %s)", p.name, cmdTimeout, tail(p.stderr.String()))
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return "..." + s[len(s)-2000:]
	}
	return s
}

// lookPython finds Debian's /usr/bin/python3 (the python3 on PATH may be
// another interpreter without the Debian modules) with the modules given.
func lookPython(t *testing.T, modules ...string) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		missing(t, py+" not installed")
	}
	for _, m := range modules {
		if out, err := exec.Command(py, "-c", "import "+m).CombinedOutput(); err != nil {
			missing(t, fmt.Sprintf("python module %s not importable by %s (Debian package python3-%s): %s", m, py, m, strings.TrimSpace(string(out))))
		}
	}
	return py
}

// lookProgram finds one of names on PATH.
func lookProgram(t *testing.T, what string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	missing(t, fmt.Sprintf("%s not installed (none of %s on PATH)", what, strings.Join(names, ", ")))
	return ""
}
