// fanout addition (not part of upstream netpoll): the helper that the
// upstream tests listed as skipped in third_party/README.md call. Each skip
// says so in one "SKIPPED" line, also appended to the file named by
// $FANOUT_SKIP_LOG (./scripts/test.sh prints it at the end, as go test shows
// nothing of a passing package without -v). NETPOLL_RUN_SKIPPED=1 runs the
// skipped tests anyway.

//go:build !windows
// +build !windows

package netpoll

import (
	"fmt"
	"os"
	"testing"
)

func fanoutSkip(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("NETPOLL_RUN_SKIPPED") == "1" {
		t.Logf("NETPOLL_RUN_SKIPPED=1: running although fanout skips it: %s", reason)
		return
	}
	line := "SKIPPED: netpoll " + t.Name() + " (fanout skips it, see third_party/README.md; NETPOLL_RUN_SKIPPED=1 runs it): " + reason
	if path := os.Getenv("FANOUT_SKIP_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			_, _ = fmt.Fprintln(f, line)
			_ = f.Close()
		}
	}
	t.Skip(line)
}
