package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
)

// cpuProfile is the load-phase CPU profile of one process (hidden flag
// --cpuprofile FILE: each process holding connections writes
// FILE.<worker index>). It covers the load phase only, so that the
// connection ramp does not hide the per-message costs.
type cpuProfile struct {
	mu sync.Mutex
	f  *os.File
}

func (p *cpuProfile) start(base string, index int) {
	if base == "" {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f != nil {
		return
	}
	f, err := os.Create(base + "." + strconv.Itoa(index))
	if err != nil {
		fmt.Fprintln(os.Stderr, "flood: --cpuprofile:", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "flood: --cpuprofile:", err)
		_ = f.Close()
		return
	}
	p.f = f
}

func (p *cpuProfile) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return
	}
	pprof.StopCPUProfile()
	if err := p.f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "flood: --cpuprofile:", err)
	}
	p.f = nil
}
