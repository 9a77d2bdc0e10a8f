// Command gws is a benchmark peer built on github.com/lxzan/gws in its
// event-handler style: one ReadLoop goroutine per connection calls the
// handler's OnOpen/OnMessage/OnClose.
//
// Broadcast mode encodes each message once with gws.NewBroadcaster and
// queues the ready-made frame onto every connection's asynchronous write
// queue. Echo mode writes the message straight back from OnMessage, as in
// gws's examples/echo.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/lxzan/gws"
)

// handler implements gws.Event. BuiltinEventHandler supplies the default
// ping (answer with pong) and pong (ignore) behaviour.
type handler struct {
	gws.BuiltinEventHandler
	echo bool
	// conns is the set of open connections. gws's sharded ConcurrentMap is
	// what its own chatroom/push examples use to keep lock contention low.
	conns *gws.ConcurrentMap[*gws.Conn, struct{}]
}

func (h *handler) OnOpen(socket *gws.Conn) {
	if !h.echo {
		h.conns.Store(socket, struct{}{})
	}
}

func (h *handler) OnClose(socket *gws.Conn, _ error) {
	if !h.echo {
		h.conns.Delete(socket)
	}
}

func (h *handler) OnMessage(socket *gws.Conn, message *gws.Message) {
	defer message.Close()
	if h.echo {
		_ = socket.WriteMessage(message.Opcode, message.Bytes())
		return
	}
	// The frame is built once, during the first Broadcast call, so the
	// message buffer may be recycled (deferred Close above) while the
	// queued writes are still pending. (Only with permessage-deflate, which
	// is off here, would gws read the payload again later.)
	b := gws.NewBroadcaster(message.Opcode, message.Bytes())
	h.conns.Range(func(conn *gws.Conn, _ struct{}) bool {
		_ = b.Broadcast(conn)
		return true
	})
	_ = b.Close()
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	mode := flag.String("mode", "broadcast", "broadcast|echo")
	flag.Parse()
	if *mode != "broadcast" && *mode != "echo" {
		fmt.Fprintf(os.Stderr, "invalid --mode %q: want broadcast or echo\n", *mode)
		os.Exit(2)
	}

	h := &handler{echo: *mode == "echo", conns: gws.NewConcurrentMap[*gws.Conn, struct{}]()}
	// Options: library defaults, which gws sizes for many connections:
	// 4 KiB read buffer per connection (pooled, returned when the
	// connection ends; WriteBufferSize is deprecated and frames are written
	// directly), no permessage-deflate, no UTF-8 validation, 16 MiB max
	// message. ParallelEnabled is explicitly false: OnMessage runs on the
	// connection's ReadLoop goroutine, in order.
	upgrader := gws.NewUpgrader(h, &gws.ServerOption{
		ParallelEnabled: false,
	})

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		socket, err := upgrader.Upgrade(w, r)
		if err != nil {
			return // Upgrade has already replied with an HTTP error.
		}
		// A fresh goroutine lets the net/http handler (and its request)
		// be released, as gws recommends when sharing an http.Server.
		go socket.ReadLoop()
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())

	srv := &http.Server{Handler: mux}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Hijacked WebSocket connections are not tracked by Shutdown; they
		// end when the process exits.
		_ = srv.Shutdown(context.Background())
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
