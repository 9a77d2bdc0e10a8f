package engine

import (
	"testing"
)

// TestClientIDsUnpredictable: client ids are random, not a counter under a
// shared prefix (fffb99b9-rbh, fffb99b9-rbi, ...), so a client cannot name
// the next ones.
func TestClientIDsUnpredictable(t *testing.T) {
	s := startServer(t, Config{})
	seen := map[string]bool{}
	var prev string
	for i := 0; i < 50; i++ {
		id := dialClient(t, s, false).client
		if len(id) != 16 {
			t.Fatalf("id %q: want 16 characters", id)
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
		// Two random 80-bit ids share a 5-character prefix with
		// probability 32^-5 (1e-8).
		if prev != "" && id[:5] == prev[:5] {
			t.Fatalf("consecutive ids %q and %q share a prefix", prev, id)
		}
		prev = id
	}
}
