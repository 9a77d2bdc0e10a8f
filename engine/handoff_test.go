package engine

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// TestHTTPHandoffKeepsLateBytes: bytes of an ordinary HTTP request that the
// poller reads while the connection is being handed to net/http (a body
// arriving in a second segment) reach net/http; they were lost, and the
// request waited for its body until the client gave up.
func TestHTTPHandoffKeepsLateBytes(t *testing.T) {
	s := startServer(t, Config{APIKey: "k", CommandRate: -1})
	body := `{"channel":"late","data":"` + strings.Repeat("z", 8000) + `"}`
	head := fmt.Sprintf("POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", len(body))
	const rounds, parallel = 200, 10
	var wg sync.WaitGroup
	errs := make(chan error, rounds)
	sem := make(chan struct{}, parallel)
	for i := 0; i < rounds; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			c := dialRaw(t, s)
			// Head and the first bytes of the body, then the rest right
			// behind: the rest arrives while the first part is handled.
			split := len(body) / (2 + i%5)
			if _, err := c.nc.Write([]byte(head + body[:split])); err != nil {
				errs <- err
				return
			}
			if _, err := c.nc.Write([]byte(body[split:])); err != nil {
				errs <- err
				return
			}
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				errs <- fmt.Errorf("request %d: %v", i, err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("request %d: %s", i, resp.Status)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
