package clients

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"
	"github.com/vmihailenco/msgpack/v5"
)

// goLib is a Go WebSocket library: the transport of a goDriver.
type goLib interface {
	name() string
	module() string
	dial(ctx context.Context, url, subprotocol string) (c goConn, protocol, extensions string, err error)
}

// goConn is one connection of a goLib.
type goConn interface {
	// write sends one message, in fragments frames when fragments > 1
	// (as the library fragments: at least that many).
	write(ctx context.Context, binary bool, p []byte, fragments int) error
	read(ctx context.Context) ([]byte, error)
	// closeInfo is the close code and reason the library reports in the
	// error that ended reading; code -1 when it reports none.
	closeInfo(err error) (code int, reason string)
	close() error
}

// modVersion is the version of a module the test binary links, as the
// build info says or else as go.mod requires it (test binaries may carry
// no dependency list).
func modVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "go.mod"))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == path {
			return f[1]
		}
	}
	return "unknown"
}

// goDriver answers the line protocol in-process through a goLib, with
// fanout's encodings done by encoding/json and vmihailenco/msgpack (not by
// fanout's codec, which would be testing the server with itself).
type goDriver struct {
	lib     goLib
	conn    goConn
	enc     string
	nextID  int
	rs      *readState
	pending []map[string]any
}

// readState is one connection's read loop: its messages, then the error
// that ended it (valid once msgs is closed).
type readState struct {
	enc  string
	msgs chan map[string]any
	err  error
}

func newGoDriver(lib goLib) *goDriver { return &goDriver{lib: lib} }

func (g *goDriver) open(string) error { return nil }

func (g *goDriver) do(cmd map[string]any) (reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	channel, _ := cmd["channel"].(string)
	data, _ := cmd["data"].(string)
	fragments, _ := cmd["fragments"].(int)
	switch cmd["cmd"] {
	case "version":
		return reply{"client": g.lib.name(), "version": modVersion(g.lib.module())}, nil
	case "connect":
		if g.conn != nil {
			_ = g.conn.close()
		}
		g.enc = cmd["encoding"].(string)
		c, proto, ext, err := g.lib.dial(ctx, cmd["url"].(string), "fanout.v1."+g.enc)
		if err != nil {
			return reply{"error": err.Error()}, nil
		}
		g.conn, g.pending = c, nil
		g.rs = &readState{enc: g.enc, msgs: make(chan map[string]any, 16)}
		go g.readLoop(c, g.rs)
		m, err := g.wait(ctx, func(m map[string]any) bool { return m["push"] == "connected" })
		if err != nil {
			return nil, err
		}
		return reply{"protocol": proto, "extensions": ext, "client": m["client"]}, nil
	case "subscribe", "publish":
		g.nextID++
		id := g.nextID
		msg := map[string]any{"op": cmd["cmd"], "id": id, "channel": channel}
		if cmd["cmd"] == "publish" {
			msg["data"] = data
		}
		if err := g.send(ctx, msg, fragments); err != nil {
			return reply{"error": err.Error()}, nil
		}
		m, err := g.wait(ctx, func(m map[string]any) bool { return m["push"] == nil && toFloat(m["id"]) == float64(id) })
		if err != nil {
			return nil, err
		}
		if e, ok := m["error"]; ok {
			return reply{"error": fmt.Sprint(e)}, nil
		}
		return reply{"offset": toFloat(m["offset"])}, nil
	case "recv":
		m, err := g.wait(ctx, func(m map[string]any) bool { return m["push"] == "pub" && m["channel"] == channel })
		if err != nil {
			return nil, err
		}
		r := reply{"offset": toFloat(m["offset"]), "type": fmt.Sprintf("%T", m["data"])}
		if s, ok := m["data"].(string); ok {
			r["len"], r["sha256"] = len(s), sha(s)
		}
		if info, ok := m["info"].(map[string]any); ok {
			r["publisher"] = info["client"]
		}
		return r, nil
	case "send":
		// No reply is awaited: the server closes the connection instead.
		// A write error (the server closed while the message was still
		// being written) is expected; wait_close says what was seen.
		_ = g.send(ctx, map[string]any{"op": "publish", "id": 999999, "channel": channel, "data": data}, 0)
		return reply{}, nil
	case "wait_close":
		for range g.rs.msgs { // drain until the read loop ends
		}
		code, reason := g.conn.closeInfo(g.rs.err)
		// What a user does after the read error: release the connection
		// (gorilla leaves the TCP connection open until Close).
		_ = g.conn.close()
		r := reply{"code": code, "reason": reason}
		if code < 0 {
			r["raised"] = fmt.Sprint(g.rs.err)
		}
		return r, nil
	case "close":
		err := g.conn.close()
		for range g.rs.msgs {
		}
		if err != nil {
			return reply{"error": err.Error()}, nil
		}
		return reply{}, nil
	}
	return reply{"error": fmt.Sprintf("unknown command %v", cmd["cmd"])}, nil
}

func (g *goDriver) send(ctx context.Context, msg map[string]any, fragments int) error {
	var p []byte
	var err error
	if g.enc == "msgpack" {
		p, err = msgpack.Marshal(msg)
	} else {
		p, err = json.Marshal(msg)
	}
	if err != nil {
		return err
	}
	return g.conn.write(ctx, g.enc == "msgpack", p, fragments)
}

func (g *goDriver) readLoop(c goConn, rs *readState) {
	defer close(rs.msgs)
	for {
		p, err := c.read(context.Background())
		if err != nil {
			rs.err = err
			return
		}
		var m map[string]any
		if rs.enc == "msgpack" {
			err = msgpack.Unmarshal(p, &m)
		} else {
			err = json.Unmarshal(p, &m)
		}
		if err != nil {
			rs.err = fmt.Errorf("undecodable message %.200q: %w", p, err)
			return
		}
		rs.msgs <- m
	}
}

// wait returns the first message, queued or to come, for which match is
// true; the others stay queued in order.
func (g *goDriver) wait(ctx context.Context, match func(map[string]any) bool) (map[string]any, error) {
	for i, m := range g.pending {
		if match(m) {
			g.pending = append(g.pending[:i], g.pending[i+1:]...)
			return m, nil
		}
	}
	for {
		select {
		case m, ok := <-g.rs.msgs:
			if !ok {
				return nil, fmt.Errorf("%s: connection ended while waiting: %v", g.lib.name(), g.rs.err)
			}
			if match(m) {
				return m, nil
			}
			g.pending = append(g.pending, m)
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: nothing matching within %v", g.lib.name(), cmdTimeout)
		}
	}
}

// gorillaLib offers permessage-deflate (gorilla supports only no context
// takeover) and writes through a 16 KiB buffer, so that NextWriter sends
// a message larger than that as several frames.
type gorillaLib struct{}

func (gorillaLib) name() string   { return "gorilla/websocket" }
func (gorillaLib) module() string { return "github.com/gorilla/websocket" }

func (gorillaLib) dial(ctx context.Context, url, proto string) (goConn, string, string, error) {
	d := websocket.Dialer{
		Subprotocols:      []string{proto},
		EnableCompression: true,
		WriteBufferSize:   16 << 10,
		HandshakeTimeout:  30 * time.Second,
	}
	c, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, "", "", fmt.Errorf("dial: %v (%s)", err, status(resp))
	}
	return gorillaConn{c}, c.Subprotocol(), resp.Header.Get("Sec-WebSocket-Extensions"), nil
}

func status(resp *http.Response) string {
	if resp == nil {
		return "no response"
	}
	return resp.Status
}

type gorillaConn struct{ c *websocket.Conn }

func (g gorillaConn) write(_ context.Context, binary bool, p []byte, fragments int) error {
	typ := websocket.TextMessage
	if binary {
		typ = websocket.BinaryMessage
	}
	if fragments <= 1 {
		return g.c.WriteMessage(typ, p)
	}
	w, err := g.c.NextWriter(typ)
	if err != nil {
		return err
	}
	step := (len(p) + fragments - 1) / fragments
	for len(p) > 0 {
		n := min(step, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return w.Close()
}

func (g gorillaConn) read(context.Context) ([]byte, error) {
	_, p, err := g.c.ReadMessage()
	return p, err
}

func (g gorillaConn) closeInfo(err error) (int, string) {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Text
	}
	return -1, ""
}

func (g gorillaConn) close() error {
	_ = g.c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(5*time.Second))
	return g.c.Close()
}

// coderLib offers permessage-deflate with context takeover.
type coderLib struct{}

func (coderLib) name() string   { return "coder/websocket" }
func (coderLib) module() string { return "github.com/coder/websocket" }

func (coderLib) dial(ctx context.Context, url, proto string) (goConn, string, string, error) {
	c, resp, err := coder.Dial(ctx, url, &coder.DialOptions{
		Subprotocols:    []string{proto},
		CompressionMode: coder.CompressionContextTakeover,
	})
	if err != nil {
		return nil, "", "", fmt.Errorf("dial: %v (%s)", err, status(resp))
	}
	c.SetReadLimit(4 * maxMessageBytes) // its default is 32 KiB
	return coderConn{c}, c.Subprotocol(), resp.Header.Get("Sec-WebSocket-Extensions"), nil
}

type coderConn struct{ c *coder.Conn }

func (c coderConn) write(ctx context.Context, binary bool, p []byte, fragments int) error {
	typ := coder.MessageText
	if binary {
		typ = coder.MessageBinary
	}
	if fragments <= 1 {
		return c.c.Write(ctx, typ, p)
	}
	// Each Write of coder's Writer is a frame of its own (compressed, it
	// is what the deflater has flushed).
	w, err := c.c.Writer(ctx, typ)
	if err != nil {
		return err
	}
	step := (len(p) + fragments - 1) / fragments
	for len(p) > 0 {
		n := min(step, len(p))
		if _, err := w.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return w.Close()
}

func (c coderConn) read(ctx context.Context) ([]byte, error) {
	_, p, err := c.c.Read(ctx)
	return p, err
}

func (c coderConn) closeInfo(err error) (int, string) {
	var ce coder.CloseError
	if errors.As(err, &ce) {
		return int(ce.Code), ce.Reason
	}
	return -1, ""
}

func (c coderConn) close() error { return c.c.Close(coder.StatusNormalClosure, "") }
