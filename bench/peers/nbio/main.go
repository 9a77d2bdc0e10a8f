// Command nbio is a benchmark peer built on github.com/lesismal/nbio in its
// non-blocking mode: an nbhttp.Engine (epoll pollers + a task pool) serves
// HTTP, and the nbhttp/websocket Upgrader turns /ws requests into
// event-driven WebSocket connections, so there is no goroutine per
// connection.
//
// Broadcast mode keeps a mutex-guarded set of connections and calls
// WriteMessage on each one. nbio writes are non-blocking: what the socket
// does not take at once is copied into the connection's write list and
// flushed by the poller, so one slow reader never stalls the loop.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/lesismal/nbio/nbhttp"
	"github.com/lesismal/nbio/nbhttp/websocket"
)

// connSet is the set of open connections used for broadcast.
type connSet struct {
	mu    sync.RWMutex
	conns map[*websocket.Conn]struct{}
}

func (s *connSet) add(c *websocket.Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *connSet) remove(c *websocket.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *connSet) broadcast(typ websocket.MessageType, data []byte) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for c := range s.conns {
		_ = c.WriteMessage(typ, data)
	}
}

func newUpgrader(echo bool, set *connSet) *websocket.Upgrader {
	u := websocket.NewUpgrader()
	// Benchmark clients may sit idle (broadcast receivers never send), so
	// the upgrader's default 120s read-idle deadline is turned off; the
	// gorilla and gws peers do not drop idle clients either. Any Origin is
	// accepted, as the peers are driven by non-browser load generators.
	u.KeepaliveTime = 0
	u.CheckOrigin = func(*http.Request) bool { return true }
	if echo {
		u.OnMessage(func(c *websocket.Conn, typ websocket.MessageType, data []byte) {
			_ = c.WriteMessage(typ, data)
		})
		return u
	}
	u.OnOpen(set.add)
	u.OnClose(func(c *websocket.Conn, _ error) { set.remove(c) })
	u.OnMessage(func(_ *websocket.Conn, typ websocket.MessageType, data []byte) {
		set.broadcast(typ, data)
	})
	return u
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	mode := flag.String("mode", "broadcast", "broadcast|echo")
	flag.Parse()
	if *mode != "broadcast" && *mode != "echo" {
		fmt.Fprintf(os.Stderr, "invalid --mode %q: want broadcast or echo\n", *mode)
		os.Exit(2)
	}
	// nbio logs engine start/stop at Info level; keep stdout to the one
	// "listening on" line and still report errors.
	logging.SetLevel(logging.LevelError)

	set := &connSet{conns: make(map[*websocket.Conn]struct{})}
	upgrader := newUpgrader(*mode == "echo", set)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		// Handlers are registered on the upgrader; the returned conn is
		// driven by the engine's pollers from here on.
		_, _ = upgrader.Upgrade(w, r, nil)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})

	// Engine options: library defaults, which nbio sizes for many
	// connections: NumCPU/4 pollers sharing one 64 KiB read buffer each (no
	// per-connection read buffer), MaxLoad 1M connections, non-blocking IO
	// mode, no write-buffer cap, 4 MiB max message. ReleaseWebsocketPayload
	// lets nbio recycle each message buffer after OnMessage returns (safe:
	// WriteMessage copies whatever it cannot write immediately), as nbio's
	// own websocket examples do.
	var bound net.Addr
	engine := nbhttp.NewEngine(nbhttp.Config{
		Network:                 "tcp",
		Addrs:                   []string{*addr},
		Handler:                 mux,
		ReleaseWebsocketPayload: true,
		Listen: func(network, address string) (net.Listener, error) {
			ln, err := net.Listen(network, address)
			if err == nil {
				bound = ln.Addr()
			}
			return ln, err
		},
	})
	if err := engine.Start(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", bound)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = engine.Shutdown(shutdownCtx)
}
