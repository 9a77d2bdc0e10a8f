package hub

import (
	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/wsframe"
)

// form is how the frames for a subscriber are made: its encoding, and
// whether it negotiated permessage-deflate. A publication is encoded once
// per encoding and, for the compressed forms, compressed once more: every
// subscriber of one form shares the same frame.
type form uint8

const (
	formJSON form = iota
	formMsgpack
	formJSONDeflate
	formMsgpackDeflate
	numForms
)

// DeflateSubscriber is a Subscriber that may take compressed frames. The
// hub hands one whose Deflate reports true the compressed frame of a
// publication (RSV1 set; compressed without context, so any such
// connection can take it) when compressing was worth it, the plain frame
// otherwise.
type DeflateSubscriber interface {
	Subscriber
	// Deflate is constant for the subscriber.
	Deflate() bool
}

func formOf(s Subscriber, enc codec.Encoding) form {
	f := form(enc - 1)
	if d, ok := s.(DeflateSubscriber); ok && d.Deflate() {
		f += formJSONDeflate
	}
	return f
}

func (f form) deflate() bool { return f >= formJSONDeflate }

// encodeForms fills d.frames for the forms counts says are in use: each
// encoding is encoded once (appendTo), its compressed form compressed from
// that once, and every frame stored gets refs references. A compressed
// form whose message is not worth compressing shares the plain frame.
func (h *Hub) encodeForms(d *delivery, counts *[numForms]int, refs int, appendTo func(b []byte, enc codec.Encoding) []byte) {
	for plain := formJSON; plain <= formMsgpack; plain++ {
		packed := plain + formJSONDeflate
		if counts[plain] == 0 && counts[packed] == 0 {
			continue
		}
		enc := codec.Encoding(plain + 1)
		f := wsframe.Get()
		f.B = appendTo(f.B, enc)
		f.Finish(opcode(enc))
		if counts[packed] > 0 {
			z := h.compressor.Frame(f)
			if z != nil {
				h.compressed.Add(1)
			} else {
				z = f
				f.Retain(1)
			}
			z.Retain(refs - 1)
			d.frames[packed] = z
		}
		if counts[plain] == 0 {
			f.Release()
			continue
		}
		f.Retain(refs - 1)
		d.frames[plain] = f
	}
}

// finishReply finishes a reply frame for s, compressed when s takes
// compressed frames and the reply is worth it.
func (h *Hub) finishReply(f *wsframe.Frame, enc codec.Encoding, fm form) *wsframe.Frame {
	f.Finish(opcode(enc))
	if fm.deflate() {
		if z := h.compressor.Frame(f); z != nil {
			h.compressed.Add(1)
			f.Release()
			return z
		}
	}
	return f
}
