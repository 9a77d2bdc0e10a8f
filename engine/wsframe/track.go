package wsframe

import "time"

// Observer receives one value per tracked frame: the frame's age in
// seconds. prometheus.Histogram and prometheus.Summary implement it; the
// interface is declared here so that this package needs no metrics library.
type Observer interface {
	Observe(seconds float64)
}

// clockBase anchors the monotonic clock readings kept in Frame.born: an
// int64 instead of a time.Time keeps the frame 16 bytes smaller, and
// time.Since on a reading that carries the monotonic clock is immune to
// wall-clock steps.
var clockBase = time.Now()

// Track stamps f with the current time and has o receive, once, the time
// from now to f's last Release. The hub tracks each publication frame it
// builds (engine: fanout_delivery_seconds), so the latency of a whole
// fan-out costs two clock reads and one observation per frame, nothing per
// subscriber. Call it before f is shared: it is not synchronized.
//
// The last Release is normally the one that follows the write of f to its
// last receiver. When the last holder drops f instead (its connection
// closed with f still queued, or a subscriber left before f was handed to
// it) the age is observed at that drop: a frame's age is how long the
// process held it, which a receiver that never got it can only lengthen.
func (f *Frame) Track(o Observer) {
	f.age = o
	f.born = int64(time.Since(clockBase))
}

// observeAge reports f's age to its observer; called by the last Release.
func (f *Frame) observeAge() {
	age := time.Duration(int64(time.Since(clockBase)) - f.born)
	f.age.Observe(age.Seconds())
	f.age, f.born = nil, 0
}
