package brokerproto

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
)

var payload = []byte(`{"text":"hello world, this is a chat message of typical size","n":12345}`)

func startNATS(t testing.TB, dir string) *server.Server {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats not ready")
	}
	return s
}

func natsSetup(t testing.TB, storage jetstream.StorageType) (*server.Server, []*nats.Conn, []jetstream.JetStream, jetstream.Stream) {
	s := startNATS(t, t.TempDir())
	var ncs []*nats.Conn
	var jss []jetstream.JetStream
	for range 3 {
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		js, _ := jetstream.New(nc)
		ncs = append(ncs, nc)
		jss = append(jss, js)
	}
	st, err := jss[0].CreateStream(context.Background(), jetstream.StreamConfig{Name: "FANOUT", Subjects: []string{"fo.>"}, MaxMsgsPerSubject: 100, Storage: storage, AllowDirect: true, MaxAge: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return s, ncs, jss, st
}

// plain JetStream publish: the floor (1 RT, no per-channel offset).
func BenchmarkNATSPlainPublish(b *testing.B) {
	for _, stor := range []jetstream.StorageType{jetstream.MemoryStorage, jetstream.FileStorage} {
		b.Run(stor.String(), func(b *testing.B) {
			s, ncs, jss, _ := natsSetup(b, stor)
			defer s.Shutdown()
			defer ncs[0].Close()
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := jss[0].Publish(ctx, "fo.ch"+strconv.Itoa(i%100), payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// natsPublisher assigns gap-free per-channel offsets with optimistic
// concurrency: expected-last-subject-sequence, offset in a header; on a
// mismatch it reads the subject's last message and retries.
type natsPublisher struct {
	js   jetstream.JetStream
	st   jetstream.Stream
	last map[string][2]uint64 // subject -> stream seq, offset
	rts  atomic.Int64
	conf atomic.Int64
}

func (p *natsPublisher) publish(ctx context.Context, subj string) (uint64, error) {
	for {
		l, ok := p.last[subj]
		if !ok {
			p.rts.Add(1)
			m, err := p.st.GetLastMsgForSubject(ctx, subj)
			switch {
			case errors.Is(err, jetstream.ErrMsgNotFound):
				l = [2]uint64{0, 0}
			case err != nil:
				return 0, err
			default:
				off, _ := strconv.ParseUint(m.Header.Get("Fanout-Offset"), 10, 64)
				l = [2]uint64{m.Sequence, off}
			}
		}
		msg := nats.NewMsg(subj)
		msg.Data = payload
		msg.Header.Set("Fanout-Offset", strconv.FormatUint(l[1]+1, 10))
		p.rts.Add(1)
		ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(l[0]))
		if err != nil {
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
				p.conf.Add(1)
				delete(p.last, subj)
				continue
			}
			return 0, err
		}
		p.last[subj] = [2]uint64{ack.Sequence, l[1] + 1}
		return l[1] + 1, nil
	}
}

// One node publishing to a channel: steady state 1 RT.
func BenchmarkNATSCASOneNode(b *testing.B) {
	for _, stor := range []jetstream.StorageType{jetstream.MemoryStorage, jetstream.FileStorage} {
		b.Run(stor.String(), func(b *testing.B) {
			s, ncs, jss, st := natsSetup(b, stor)
			defer s.Shutdown()
			defer ncs[0].Close()
			p := &natsPublisher{js: jss[0], st: st, last: map[string][2]uint64{}}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := p.publish(ctx, "fo.ch"+strconv.Itoa(i%100)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(p.rts.Load())/float64(b.N), "RT/op")
		})
	}
}

// Three nodes publishing to the same channel concurrently: conflicts.
func BenchmarkNATSCASThreeNodesOneChannel(b *testing.B) {
	for _, stor := range []jetstream.StorageType{jetstream.MemoryStorage, jetstream.FileStorage} {
		b.Run(stor.String(), func(b *testing.B) {
			s, _, jss, st := natsSetup(b, stor)
			defer s.Shutdown()
			ps := make([]*natsPublisher, 3)
			for i := range ps {
				ps[i] = &natsPublisher{js: jss[i], st: st, last: map[string][2]uint64{}}
			}
			ctx := context.Background()
			var wg sync.WaitGroup
			per := b.N/3 + 1
			seen := sync.Map{}
			b.ResetTimer()
			for i := range ps {
				wg.Add(1)
				go func(p *natsPublisher) {
					defer wg.Done()
					for j := 0; j < per; j++ {
						off, err := p.publish(ctx, "fo.hot")
						if err != nil {
							b.Error(err)
							return
						}
						if _, dup := seen.LoadOrStore(off, true); dup {
							b.Error("dup offset", off)
						}
					}
				}(ps[i])
			}
			wg.Wait()
			var rts, conf int64
			for _, p := range ps {
				rts += p.rts.Load()
				conf += p.conf.Load()
			}
			b.ReportMetric(float64(rts)/float64(3*per), "RT/op")
			b.ReportMetric(float64(conf)/float64(3*per), "conflicts/op")
		})
	}
}

// ---- Redis

const lua = `
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('del', KEYS[2])
  redis.call('hset', KEYS[1], 'e', epoch)
end
local off = redis.call('hincrby', KEYS[1], 'o', 1)
redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[3], off .. '-0', 'd', ARGV[1])
redis.call('expire', KEYS[2], ARGV[4])
redis.call('expire', KEYS[1], ARGV[5])
redis.call('publish', ARGV[6], off .. ':' .. epoch .. ':' .. ARGV[1])
return {off, epoch}
`

func startRedis(t testing.TB, fsync string) *redis.Client {
	dir := t.TempDir()
	port := 26000 + os.Getpid()%1000
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", fsync)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port)})
	for i := 0; ; i++ {
		if c.Ping(context.Background()).Err() == nil {
			break
		}
		if i > 100 {
			t.Fatal("redis not up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c
}

func BenchmarkRedisLuaPublish(b *testing.B) {
	for _, fsync := range []string{"everysec", "always"} {
		b.Run(fsync, func(b *testing.B) {
			c := startRedis(b, fsync)
			s := redis.NewScript(lua)
			ctx := context.Background()
			if err := s.Load(ctx, c).Err(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ch := "ch" + strconv.Itoa(i%100)
				if err := s.EvalSha(ctx, c, []string{"fo:{" + ch + "}:m", "fo:{" + ch + "}:s"}, payload, "e1", 100, 300, 86400, "fo:p:"+ch).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRedisLuaThreeNodesOneChannel(b *testing.B) {
	c0 := startRedis(b, "everysec")
	opt := c0.Options()
	s := redis.NewScript(lua)
	ctx := context.Background()
	s.Load(ctx, c0)
	var wg sync.WaitGroup
	per := b.N/3 + 1
	b.ResetTimer()
	for range 3 {
		c := redis.NewClient(opt)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < per; j++ {
				if err := s.EvalSha(ctx, c, []string{"fo:{hot}:m", "fo:{hot}:s"}, payload, "e1", 100, 300, 86400, "fo:p:hot").Err(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

var _ = fmt.Sprint

// History of one channel since an offset: an ordered consumer filtered on
// the subject (create, fetch, delete).
func BenchmarkNATSHistory(b *testing.B) {
	s, ncs, jss, st := natsSetup(b, jetstream.FileStorage)
	defer s.Shutdown()
	defer ncs[0].Close()
	p := &natsPublisher{js: jss[0], st: st, last: map[string][2]uint64{}}
	ctx := context.Background()
	for range 100 {
		p.publish(ctx, "fo.h")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := jss[0].CreateConsumer(ctx, "FANOUT", jetstream.ConsumerConfig{FilterSubject: "fo.h", AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, InactiveThreshold: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		defer jss[0].DeleteConsumer(ctx, "FANOUT", c.CachedInfo().Name)
		batch, err := c.FetchNoWait(100)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for range batch.Messages() {
			n++
		}
		if n != 100 {
			b.Fatal("got", n)
		}
		jss[0].DeleteConsumer(ctx, "FANOUT", c.CachedInfo().Name)
	}
}

const luaHist = `
local m = redis.call('hmget', KEYS[1], 'e', 'o')
return {m[1], m[2], redis.call('xrange', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])}
`

func BenchmarkRedisHistory(b *testing.B) {
	c := startRedis(b, "everysec")
	s := redis.NewScript(lua)
	h := redis.NewScript(luaHist)
	ctx := context.Background()
	for range 100 {
		s.Eval(ctx, c, []string{"fo:{h}:m", "fo:{h}:s"}, payload, "e1", 100, 300, 86400, "fo:p:h")
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := h.Run(ctx, c, []string{"fo:{h}:m", "fo:{h}:s"}, "1-0", 100).Slice()
		if err != nil {
			b.Fatal(err)
		}
		if len(r[2].([]any)) != 100 {
			b.Fatal("got", len(r[2].([]any)))
		}
	}
}
