// Command gorilla is a benchmark peer built on github.com/gorilla/websocket
// using the classic hub design from gorilla's examples/chat: one hub
// goroutine owns the set of clients, and every connection has a readPump
// and a writePump goroutine joined by a buffered send channel.
//
// Deviations from examples/chat, all required by the raw benchmark protocol
// (see ../README.md):
//   - Messages carry their opcode and are relayed verbatim. The example
//     trims/rewrites payloads and always sends text.
//   - writePump drains everything already queued in one wake-up (one write
//     deadline for the batch, like the example) but writes each queued
//     message as its own WebSocket message. The example joins queued messages
//     with '\n' into one NextWriter, which would change message boundaries
//     (and corrupt binary payloads) and so is not protocol-compatible.
//   - No read limit is set (gorilla's default: unlimited); the example's
//     512-byte maxMessageSize would reject ordinary benchmark payloads.
//   - Echo mode bypasses the hub: readPump queues onto its own send channel
//     (blocking, so a slow reader applies backpressure instead of being
//     dropped).
//
// Kept from the example: send channel of 256, hub drops (closes) a client
// whose send channel is full, 10s write deadline, ping every 54s and a 60s
// pong deadline (standard clients answer pings automatically).
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
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// Time allowed to write a message (or a batch of messages) to the peer.
	writeWait = 10 * time.Second

	// Time allowed to read the next pong message from the peer.
	pongWait = 60 * time.Second

	// Send pings to peer with this period. Must be less than pongWait.
	pingPeriod = (pongWait * 9) / 10

	// Capacity of each client's outbound queue, as in examples/chat.
	sendQueueLen = 256
)

// Buffer sizes: 1 KiB read/write buffers as in examples/chat, plus a shared
// WriteBufferPool, which the gorilla docs recommend when there are many
// connections ("A pool is most useful when the application has a modest
// volume of writes across a large number of connections"): idle
// connections then hold no write buffer at all. Any Origin is accepted, as
// the peers are driven by non-browser load generators.
var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	WriteBufferPool: &sync.Pool{},
	CheckOrigin:     func(*http.Request) bool { return true },
}

// message is one WebSocket data message: its opcode and payload.
type message struct {
	typ  int
	data []byte
}

// Hub maintains the set of active clients and broadcasts messages to them.
type Hub struct {
	clients    map[*Client]bool
	broadcast  chan message
	register   chan *Client
	unregister chan *Client
}

func newHub() *Hub {
	return &Hub{
		clients:    make(map[*Client]bool),
		broadcast:  make(chan message),
		register:   make(chan *Client),
		unregister: make(chan *Client),
	}
}

func (h *Hub) run() {
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
		case client := <-h.unregister:
			if _, ok := h.clients[client]; ok {
				delete(h.clients, client)
				close(client.send)
			}
		case msg := <-h.broadcast:
			for client := range h.clients {
				select {
				case client.send <- msg:
				default:
					// Slow consumer: drop it, as examples/chat does.
					close(client.send)
					delete(h.clients, client)
				}
			}
		}
	}
}

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub  *Hub
	conn *websocket.Conn
	echo bool
	send chan message
	done chan struct{} // closed when writePump exits
}

// readPump pumps messages from the websocket connection to the hub (or, in
// echo mode, straight to this client's own send queue).
func (c *Client) readPump() {
	defer func() {
		c.hub.unregister <- c
		_ = c.conn.Close()
	}()
	_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(pongWait))
	})
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		msg := message{typ: typ, data: data}
		if c.echo {
			// Only the hub closes c.send, and in echo mode it does so only
			// after this goroutine has unregistered, so this cannot panic.
			select {
			case c.send <- msg:
			case <-c.done:
				return // writePump is gone; nobody drains c.send.
			}
		} else {
			c.hub.broadcast <- msg
		}
	}
}

// writePump pumps messages from the send queue to the websocket connection.
// It is the only writer on the connection.
func (c *Client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		_ = c.conn.Close()
		close(c.done)
	}()
	for {
		select {
		case msg, ok := <-c.send:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// The hub closed the channel.
				_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.write(msg); err != nil {
				return
			}
			// Flush whatever else is already queued in the same wake-up.
			n := len(c.send)
			for i := 0; i < n; i++ {
				msg, ok := <-c.send
				if !ok {
					_ = c.conn.WriteMessage(websocket.CloseMessage, []byte{})
					return
				}
				if err := c.write(msg); err != nil {
					return
				}
			}
		case <-ticker.C:
			_ = c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func (c *Client) write(msg message) error {
	w, err := c.conn.NextWriter(msg.typ)
	if err != nil {
		return err
	}
	if _, err := w.Write(msg.data); err != nil {
		return err
	}
	return w.Close()
}

// serveWs handles websocket requests from the peer.
func serveWs(hub *Hub, echo bool, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has already replied with an HTTP error.
	}
	client := &Client{hub: hub, conn: conn, echo: echo, send: make(chan message, sendQueueLen), done: make(chan struct{})}
	client.hub.register <- client

	go client.writePump()
	go client.readPump()
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "listen address")
	mode := flag.String("mode", "broadcast", "broadcast|echo")
	flag.Parse()
	if *mode != "broadcast" && *mode != "echo" {
		fmt.Fprintf(os.Stderr, "invalid --mode %q: want broadcast or echo\n", *mode)
		os.Exit(2)
	}

	hub := newHub()
	go hub.run()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		serveWs(hub, *mode == "echo", w, r)
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
