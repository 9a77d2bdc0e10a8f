package brokerproto

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A core NATS subscriber of a stream subject receives a message that
// JetStream rejects (wrong expected last subject sequence): delivery cannot
// be by plain subscription if it must follow storage.
func TestCoreSubSeesRejected(t *testing.T) {
	s, ncs, jss, _ := natsSetup(t, jetstream.MemoryStorage)
	defer s.Shutdown()
	got := make(chan *nats.Msg, 10)
	ncs[1].ChanSubscribe("fo.x", got)
	ncs[1].Flush()
	ctx := context.Background()
	if _, err := jss[0].Publish(ctx, "fo.x", []byte("one")); err != nil {
		t.Fatal(err)
	}
	_, err := jss[0].Publish(ctx, "fo.x", []byte("rejected"), jetstream.WithExpectLastSequencePerSubject(99))
	t.Log("publish with wrong expected seq:", err)
	time.Sleep(200 * time.Millisecond)
	close(got)
	for m := range got {
		t.Logf("core subscriber got %q", m.Data)
	}
}
