// Command idlerss measures a WebSocket server's resident memory per idle
// upgraded connection: it starts the server as a child process, reads its
// RSS, opens --conns connections (plain sockets, no goroutine each), waits for
// the server to settle, reads RSS again and prints the difference per
// connection. It drives fanout and the peers under bench/peers alike.
//
//	go build -o /tmp/fanout ./cmd/fanout
//	go run ./bench/idlerss --conns 15000 -- /tmp/fanout --addr 127.0.0.1:9100
//
// --tls connects with TLS (wss://, the certificate not verified), for a
// server started with one (fanout --tls-cert/--tls-key).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type result struct {
	Server          string  `json:"server"`
	Conns           int     `json:"conns"`
	BaselineRSS     int64   `json:"baseline_rss_bytes"`
	LoadedRSS       int64   `json:"loaded_rss_bytes"`
	BytesPerConn    float64 `json:"bytes_per_conn"`
	ConnectSeconds  float64 `json:"connect_seconds"`
	ConnectsPerSec  float64 `json:"connects_per_second"`
	FailedUpgrades  int     `json:"failed_upgrades"`
	ServerThreads   int     `json:"server_threads"`
	SettleSeconds   float64 `json:"settle_seconds"`
	ReadFirstPacket bool    `json:"read_first_message"`
	TLS             bool    `json:"tls"`
}

func main() {
	var (
		addr    = flag.String("addr", "127.0.0.1:9100", "host:port the server listens on (must match the server command)")
		path    = flag.String("path", "/ws", "WebSocket path")
		conns   = flag.Int("conns", 15000, "connections to open (the process file limit bounds it)")
		settle  = flag.Duration("settle", 3*time.Second, "wait after connecting before reading RSS")
		workers = flag.Int("workers", 32, "concurrent handshakes")
		sources = flag.String("source-ips", "127.0.0.1", "comma-separated local source addresses")
		name    = flag.String("name", "", "server name for the report (default: the command)")
		asJSON  = flag.Bool("json", false, "print the result as JSON")
		readMsg = flag.Bool("read-first", false, "expect and read one message after each upgrade (fanout's connected push)")
		useTLS  = flag.Bool("tls", false, "connect with TLS (wss://; the server's certificate is not verified)")
		deflate = flag.Bool("deflate", false, "offer permessage-deflate in each upgrade (to compare idle memory with compression negotiated)")
	)
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: idlerss [flags] -- server-command [args]")
		os.Exit(2)
	}
	dialTLS = *useTLS
	offer = ""
	if *deflate {
		offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n"
	}
	res, err := measure(flag.Args(), *addr, *path, *conns, *workers, *settle, strings.Split(*sources, ","), *readMsg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlerss:", err)
		os.Exit(1)
	}
	res.Server = *name
	if res.Server == "" {
		res.Server = strings.Join(flag.Args(), " ")
	}
	if *asJSON {
		_ = json.NewEncoder(os.Stdout).Encode(res)
		return
	}
	fmt.Printf("server=%s conns=%d baseline_rss=%d loaded_rss=%d bytes_per_conn=%.0f connects_per_sec=%.0f failed=%d\n",
		res.Server, res.Conns, res.BaselineRSS, res.LoadedRSS, res.BytesPerConn, res.ConnectsPerSec, res.FailedUpgrades)
}

func measure(cmdline []string, addr, path string, n, workers int, settle time.Duration, sources []string, readFirst bool) (*result, error) {
	cmd := exec.Command(cmdline[0], cmdline[1:]...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	if err := waitListening(addr, 10*time.Second); err != nil {
		return nil, err
	}
	// Warm the server with a few connections so that the baseline holds
	// its lazily built structures (pools, pollers) and only per-connection
	// memory is left to measure.
	warm, _ := dialMany(addr, path, 100, 8, sources, readFirst)
	for _, c := range warm {
		c.Close()
	}
	time.Sleep(settle)
	base, err := rss(cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	held, failed := dialMany(addr, path, n, workers, sources, readFirst)
	elapsed := time.Since(start)
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	time.Sleep(settle)
	loaded, err := rss(cmd.Process.Pid)
	if err != nil {
		return nil, err
	}
	threads, _ := threadCount(cmd.Process.Pid)
	if len(held) == 0 {
		return nil, errors.New("no connection upgraded")
	}
	return &result{
		Conns:           len(held),
		BaselineRSS:     base,
		LoadedRSS:       loaded,
		BytesPerConn:    float64(loaded-base) / float64(len(held)),
		ConnectSeconds:  elapsed.Seconds(),
		ConnectsPerSec:  float64(len(held)) / elapsed.Seconds(),
		FailedUpgrades:  failed,
		ServerThreads:   threads,
		SettleSeconds:   settle.Seconds(),
		ReadFirstPacket: readFirst,
		TLS:             dialTLS,
	}, nil
}

func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server did not listen on %s: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// offer is the extension header each upgrade carries (-deflate).
var offer string

// dialMany opens n upgraded connections with a bounded number of
// concurrent handshakes. The sockets are then left idle: no goroutine reads
// them.
func dialMany(addr, path string, n, workers int, sources []string, readFirst bool) ([]net.Conn, int) {
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + offer + "\r\n")
	var (
		mu     sync.Mutex
		held   = make([]net.Conn, 0, n)
		failed int
		wg     sync.WaitGroup
		next   = make(chan int)
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := upgradeOne(addr, sources[i%len(sources)], req, readFirst)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					held = append(held, c)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return held, failed
}

// dialTLS makes upgradeOne connect with TLS (--tls).
var dialTLS bool

func upgradeOne(addr, source string, req []byte, readFirst bool) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(strings.TrimSpace(source))}}
	c, err := d.DialContext(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if dialTLS {
		tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		c = tc
	}
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("upgrade failed: %v", err)
	}
	if offer != "" && !strings.HasPrefix(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		// -deflate measures connections that negotiated it: one that did
		// not is a failed connection, not a plain one counted as compressed.
		c.Close()
		return nil, fmt.Errorf("permessage-deflate offered, answered %q", resp.Header.Get("Sec-WebSocket-Extensions"))
	}
	if readFirst {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := io.CopyN(io.Discard, br, int64(h[1]&0x7f)); err != nil {
			c.Close()
			return nil, err
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

func rss(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := strings.Fields(string(v))
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func threadCount(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	return len(ents), err
}
