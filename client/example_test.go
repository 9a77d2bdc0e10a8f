package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/fanout-dev/fanout/client"
	"github.com/fanout-dev/fanout/codec"
)

// These examples need a running fanout server, so they are compiled but not
// run.

type message struct {
	Text string `json:"text"`
}

func ExampleDial() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{
		Encoding: codec.Msgpack, // default: codec.JSON
		Token:    "<jwt>",       // sent as Authorization: Bearer <jwt>
		OnStateChange: func(ev client.StateChange) {
			log.Printf("fanout: %v -> %v (%v)", ev.From, ev.To, ev.Err)
		},
	})
	if errors.Is(err, client.ErrUnauthorized) {
		log.Fatal("the server refused the token")
	}
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	fmt.Println("connected as", cl.ID(), cl.User())
}

func ExampleClient_Subscribe() {
	ctx := context.Background()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	sub, err := cl.Subscribe(ctx, "chat:lobby", client.SubscribeOptions{Presence: true})
	if err != nil {
		log.Fatal(err)
	}
	for {
		select {
		case p, ok := <-sub.C():
			if !ok {
				log.Fatal("subscription ended: ", sub.Err())
			}
			var m message
			if err := p.Decode(&m); err != nil {
				log.Print(err)
				continue
			}
			fmt.Printf("#%d %s: %s\n", p.Offset, p.Info.User, m.Text)
		case ev := <-sub.Presence():
			fmt.Println(ev.Info.User, ev.Kind)
		case g := <-sub.Gaps():
			// Publications were lost while disconnected: reload state.
			log.Print(g)
		}
	}
}

func ExampleClient_Publish() {
	ctx := context.Background()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	offset, err := cl.Publish(ctx, "chat:lobby", message{Text: "hello"})
	switch {
	case errors.Is(err, client.ErrForbidden):
		log.Fatal("not allowed to publish there")
	case errors.Is(err, client.ErrConnectionLost):
		log.Fatal("connection lost: the publication may or may not have happened")
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println("published at offset", offset)

	// Data already in the connection's encoding (JSON here).
	if _, err := cl.PublishRaw(ctx, "chat:lobby", []byte(`{"text":"raw"}`)); err != nil {
		log.Fatal(err)
	}
}

func ExampleClient_Presence() {
	ctx := context.Background()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	clients, err := cl.Presence(ctx, "chat:lobby")
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range clients {
		fmt.Println(c.Client, c.User)
	}
}

func ExampleClient_History() {
	ctx := context.Background()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	// The last 20 messages, then everything after them without a gap.
	pos, pubs, err := cl.History(ctx, "chat:lobby", 20)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range pubs {
		fmt.Printf("#%d %s\n", p.Offset, p.Data)
	}
	sub, err := cl.Subscribe(ctx, "chat:lobby", client.SubscribeOptions{Recover: &pos})
	if err != nil {
		log.Fatal(err)
	}
	for p := range sub.C() {
		fmt.Printf("#%d %s\n", p.Offset, p.Data)
	}
}

func ExampleSubscription_Unsubscribe() {
	ctx := context.Background()
	cl, err := client.Dial(ctx, "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()

	sub, err := cl.Subscribe(ctx, "news", client.SubscribeOptions{
		OnPublication: func(p client.Publication) { fmt.Printf("%s\n", p.Data) },
		OnGap:         func(g *client.GapError) { log.Print(g) },
	})
	if err != nil {
		log.Fatal(err)
	}
	time.Sleep(time.Minute)
	if err := sub.Unsubscribe(ctx); err != nil {
		log.Print(err)
	}
}

func ExampleClient_Close() {
	cl, err := client.Dial(context.Background(), "ws://localhost:8080/ws", client.Options{})
	if err != nil {
		log.Fatal(err)
	}
	cl.Close() // sends close 1000 and stops reconnecting
	err = cl.Ping(context.Background())
	fmt.Println(errors.Is(err, client.ErrClosed))
}
