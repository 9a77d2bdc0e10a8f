package engine

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fdLimitChild is the RLIMIT_NOFILE of TestFDLimit's server process. With
// it the defaults are MaxConns 344 (600 less 256) and an accept cap of 472
// (600 less 128).
const (
	fdLimitChild     = 600
	fdLimitMaxConns  = 344
	fdLimitAcceptCap = 472
)

// TestFDLimit runs a server in a child process (this test binary again)
// whose RLIMIT_NOFILE is 600, with the default limits, and drives it from
// here: at MaxConns, upgrades get 503 with Retry-After while the open
// WebSockets, /healthz and /metrics are served; a flood of idle sockets is
// shed at the accept cap (503, closed) so that the admin port keeps
// answering; and when the process does run out of descriptors (the child
// fills them with /dev/null), netpoll's accept neither spins nor dies: the
// failure is logged, and a client waiting in the backlog is served once
// descriptors are free again.
func TestFDLimit(t *testing.T) {
	if os.Getenv("FANOUT_FDLIMIT_CHILD") == "1" {
		fdLimitChildMain()
		return
	}
	if testing.Short() {
		t.Skip("starts a child process and 500 connections")
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Max < fdLimitChild {
		t.Skipf("RLIMIT_NOFILE hard limit %d (%v) under %d", rl.Max, err, fdLimitChild)
	}
	ch := startFDLimitChild(t)
	pub, admin := ch.addr, ch.admin

	metric := func(name string) float64 {
		t.Helper()
		return admMetric(t, admin, name)
	}
	waitMetric := func(name string, want float64) {
		t.Helper()
		checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
			if got := metric(name); got != want {
				return fmt.Errorf("%s = %v, want %v", name, got, want)
			}
			return nil
		})
	}
	if got := metric("fanout_fd_limit"); got != fdLimitChild {
		t.Fatalf("fd limit %v", got)
	}
	if got := metric("fanout_max_conns"); got != fdLimitMaxConns {
		t.Fatalf("default max conns %v, want %d", got, fdLimitMaxConns)
	}

	dial := func() net.Conn {
		t.Helper()
		nc, err := net.DialTimeout("tcp", pub, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
		return nc
	}
	type wsConn struct {
		nc net.Conn
		br *bufio.Reader
	}
	upgrade := func(nc net.Conn) (*http.Response, *bufio.Reader) {
		t.Helper()
		if _, err := nc.Write([]byte(upgradeRequest("GET", "/ws"))); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(nc)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp, br
	}

	// At MaxConns.
	var open []wsConn
	for i := range fdLimitMaxConns {
		nc := dial()
		resp, br := upgrade(nc)
		if resp.StatusCode != 101 {
			t.Fatalf("upgrade %d: %s", i, resp.Status)
		}
		open = append(open, wsConn{nc, br})
	}
	resp, _ := upgrade(dial())
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("past max conns: %s", resp.Status)
	}
	checkRetryAfter(t, resp)
	for _, path := range []string{"/healthz", "/readyz"} {
		if status, _ := admGet(t, pub, path); status != 200 {
			t.Fatalf("%s at max conns: %d", path, status)
		}
	}
	if got := metric(refusedMetric("max_conns")); got != 1 {
		t.Fatalf("refused max_conns %v", got)
	}
	ping := func(c wsConn, id int) {
		t.Helper()
		if _, err := c.nc.Write(pingCommands(id, 1)); err != nil {
			t.Fatal(err)
		}
		// Skip the connected push; the reply carries the id.
		for {
			line, err := readFrameFrom(c.br)
			if err != nil {
				t.Fatalf("ping %d: %v", id, err)
			}
			if strings.Contains(line, fmt.Sprintf(`"id":%d`, id)) {
				return
			}
		}
	}
	ping(open[0], 1)
	waitMetric("fanout_sockets", fdLimitMaxConns)

	// The accept cap: idle sockets past it are answered 503 and closed.
	const idle = fdLimitAcceptCap - fdLimitMaxConns + 20
	var idles []net.Conn
	for range idle {
		idles = append(idles, dial())
	}
	waitMetric(refusedMetric("accept_shed"), 20)
	waitMetric("fanout_sockets", fdLimitAcceptCap)
	last, err := io.ReadAll(idles[len(idles)-1])
	if err != nil && !isReset(err) || !strings.HasPrefix(string(last), "HTTP/1.1 503") {
		t.Fatalf("a shed socket got %q (%v)", last, err)
	}
	if status, _ := admGet(t, admin, "/healthz"); status != 200 {
		t.Fatalf("admin /healthz at the accept cap: %d", status)
	}
	ping(open[1], 2)
	for _, nc := range idles {
		nc.Close()
	}
	waitMetric("fanout_sockets", fdLimitMaxConns)

	// Out of descriptors: accept fails with EMFILE.
	ch.command(t, "fill", "FILLED")
	waiting := dial()
	if _, err := waiting.Write([]byte(upgradeRequest("GET", "/ws"))); err != nil {
		t.Fatal(err)
	}
	ch.waitLog(t, "out of file descriptors")
	// No spinning: a second of wall time costs the child little CPU (an
	// accept loop spinning on EMFILE would take a whole core).
	cpu0 := ch.cpuTicks(t)
	time.Sleep(time.Second)
	if used := ch.cpuTicks(t) - cpu0; used > 25 {
		t.Fatalf("child used %d clock ticks of CPU in a second out of descriptors", used)
	}
	ping(open[2], 3) // open connections are still served
	ch.command(t, "free", "FREED")
	resp, _ = func() (*http.Response, *bufio.Reader) {
		br := bufio.NewReader(waiting)
		r, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the client waiting during EMFILE: %v", err)
		}
		return r, br
	}()
	// Served, and since it came past MaxConns: 503.
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("the client waiting during EMFILE: %s", resp.Status)
	}
	// One WebSocket leaves; then an upgrade succeeds.
	open[3].nc.Close()
	checkFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		nc := dial()
		defer nc.Close()
		if r, _ := upgrade(nc); r.StatusCode != 101 {
			return fmt.Errorf("upgrade after the EMFILE episode: %s", r.Status)
		}
		return nil
	})
	if status, _ := admGet(t, pub, "/healthz"); status != 200 {
		t.Fatalf("/healthz after: %d", status)
	}
}

// readFrameFrom reads one unmasked server frame and returns its payload.
func readFrameFrom(br *bufio.Reader) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return "", err
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return "", err
		}
		n = int(l[0])<<8 | int(l[1])
	case 127:
		return "", fmt.Errorf("unexpected 64-bit length")
	}
	p := make([]byte, n)
	_, err := io.ReadFull(br, p)
	return string(p), err
}

// fdLimitChild is the server process of TestFDLimit.
type fdLimitProc struct {
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	lines       chan string // the child's stdout
	addr, admin string

	mu  sync.Mutex
	log strings.Builder // the child's stderr
}

func startFDLimitChild(t *testing.T) *fdLimitProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFDLimit$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FANOUT_FDLIMIT_CHILD=1")
	p := &fdLimitProc{cmd: cmd, lines: make(chan string, 16)}
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() || os.Getenv("FANOUT_FDLIMIT_LOG") != "" {
			p.mu.Lock()
			t.Logf("child log:\n%s", p.log.String())
			p.mu.Unlock()
		}
	})
	line := p.expect(t, "ADDR")
	f := strings.Fields(line)
	if len(f) != 3 {
		t.Fatalf("child said %q", line)
	}
	p.addr, p.admin = f[1], f[2]
	return p
}

// expect returns the child's next line, which must start with prefix.
func (p *fdLimitProc) expect(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok || !strings.HasPrefix(line, prefix) {
			t.Fatalf("child said %q (open %v), want %s", line, ok, prefix)
		}
		return line
	case <-time.After(60 * time.Second):
		t.Fatalf("child said nothing, want %s", prefix)
	}
	return ""
}

func (p *fdLimitProc) command(t *testing.T, cmd, reply string) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	p.expect(t, reply)
}

// waitLog waits for the child to log a line containing s.
func (p *fdLimitProc) waitLog(t *testing.T, s string) {
	t.Helper()
	checkFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !strings.Contains(p.log.String(), s) {
			return fmt.Errorf("child logged no %q", s)
		}
		return nil
	})
}

// cpuTicks is the child's user and system CPU time in clock ticks.
func (p *fdLimitProc) cpuTicks(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) may hold spaces: count after its ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// fdLimitChildMain is the child: a server with default limits under
// RLIMIT_NOFILE fdLimitChild, commanded on stdin ("fill": take every free
// descriptor; "free": give them back; EOF: stop).
func fdLimitChildMain() {
	rl := unix.Rlimit{Cur: fdLimitChild, Max: fdLimitChild}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		fmt.Println("ERR setrlimit", err)
		os.Exit(1)
	}
	s, err := New(Config{
		Addr:             "127.0.0.1:0",
		AdminAddr:        "127.0.0.1:0",
		HandshakeTimeout: 2 * time.Minute, // idle sockets stay for the test
		IdleTimeout:      5 * time.Minute,
		MaxConnsPerIP:    -1,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err == nil {
		err = s.Start()
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("ADDR", s.Addr(), s.AdminAddr())
	var held []int
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "fill":
			for {
				fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					break
				}
				held = append(held, fd)
			}
			fmt.Println("FILLED", len(held))
		case "free":
			for _, fd := range held {
				unix.Close(fd)
			}
			held = nil
			fmt.Println("FREED")
		}
	}
	_ = s.Close()
	os.Exit(0)
}
