package engine

import (
	"bytes"
	"os"
	"path"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Admission under memory pressure (Config.MaxMemory). The server's own
// memory is read from runtime/metrics: what the Go runtime has mapped less
// what it returned to the OS, i.e. heap, stacks and runtime metadata, but
// not the kernel's socket buffers. It is sampled at most every
// memSampleEvery, by the upgrade that finds the sample stale (and by a
// /metrics scrape), never per upgrade: no goroutine, no timer.
//
// Over memTrimShare of the limit, history (the one cache the server keeps)
// is trimmed first: the broker's history budget is halved, at most every
// memTrimEvery, evicting the oldest publications at once; back under
// memRestoreShare the configured budget returns. Over the limit itself new
// upgrades get 503 with Retry-After; open connections are served as before.

const (
	memSampleEvery = 100 * time.Millisecond
	memTrimEvery   = time.Second
	// Shares of MaxMemory, in percent.
	memTrimShare    = 90
	memRestoreShare = 80
	// memDefaultShare of the cgroup's or the machine's memory is the
	// default MaxMemory.
	memDefaultShare = 80
)

// memGuard samples the process's memory against a limit.
type memGuard struct {
	limit int64 // bytes; 0: no limit
	// source says where the default limit came from, for the log.
	source string

	next atomic.Int64 // monotonic nanos (memClock) of the next sample
	used atomic.Int64 // bytes at the last sample
	over atomic.Bool  // the last sample was over limit

	mu      sync.Mutex // held by the one goroutine sampling
	samples [2]metrics.Sample
	trimAt  int64 // memClock of the next history trim allowed
	trimmed bool  // history's budget is lowered
}

// memEpoch anchors memClock, a cheap monotonic clock.
var memEpoch = time.Now()

func memClock() int64 { return int64(time.Since(memEpoch)) }

func newMemGuard(limit int64, source string) *memGuard {
	g := &memGuard{limit: limit, source: source}
	g.samples[0].Name = "/memory/classes/total:bytes"
	g.samples[1].Name = "/memory/classes/heap/released:bytes"
	return g
}

// memUsed reads the memory the Go runtime holds from the OS now.
func memUsed(samples *[2]metrics.Sample) int64 {
	metrics.Read(samples[:])
	var v [2]uint64
	for i := range samples {
		if samples[i].Value.Kind() == metrics.KindUint64 {
			v[i] = samples[i].Value.Uint64()
		}
	}
	return int64(v[0] - min(v[1], v[0]))
}

// overLimit reports whether the server is over its memory limit, sampling
// when the last sample is stale. trim and restore shrink and give back
// history's budget (the hub's); they run on the sampling goroutine.
func (g *memGuard) overLimit(trim func(), restore func()) bool {
	if g.limit <= 0 {
		return false
	}
	now := memClock()
	if now >= g.next.Load() && g.mu.TryLock() {
		g.sampleLocked(now, trim, restore)
		g.mu.Unlock()
	}
	return g.over.Load()
}

// current is the memory in use: the last sample, fresh enough, or a new
// one when there is no limit (a /metrics scrape).
func (g *memGuard) current(trim func(), restore func()) int64 {
	if g.limit <= 0 {
		var samples [2]metrics.Sample
		samples[0].Name, samples[1].Name = g.samples[0].Name, g.samples[1].Name
		return memUsed(&samples)
	}
	g.overLimit(trim, restore)
	return g.used.Load()
}

func (g *memGuard) sampleLocked(now int64, trim func(), restore func()) {
	if now < g.next.Load() { // another goroutine sampled meanwhile
		return
	}
	used := memUsed(&g.samples)
	g.used.Store(used)
	g.over.Store(used > g.limit)
	g.next.Store(now + int64(memSampleEvery))
	switch {
	case used > g.limit/100*memTrimShare && now >= g.trimAt && trim != nil:
		g.trimAt = now + int64(memTrimEvery)
		g.trimmed = true
		trim()
	case used < g.limit/100*memRestoreShare && g.trimmed && restore != nil:
		g.trimmed = false
		restore()
	}
}

// defaultMaxMemory is memDefaultShare of the memory the process may use:
// its cgroup's limit (v2 memory.max, else v1 memory.limit_in_bytes) or the
// machine's, whichever is smaller. source names it.
func defaultMaxMemory() (limit int64, source string) {
	var physical int64
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		physical = int64(si.Totalram) * int64(si.Unit)
	}
	limit, source = physical, "physical memory"
	if cg := cgroupMemoryLimit(); cg > 0 && (physical == 0 || cg < physical) {
		limit, source = cg, "cgroup memory limit"
	}
	return limit / 100 * memDefaultShare, source
}

// cgroupMemoryLimit returns the memory limit of the process's cgroup (the
// smallest along its path: a parent's limit binds its children), 0 when
// there is none or it cannot be read.
func cgroupMemoryLimit() int64 {
	v2, v1 := "", "" // the process's cgroup paths; "" when not in one
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			// hierarchy-ID:controller-list:cgroup-path
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 {
				continue
			}
			switch {
			case parts[0] == "0" && parts[1] == "":
				v2 = parts[2]
			case strings.Contains(","+parts[1]+",", ",memory,"):
				v1 = parts[2]
			}
		}
	}
	var limit int64
	walk := func(root, p, file string) {
		for {
			if n := readCgroupLimit(root + strings.TrimSuffix(p, "/") + "/" + file); n > 0 && (limit == 0 || n < limit) {
				limit = n
			}
			if p == "/" || p == "" || p == "." {
				return
			}
			p = path.Dir(p)
		}
	}
	if v2 != "" {
		walk("/sys/fs/cgroup", v2, "memory.max")
	}
	if v1 != "" {
		walk("/sys/fs/cgroup/memory", v1, "memory.limit_in_bytes")
	}
	return limit
}

// readCgroupLimit reads a cgroup memory limit file: 0 for "max", a v1
// "no limit" (a huge number) or a file that cannot be read.
func readCgroupLimit(file string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<62 {
		return 0
	}
	return n
}
