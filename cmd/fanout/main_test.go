package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// buildBinary compiles the command once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fanout")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func checkFor(t *testing.T, timeout time.Duration, f func() error) {
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
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSIGTERMDrainsWith1012AndExitsZero(t *testing.T) {
	bin := buildBinary(t)
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--drain-delay", "1s", "--drain-timeout", "3s", "--log-format", "json")
	cmd.Env = append(os.Environ(), "FANOUT_ADDR="+addr) // the environment equivalent of --addr
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	checkFor(t, 10*time.Second, func() error {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return errors.New(resp.Status)
		}
		return nil
	})
	var clients []*websocket.Conn
	for i := 0; i < 10; i++ {
		c, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, _, err := c.ReadMessage(); err != nil { // connected
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The drain delay: the node says it is not ready and refuses new
	// upgrades, but still answers, so a load balancer can take it out.
	checkFor(t, 5*time.Second, func() error {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return errors.New("readyz: " + resp.Status)
		}
		return nil
	})
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("upgrade while draining: %v %+v, want 503 with Retry-After", err, resp)
	}
	for _, c := range clients {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 1012 || !strings.HasPrefix(ce.Text, "retry_after_ms=") {
			t.Fatalf("client got %v, want close 1012 with retry_after_ms", err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, logs.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("exit took %v, drain delay 1s + drain timeout 3s", d)
	}
}

func TestFlags(t *testing.T) {
	bin := buildBinary(t)
	tests := []struct {
		name     string
		args     []string
		env      string
		exitCode int
		output   string
	}{
		{"help lists flags with defaults", []string{"--help"}, "", 0, "-write-queue-bytes int"},
		{"help names the environment", []string{"--help"}, "", 0, "FANOUT_"},
		{"unknown flag", []string{"--nope"}, "", 2, "flag provided but not defined"},
		{"bad env value", nil, "FANOUT_IDLE_TIMEOUT=soon", 2, "FANOUT_IDLE_TIMEOUT"},
		{"bad log format", []string{"--log-format", "xml"}, "", 2, "--log-format"},
		{"bad compression", []string{"--compression", "maybe"}, "", 2, "--compression"},
		{"bad compression level", []string{"--compression-level", "12"}, "", 2, "--compression-level"},
		{"compression in help", []string{"--help"}, "", 0, "-compression-min-bytes int"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = os.Environ()
			if tt.env != "" {
				cmd.Env = append(cmd.Env, tt.env)
			}
			out, err := cmd.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			}
			if code != tt.exitCode || !strings.Contains(string(out), tt.output) {
				t.Fatalf("exit %d, output:\n%s", code, out)
			}
		})
	}
}
