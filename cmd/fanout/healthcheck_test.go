package main

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fanout-dev/fanout/engine"
)

func TestDefaultHealthURL(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		https bool
		want  string
	}{
		{"", false, "http://127.0.0.1:8080/healthz"},
		{":9000", false, "http://127.0.0.1:9000/healthz"},
		{"0.0.0.0:9000", true, "https://127.0.0.1:9000/healthz"},
		{"[::]:9000", false, "http://127.0.0.1:9000/healthz"},
		{"localhost:9000", false, "http://127.0.0.1:9000/healthz"},
		{"10.1.2.3:80", false, "http://10.1.2.3:80/healthz"},
		{"[::1]:80", false, "http://[::1]:80/healthz"},
	} {
		got, err := defaultHealthURL(tc.addr, tc.https)
		if err != nil || got != tc.want {
			t.Errorf("defaultHealthURL(%q, %v) = %q, %v; want %q", tc.addr, tc.https, got, err, tc.want)
		}
	}
	for _, bad := range []string{"9000", "host:", "[::1"} {
		if got, err := defaultHealthURL(bad, false); err == nil {
			t.Errorf("defaultHealthURL(%q) = %q, want an error", bad, got)
		}
	}
}

// TestHealthcheck runs the subcommand against a real server (by URL and by
// FANOUT_ADDR), a server answering 503 and a closed port.
func TestHealthcheck(t *testing.T) {
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	addr := srv.Addr().String()

	var out bytes.Buffer
	if err := healthcheckCommand([]string{"--url", "http://" + addr + "/healthz"}, &out, io.Discard); err != nil {
		t.Fatalf("healthy server: %v", err)
	}
	if !strings.Contains(out.String(), "ok") {
		t.Errorf("output %q", out.String())
	}
	_, port, _ := net.SplitHostPort(addr)
	t.Setenv("FANOUT_ADDR", ":"+port)
	t.Setenv("FANOUT_TLS_CERT", "")
	if err := healthcheckCommand(nil, io.Discard, io.Discard); err != nil {
		t.Fatalf("healthy server found through FANOUT_ADDR: %v", err)
	}

	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	defer sick.Close()
	if err := healthcheckCommand([]string{"--url", sick.URL + "/healthz"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("server answering 503: %v, want an error naming 503", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if err := healthcheckCommand([]string{"--url", "http://" + closed + "/healthz", "--timeout", "2s"}, io.Discard, io.Discard); err == nil {
		t.Error("closed port: no error")
	}
	if err := healthcheckCommand([]string{"extra"}, io.Discard, io.Discard); err == nil {
		t.Error("stray argument accepted")
	}
}
