package client

import (
	"errors"
	"math/rand/v2"
	"time"
)

// stableAfter is how long a connection must stay up for the backoff sequence
// to start again from MinBackoff.
const stableAfter = 10 * time.Second

// backoff computes reconnection delays (see ReconnectOptions).
type backoff struct {
	min, max time.Duration
	// rnd returns a uniform random duration in [0, n]; nil: math/rand/v2.
	rnd func(n time.Duration) time.Duration
}

func (b backoff) random(n time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	if b.rnd != nil {
		return b.rnd(n)
	}
	return rand.N(n + 1)
}

// ceiling is the upper bound of the attempt-th delay: min(max, min*2^attempt).
func (b backoff) ceiling(attempt int) time.Duration {
	c := b.min
	for i := 0; i < attempt && c < b.max; i++ {
		c *= 2
	}
	return min(c, b.max)
}

// delay is how long to wait before the attempt-th consecutive attempt
// (0-based) after cause: the retry_after_ms of a close 1012 plus jitter, or
// full jitter over the attempt's ceiling.
func (b backoff) delay(attempt int, cause error) time.Duration {
	var ce *CloseError
	if errors.As(cause, &ce) && ce.Code == CloseServiceRestart && ce.RetryAfter > 0 {
		return ce.RetryAfter + b.random(min(max(b.min, ce.RetryAfter/2), b.max))
	}
	return b.random(b.ceiling(attempt))
}
