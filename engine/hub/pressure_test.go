package hub

import (
	"fmt"
	"testing"

	"github.com/fanout-dev/fanout/codec"
)

// TestTrimHistory: under memory pressure the hub shrinks history to a
// fraction of what it holds, least recently published channels' oldest
// publications first, keeps it there (new publications do not grow it
// back) and keeps each channel a run of consecutive offsets ending at its
// newest; RestoreHistory gives the configured budget back.
func TestTrimHistory(t *testing.T) {
	tests := []struct {
		name     string
		fraction float64
	}{
		{"half", 0.5},
		{"a tenth", 0.1},
		{"nothing", 0},
		{"out of range is clamped", -3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHub(t, Config{HistorySize: 1000})
			data := jsonString(1000)
			const channels, per = 10, 50
			for i := range channels {
				for range per {
					publishData(t, h, fmt.Sprint("ch", i), data, codec.JSON)
				}
			}
			before := h.Stats().HistoryBytes
			held, ok := h.TrimHistory(tt.fraction)
			if !ok {
				t.Fatal("the memory broker cannot trim")
			}
			limit := int64(float64(before) * max(tt.fraction, 0))
			if st := h.Stats(); held > limit || st.HistoryBytes != held || st.HistoryEvictedBytes == 0 {
				t.Fatalf("held %d of %d, limit %d, stats %+v", held, before, limit, st)
			}
			// Least recently published first: what each channel keeps is no
			// more than what any channel published later keeps, and ends at
			// its newest publication. A channel with nothing left (and no
			// subscriber) is forgotten, as after any eviction.
			kept := 0
			for i := range channels {
				pos, pubs, err := h.History(fmt.Sprint("ch", i), 0)
				if err != nil || len(pubs) > 0 && pos.Offset != per {
					t.Fatalf("ch%d: %+v %v", i, pos, err)
				}
				if len(pubs) < kept {
					t.Fatalf("ch%d keeps %d, an older channel %d", i, len(pubs), kept)
				}
				kept = len(pubs)
				if len(pubs) > 0 {
					checkOffsets(t, fmt.Sprint("ch", i), historyOffsets(pubs), per-uint64(len(pubs))+1, per)
				}
			}
			if tt.fraction >= 0.5 && kept == 0 {
				t.Fatal("trimmed to half, the newest channel kept nothing")
			}
			// The lowered budget stays.
			for range per {
				publishData(t, h, "ch0", data, codec.JSON)
			}
			if st := h.Stats(); st.HistoryBytes > limit {
				t.Fatalf("history grew back to %d over the trimmed %d", st.HistoryBytes, limit)
			}
			h.RestoreHistory()
			for range per {
				publishData(t, h, "ch1", data, codec.JSON)
			}
			if _, pubs, _ := h.History("ch1", 0); len(pubs) != per {
				t.Fatalf("after RestoreHistory ch1 holds %d, want %d", len(pubs), per)
			}
		})
	}
}
