package redisbroker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// A link is one pub/sub connection to Redis. It speaks RESP2 itself,
// rather than through go-redis's PubSub, so that the broker knows exactly
// when a connection ends: go-redis reconnects and resubscribes silently,
// and publications sent meanwhile would be lost without the broker
// noticing. Here a link lives for one TCP connection; when it ends, the
// broker dials a new one, subscribes every channel of interest again and,
// once Redis confirms, catches every channel up from its history.
//
// Confirmation is by PING: Redis answers a connection's commands in order,
// so the pong of a PING written after a SUBSCRIBE means the subscription is
// in place.
type link struct {
	conn net.Conn

	wmu  sync.Mutex // serializes writes
	wbuf []byte

	mu      sync.Mutex
	waiters map[string]chan error // PING token -> its pong
	dead    error                 // why the link ended; nil while it lives
	seq     uint64
	done    chan struct{} // closed when the link ends
}

// maxBulk bounds one bulk string read from Redis (a publication is at most
// a few MiB): a corrupt stream must not make the reader allocate gigabytes.
const maxBulk = 64 << 20

func appendCommand(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	return b
}

// dialLink connects to Redis and authenticates; the caller subscribes.
func (b *Broker) dialLink(ctx context.Context) (*link, *bufio.Reader, error) {
	o := b.opts
	d := net.Dialer{Timeout: b.timeout, KeepAlive: 15 * time.Second}
	network := o.Network
	if network == "" {
		network = "tcp"
	}
	conn, err := d.DialContext(ctx, network, o.Addr)
	if err != nil {
		return nil, nil, err
	}
	if o.TLSConfig != nil {
		tc := tls.Client(conn, o.TLSConfig)
		hctx, cancel := context.WithTimeout(ctx, b.timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		conn = tc
	}
	l := &link{conn: conn, waiters: make(map[string]chan error), done: make(chan struct{})}
	rd := bufio.NewReaderSize(conn, 64<<10)
	if o.Password != "" {
		var cmd []byte
		if o.Username != "" {
			cmd = appendCommand(nil, "AUTH", o.Username, o.Password)
		} else {
			cmd = appendCommand(nil, "AUTH", o.Password)
		}
		_ = conn.SetDeadline(time.Now().Add(b.timeout))
		if _, err := conn.Write(cmd); err != nil {
			conn.Close()
			return nil, nil, err
		}
		v, err := readValue(rd)
		if err == nil {
			if e, ok := v.(respError); ok {
				err = fmt.Errorf("AUTH: %s", string(e))
			}
		}
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		_ = conn.SetDeadline(time.Time{})
	}
	return l, rd, nil
}

// write sends commands as one write.
func (l *link) write(timeout time.Duration, cmds ...[]string) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	buf := l.wbuf[:0]
	for _, c := range cmds {
		buf = appendCommand(buf, c...)
	}
	_ = l.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := l.conn.Write(buf)
	if cap(buf) <= 64<<10 {
		l.wbuf = buf[:0]
	}
	if err != nil {
		l.kill(err)
	}
	return err
}

// expect registers a PING token; the returned channel gets nil when its
// pong arrives, or the link's error when it ends first.
func (l *link) expect() (string, <-chan error) {
	ch := make(chan error, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	tok := "t" + strconv.FormatUint(l.seq, 36)
	if l.dead != nil {
		ch <- l.dead
		return tok, ch
	}
	l.waiters[tok] = ch
	return tok, ch
}

func (l *link) forget(tok string) {
	l.mu.Lock()
	delete(l.waiters, tok)
	l.mu.Unlock()
}

// pong delivers a pong; it reports whether a waiter had the token.
func (l *link) pong(tok string) bool {
	l.mu.Lock()
	ch, ok := l.waiters[tok]
	delete(l.waiters, tok)
	l.mu.Unlock()
	if ok {
		ch <- nil
	}
	return ok
}

// kill ends the link (idempotent): the connection is closed, which ends
// its reader, and every waiter gets err.
func (l *link) kill(err error) {
	if err == nil {
		err = errors.New("link closed")
	}
	l.mu.Lock()
	if l.dead != nil {
		l.mu.Unlock()
		return
	}
	l.dead = err
	ws := l.waiters
	l.waiters = nil
	close(l.done)
	l.mu.Unlock()
	_ = l.conn.Close()
	for _, ch := range ws {
		ch <- err
	}
}

// RESP2 values as readValue returns them: []byte (bulk string, nil for
// a null bulk), respSimple, respError, int64, []any (array).
type (
	respSimple string
	respError  string
)

var errProtocol = errors.New("redisbroker: RESP protocol error")

func readValue(rd *bufio.Reader) (any, error) {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errProtocol
		}
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, errProtocol
	}
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+':
		return respSimple(body), nil
	case '-':
		return respError(body), nil
	case ':':
		return strconv.ParseInt(string(body), 10, 64)
	case '$':
		n, err := strconv.ParseInt(string(body), 10, 64)
		if err != nil || n > maxBulk {
			return nil, errProtocol
		}
		if n < 0 {
			return []byte(nil), nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(rd, buf); err != nil {
			return nil, err
		}
		return buf[:n:n], nil
	case '*':
		n, err := strconv.ParseInt(string(body), 10, 64)
		if err != nil || n > 1<<20 {
			return nil, errProtocol
		}
		if n < 0 {
			return []any(nil), nil
		}
		arr := make([]any, n)
		for i := range arr {
			if arr[i], err = readValue(rd); err != nil {
				return nil, err
			}
		}
		return arr, nil
	}
	return nil, errProtocol
}
