package hub

import (
	"slices"

	"github.com/fanout-dev/fanout/engine/wsframe"
)

// SetFrameObserver has o receive, for every publication frame the hub
// builds from then on (one per publication and distinct frame: encoding,
// compressed or not), the seconds from the frame's encoding to its last
// release, which follows its write to the last subscriber that received it
// (see wsframe.Frame.Track).
// The engine gives it the fanout_delivery_seconds histogram. Nil stops the
// observations. Safe to call at any time: the broadcaster reads it with one
// atomic load per publication.
func (h *Hub) SetFrameObserver(o wsframe.Observer) {
	if o == nil {
		h.frameAge.Store(nil)
		return
	}
	h.frameAge.Store(&o)
}

// track has o receive the age of each of d's frames (a frame shared by two
// forms once). Called before d is queued: the frames are not shared yet.
func (d *delivery) track(o wsframe.Observer) {
	for i, f := range d.frames {
		if f == nil || slices.Contains(d.frames[:i], f) {
			continue
		}
		f.Track(o)
	}
}
