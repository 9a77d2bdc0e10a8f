package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"golang.org/x/sys/unix"
)

// transport selects how a connection is read.
type transport int

const (
	// transportEvent: netpoll, event-driven (wss:// falls back to a reading
	// goroutine, since TLS needs a blocking net.Conn).
	transportEvent transport = iota
	// transportPaused: a net.Conn nobody reads until serve is called.
	transportPaused
)

// dialer opens upgraded client connections to one URL.
type dialer struct {
	secure      bool
	addr        string // host:port to dial
	raddr       *net.TCPAddr
	srcIPs      []net.IP
	protocol    string // Sec-WebSocket-Protocol to offer, or ""
	request     []byte // the upgrade request up to the key header
	tlsConf     *tls.Config
	timeout     time.Duration
	readTimeout time.Duration
}

func newDialer(cfg *Config, subprotocol string) (*dialer, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err
	}
	d := &dialer{
		secure:      u.Scheme == "wss",
		protocol:    subprotocol,
		timeout:     cfg.ConnectTimeout,
		readTimeout: cfg.ReadTimeout,
	}
	port := u.Port()
	if port == "" {
		port = "80"
		if d.secure {
			port = "443"
		}
	}
	d.addr = net.JoinHostPort(u.Hostname(), port)
	// Resolve once, so that a flood does not become a flood of DNS lookups.
	if d.raddr, err = net.ResolveTCPAddr("tcp", d.addr); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", d.addr, err)
	}
	for _, s := range cfg.SourceIPs {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("bad source IP %q", s)
		}
		d.srcIPs = append(d.srcIPs, ip)
	}
	if d.secure {
		d.tlsConf = &tls.Config{ServerName: u.Hostname(), InsecureSkipVerify: cfg.Insecure}
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", path, u.Host)
	if subprotocol != "" {
		fmt.Fprintf(&b, "Sec-WebSocket-Protocol: %s\r\n", subprotocol)
	}
	for _, h := range cfg.Headers {
		name, value, _ := strings.Cut(h, ":")
		fmt.Fprintf(&b, "%s: %s\r\n", strings.TrimSpace(name), strings.TrimSpace(value))
	}
	d.request = b.Bytes()
	return d, nil
}

// srcFor returns the local address connection gid binds to, or nil.
func (d *dialer) srcFor(gid int) net.IP {
	if len(d.srcIPs) == 0 {
		return nil
	}
	if gid < 0 { // publishers
		gid = -gid
	}
	return d.srcIPs[gid%len(d.srcIPs)]
}

// dialError is a failed attempt with its cause (see causeOf).
type dialError struct {
	cause string
	err   error
}

func (e *dialError) Error() string { return e.cause + ": " + e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// statusError is an upgrade answered with another HTTP status than 101.
type statusError int

func (e statusError) Error() string { return "upgrade answered HTTP " + strconv.Itoa(int(e)) }

// handshakeError is a 101 response that is not a valid upgrade.
type handshakeError string

func (e handshakeError) Error() string { return "bad handshake: " + string(e) }

// dial opens one connection and upgrades it. The connection is not read
// yet: the caller starts it with start once its handler is ready.
func (d *dialer) dial(ctx context.Context, gid int, h handler, t transport, rcvbuf int) (*wsConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	c := &wsConn{h: h, readTimeout: d.readTimeout}
	if t == transportEvent && !d.secure {
		var laddr *netpoll.TCPAddr
		if ip := d.srcFor(gid); ip != nil {
			laddr = &netpoll.TCPAddr{TCPAddr: net.TCPAddr{IP: ip}}
		}
		conn, err := netpoll.DialTCP(ctx, "tcp", laddr, &netpoll.TCPAddr{TCPAddr: *d.raddr})
		if err != nil {
			cause := causeOf(err)
			if ctx.Err() != nil {
				cause = "timeout"
			} else if errors.Is(err, netpoll.ErrConnClosed) {
				// netpoll reports a connect that fails with an RST (or an
				// ICMP error) as a hang-up, without the errno.
				cause = "refused"
			}
			return nil, &dialError{cause, err}
		}
		c.np = conn
		_ = conn.SetReadDeadline(deadline)
		if err := d.upgradeNP(conn); err != nil {
			_ = conn.Close()
			cause := causeOf(err)
			if ctx.Err() != nil && cause != "eof" {
				cause = "timeout"
			}
			return nil, &dialError{cause, err}
		}
		return c, nil
	}

	nd := net.Dialer{Deadline: deadline}
	if ip := d.srcFor(gid); ip != nil {
		nd.LocalAddr = &net.TCPAddr{IP: ip}
	}
	if rcvbuf > 0 {
		nd.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	conn, err := nd.DialContext(ctx, "tcp", d.raddr.String())
	if err != nil {
		return nil, &dialError{causeOf(err), err}
	}
	if d.secure {
		tc := tls.Client(conn, d.tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			cause := "tls"
			if ctx.Err() != nil {
				cause = "timeout"
			}
			return nil, &dialError{cause, err}
		}
		conn = tc
	}
	_ = conn.SetDeadline(deadline)
	br := bufio.NewReaderSize(conn, 4096)
	if err := d.upgrade(conn, func() ([]byte, error) { return br.ReadSlice('\n') }); err != nil {
		_ = conn.Close()
		return nil, &dialError{causeOf(err), err}
	}
	_ = conn.SetDeadline(time.Time{})
	c.nc, c.br = conn, br
	return c, nil
}

// start begins reading an upgraded connection (not for transportPaused).
func (c *wsConn) start() error {
	if c.np != nil {
		return c.startEventDriven()
	}
	go c.serve(0)
	return nil
}

func (d *dialer) upgradeNP(conn netpoll.Connection) error {
	r := conn.Reader()
	defer r.Release()
	return d.upgrade(conn, func() ([]byte, error) { return r.Until('\n') })
}

// upgrade writes the upgrade request and checks the response, read line by
// line so that no byte after the response's header is consumed.
func (d *dialer) upgrade(w io.Writer, readLine func() ([]byte, error)) error {
	var keyRaw [16]byte
	for i := 0; i < 16; i += 8 {
		v := rand.Uint64()
		for j := 0; j < 8; j++ {
			keyRaw[i+j] = byte(v >> (8 * j))
		}
	}
	key := base64.StdEncoding.EncodeToString(keyRaw[:])
	req := make([]byte, 0, len(d.request)+64)
	req = append(req, d.request...)
	req = append(req, "Sec-WebSocket-Key: "...)
	req = append(req, key...)
	req = append(req, "\r\n\r\n"...)
	if _, err := w.Write(req); err != nil {
		return err
	}

	line, err := readLine()
	if err != nil {
		return err
	}
	// "HTTP/1.1 101 Switching Protocols"
	f := strings.Fields(string(line))
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return handshakeError("bad status line")
	}
	code, err := strconv.Atoi(f[1])
	if err != nil {
		return handshakeError("bad status line")
	}
	var upgrade, connection, accept, proto string
	for n := 0; ; n++ {
		if n > 100 {
			return handshakeError("too many header lines")
		}
		line, err := readLine()
		if err != nil {
			return err
		}
		l := strings.TrimRight(string(line), "\r\n")
		if l == "" {
			break
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "upgrade":
			upgrade = value
		case "connection":
			connection = value
		case "sec-websocket-accept":
			accept = value
		case "sec-websocket-protocol":
			proto = value
		}
	}
	if code != 101 {
		return statusError(code)
	}
	if !strings.EqualFold(upgrade, "websocket") {
		return handshakeError("no Upgrade: websocket")
	}
	if !headerHasToken(connection, "upgrade") {
		return handshakeError("no Connection: Upgrade")
	}
	if accept != acceptKey(key) {
		return handshakeError("wrong Sec-WebSocket-Accept")
	}
	if proto != d.protocol && !(proto == "" && d.protocol == "fanout.v1.json") {
		// No subprotocol in the answer means JSON to a fanout server.
		return handshakeError(fmt.Sprintf("subprotocol %q, offered %q", proto, d.protocol))
	}
	return nil
}

func headerHasToken(v, token string) bool {
	for _, t := range strings.Split(v, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}

// acceptKey is RFC 6455's Sec-WebSocket-Accept for key.
func acceptKey(key string) string {
	h := sha1.New()
	h.Write([]byte(key))
	h.Write([]byte("258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// causeOf names the cause of a failed connection attempt.
func causeOf(err error) string {
	var de *dialError
	var se statusError
	var he handshakeError
	var dns *net.DNSError
	switch {
	case errors.As(err, &de):
		return de.cause
	case errors.As(err, &se):
		return "status_" + strconv.Itoa(int(se))
	case errors.As(err, &he):
		return "bad_handshake"
	case errors.As(err, &dns):
		return "dns"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "addr_unavailable"
	case errors.Is(err, syscall.EADDRINUSE):
		return "addr_in_use"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return "too_many_files"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable"
	case isTimeout(err):
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, netpoll.ErrEOF),
		errors.Is(err, netpoll.ErrConnClosed), errors.Is(err, net.ErrClosed):
		return "eof"
	}
	return "other"
}

// causeOfReadErr names why an established connection's read failed.
func causeOfReadErr(err error) string {
	switch {
	case errors.Is(err, errTooLarge):
		return "too_large"
	case errors.Is(err, errProtocol):
		return "protocol_error"
	case isTimeout(err):
		return "read_timeout"
	}
	return causeOf(err)
}
