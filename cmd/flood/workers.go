package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// Multi-process runs. With --procs K > 1 the coordinator re-executes its
// own binary K times with the hidden flag --worker-index i; worker i
// holds its share of the connections (cfg.split), worker 0 also the
// publishers. They talk over the worker's stdin and stdout, one JSON
// object per line:
//
//	coordinator -> worker: {"type":"config",...} (first), then "start"
//	                       (begin measuring), "publish" (publishers go),
//	                       "stop" (end of the load phase), "finish"
//	worker -> coordinator: "progress" (5/s), "ready" (all its connections
//	                       settled), "started", "stopped" (its publishers
//	                       have stopped), "result" (last), or "error"
//
// The coordinator starts the load phase only when every worker is ready,
// and publishing only when every worker measures, so that all subscribers
// are connected and counting before the first publication. A
// worker whose stdin closes stops at once, and workers are started with
// PDEATHSIG and in their own process group (so that a terminal's Ctrl-C
// reaches only the coordinator, which stops them in order); any still
// running at the end are killed by PID. With K = 1 the same agent runs in
// the coordinator's process, over in-memory pipes.

// workerEnv is set in a worker's environment (besides --worker-index), so
// that a test binary re-executed as a worker knows to act as one.
const workerEnv = "FLOOD_WORKER_INDEX"

// workerLink is the coordinator's end of one worker.
type workerLink struct {
	index int
	mu    sync.Mutex
	w     io.WriteCloser
	enc   *json.Encoder
	cmd   *exec.Cmd     // nil when in-process
	done  chan struct{} // closed when the worker's output ended (and the process was waited for)
}

func (l *workerLink) send(m ctrlMsg) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.enc.Encode(m)
}

// kill ends a worker process (by PID) that is still running.
func (l *workerLink) kill() {
	_ = l.w.Close()
	if l.cmd == nil || l.cmd.Process == nil {
		return
	}
	select {
	case <-l.done:
	default:
		_ = l.cmd.Process.Kill()
	}
}

// startWorkers starts k workers and sends them their config. Their
// messages arrive on events; a worker whose output ends sends a final
// message of type "exit".
func startWorkers(cfg *Config, k int, t0 time.Time, events chan<- workerMsg, quit <-chan struct{}, stderr io.Writer) ([]*workerLink, error) {
	links := make([]*workerLink, 0, k)
	for i := 0; i < k; i++ {
		l := &workerLink{index: i, done: make(chan struct{})}
		var out io.ReadCloser
		if k == 1 {
			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			l.w, out = inW, outR
			go func() {
				err := runWorker(inR, outW)
				if err != nil {
					fmt.Fprintf(stderr, "flood: worker: %v\n", err)
				}
				_ = outW.Close()
				_ = inR.Close()
			}()
		} else {
			exe, err := os.Executable()
			if err != nil {
				return links, err
			}
			cmd := exec.Command(exe, "--worker-index", strconv.Itoa(i))
			cmd.Env = append(os.Environ(), workerEnv+"="+strconv.Itoa(i))
			cmd.Stderr = stderr
			setWorkerAttrs(cmd)
			if l.w, err = cmd.StdinPipe(); err != nil {
				return links, err
			}
			if out, err = cmd.StdoutPipe(); err != nil {
				return links, err
			}
			if err := cmd.Start(); err != nil {
				return links, fmt.Errorf("start worker %d: %w", i, err)
			}
			l.cmd = cmd
		}
		l.enc = json.NewEncoder(l.w)
		links = append(links, l)
		go func() {
			defer close(l.done)
			dec := json.NewDecoder(bufio.NewReader(out))
			for {
				var m workerMsg
				if err := dec.Decode(&m); err != nil {
					break
				}
				m.Index = l.index
				select {
				case events <- m:
				case <-quit:
				}
			}
			if l.cmd != nil {
				_ = l.cmd.Wait()
			}
			select {
			case events <- workerMsg{Type: "exit", Index: l.index}:
			case <-quit:
			}
		}()
		l.send(ctrlMsg{Type: "config", Config: cfg, Index: i, Count: k, T0: t0.UnixNano()})
	}
	return links, nil
}

// workerState is what the coordinator knows of one worker.
type workerState struct {
	counts   Counts
	p50, p99 int64
	ready    bool
	started  bool // measuring
	stopped  bool // acknowledged "stop": its counts are final for sending
	exited   bool
	err      string
	result   *WorkerResult
}

// fleet is the coordinator's view of all workers.
type fleet struct {
	links  []*workerLink
	state  []workerState
	events chan workerMsg
	quit   chan struct{} // closed when the coordinator stops listening
}

func (f *fleet) apply(m workerMsg) {
	if m.Index < 0 || m.Index >= len(f.state) {
		return
	}
	s := &f.state[m.Index]
	if m.Counts != nil {
		s.counts = *m.Counts
		s.p50, s.p99 = m.P50, m.P99
	}
	switch m.Type {
	case "ready":
		s.ready = true
	case "started":
		s.started = true
	case "stopped":
		s.stopped = true
	case "result":
		s.result = m.Result
		if m.Result != nil {
			s.counts = m.Result.Counts
		}
	case "error":
		s.err = m.Err
	case "exit":
		s.exited = true
	}
}

func (f *fleet) broadcast(m ctrlMsg) {
	for _, l := range f.links {
		l.send(m)
	}
}

func (f *fleet) all(pred func(*workerState) bool) bool {
	for i := range f.state {
		if !pred(&f.state[i]) {
			return false
		}
	}
	return true
}

func (f *fleet) total() Counts {
	var t Counts
	for i := range f.state {
		t.add(f.state[i].counts)
	}
	return t
}

// lastP99 is the largest last-second p99 over the workers (µs).
func (f *fleet) lastP99() (p50, p99 int64) {
	for i := range f.state {
		p50 = max(p50, f.state[i].p50)
		p99 = max(p99, f.state[i].p99)
	}
	return p50, p99
}

// wait processes worker messages until cond holds, the timeout passes or
// ctx ends. tick runs every half second. It reports whether cond held.
func (f *fleet) wait(ctx context.Context, timeout time.Duration, cond func() bool, tick func()) bool {
	if cond != nil && cond() {
		return true
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	tk := time.NewTicker(500 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case m := <-f.events:
			f.apply(m)
			if cond != nil && cond() {
				return true
			}
		case <-tk.C:
			if tick != nil {
				tick()
			}
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// drainEvents applies every message already queued.
func (f *fleet) drainEvents() {
	for {
		select {
		case m := <-f.events:
			f.apply(m)
		default:
			return
		}
	}
}
