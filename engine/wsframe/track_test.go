package wsframe

import (
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// ages records what a tracked frame reports.
type ages struct {
	mu  sync.Mutex
	got []float64
}

func (a *ages) Observe(s float64) {
	a.mu.Lock()
	a.got = append(a.got, s)
	a.mu.Unlock()
}

func (a *ages) values() []float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]float64(nil), a.got...)
}

// TestTrack: a tracked frame reports its age once, at its last release,
// however many holders it had; the age covers the time it was held; an
// untracked frame (and a tracked frame's recycled successor) reports
// nothing.
func TestTrack(t *testing.T) {
	for _, holders := range []int{1, 2, 64} {
		var a ages
		f := New(ws.OpText, []byte("x"))
		start := time.Now() // before Track: the age can never exceed held
		f.Track(&a)
		f.Retain(holders - 1)
		var wg sync.WaitGroup
		for range holders - 1 {
			wg.Add(1)
			go func() { defer wg.Done(); f.Release() }()
		}
		wg.Wait()
		if got := a.values(); len(got) != 0 {
			t.Fatalf("%d holders: observed %v before the last release", holders, got)
		}
		time.Sleep(2 * time.Millisecond) // the age must include this
		f.Release()
		held := time.Since(start).Seconds()
		got := a.values()
		if len(got) != 1 {
			t.Fatalf("%d holders: %d observations, want 1", holders, len(got))
		}
		if got[0] < 0.002 || got[0] > held {
			t.Errorf("%d holders: age %vs, want between 0.002s and %vs", holders, got[0], held)
		}
	}
	// Recycled frames (the pool hands them out again) start untracked.
	var a ages
	for range 100 {
		f := New(ws.OpText, []byte("y"))
		f.Track(&a)
		f.Release()
		g := New(ws.OpBinary, []byte("z"))
		g.Release()
	}
	if n := len(a.values()); n != 100 {
		t.Errorf("%d observations for 100 tracked frames and 100 untracked", n)
	}
}

// BenchmarkRelease is the cost of the last release with and without
// tracking (two clock reads and one observation).
func BenchmarkRelease(b *testing.B) {
	for _, tracked := range []bool{false, true} {
		name := "tracked=false"
		if tracked {
			name = "tracked=true"
		}
		b.Run(name, func(b *testing.B) {
			var o discardObserver
			b.ReportAllocs()
			for b.Loop() {
				f := Get()
				f.B = append(f.B, "payload"...)
				f.Finish(ws.OpText)
				if tracked {
					f.Track(o)
				}
				f.Release()
			}
		})
	}
}

type discardObserver struct{}

func (discardObserver) Observe(float64) {}
