package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// healthcheckCommand is "fanout healthcheck": it asks a running server's
// /healthz and succeeds (exit 0) when it answers 200. It exists for
// container health checks: the image is FROM scratch, with no curl or wget.
// With no --url it asks the server this environment configures: the port
// of FANOUT_ADDR (default :8080) on the loopback interface, over https when
// FANOUT_TLS_CERT is set (the certificate is not verified: it names the
// public host, not 127.0.0.1, and this only checks liveness).
func healthcheckCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fanout healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		url     string
		timeout time.Duration
	)
	fs.StringVar(&url, "url", "", "URL to GET (default: /healthz on the loopback port of $FANOUT_ADDR, https with $FANOUT_TLS_CERT)")
	fs.DurationVar(&timeout, "timeout", 3*time.Second, "give up after this long")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: fanout healthcheck [--url URL] [--timeout 3s]\n\nExits 0 when the server answers 200, 1 otherwise.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("healthcheck: unexpected arguments %q", fs.Args())
	}
	if url == "" {
		var err error
		if url, err = defaultHealthURL(os.Getenv("FANOUT_ADDR"), os.Getenv("FANOUT_TLS_CERT") != ""); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // liveness of our own process on loopback
		DisableKeepAlives: true,
	}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s: %s", url, resp.Status, body)
	}
	_, err = fmt.Fprintf(stdout, "%s: %s", url, body)
	return err
}

// defaultHealthURL is /healthz on the loopback address of the port addr
// (a --addr value; "" is the default :8080) listens on. A wildcard or
// named host is replaced by 127.0.0.1, since the check runs next to the
// server; an explicit IP is kept (the server may listen on it only).
func defaultHealthURL(addr string, https bool) (string, error) {
	if addr == "" {
		addr = ":8080"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("healthcheck: FANOUT_ADDR=%q: %w", addr, err)
	}
	if port == "" {
		return "", errors.New("healthcheck: FANOUT_ADDR has no port")
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	scheme := "http"
	if https {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, port) + "/healthz", nil
}
