package hub_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/fanout-dev/fanout/engine/wsframe"
)

// printer is a Subscriber that prints the payload of every frame it gets.
type printer struct {
	mu   sync.Mutex
	seen []string
	done chan struct{}
	want int
}

func (p *printer) Info() codec.ClientInfo   { return codec.ClientInfo{Client: "c1"} }
func (p *printer) Encoding() codec.Encoding { return codec.JSON }
func (p *printer) Send(f *wsframe.Frame)    { p.SendBatch([]*wsframe.Frame{f}) }
func (p *printer) SendBatch(fs []*wsframe.Frame) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range fs {
		p.seen = append(p.seen, string(f.Payload()))
		f.Release()
	}
	if len(p.seen) == p.want {
		close(p.done)
	}
}

func Example() {
	h, err := hub.New(hub.Config{})
	if err != nil {
		panic(err)
	}
	defer h.Close()

	sub := &printer{done: make(chan struct{}), want: 2}
	if err := h.Subscribe(sub, hub.SubscribeRequest{ID: 1, HasID: true, Channel: "news"}); err != nil {
		panic(err)
	}
	pos, err := h.Publish(context.Background(), "news", []byte(`"hello"`), codec.JSON, codec.ClientInfo{Client: "c2"})
	if err != nil {
		panic(err)
	}
	<-sub.done
	fmt.Println("published at offset", pos.Offset)
	for _, s := range sub.seen {
		fmt.Println(len(s) > 0 && s[0] == '{')
	}
	// Output:
	// published at offset 1
	// true
	// true
}
