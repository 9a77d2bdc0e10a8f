package engine

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
)

// TestTLSMetrics: the TLS front's counters reach /metrics, and a plain
// server has no TLS series.
func TestTLSMetrics(t *testing.T) {
	e := startTLSServer(t, Config{})
	e.dial(t)
	resp, err := e.httpsClient().Get("https://" + e.s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`(?m)^fanout_tls_handshakes_total (\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no fanout_tls_handshakes_total in /metrics")
	}
	if n, _ := strconv.Atoi(string(m[1])); n < 2 { // the WebSocket and this scrape
		t.Fatalf("fanout_tls_handshakes_total %d, want at least 2", n)
	}
	plain := startServer(t, Config{})
	resp3, err := httpGetBody("http://" + plain.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if regexp.MustCompile(`fanout_tls_`).MatchString(resp3) {
		t.Fatal("a plain server exports TLS series")
	}
}

func httpGetBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
