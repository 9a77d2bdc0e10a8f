package hub

import "errors"

// ErrUnavailable: a distributed broker cannot reach its engine (Redis, ...)
// and so cannot assign positions, store or read history, or start an
// interest. Brokers wrap it (errors.Is); the engine replies with the
// protocol's "unavailable" code ("broker unavailable; retry later") and
// /readyz says so. It is never returned by the memory broker.
var ErrUnavailable = errors.New("broker unavailable")

// HealthChecker is implemented by brokers that depend on something outside
// the process. Healthy returns nil while the broker can serve, and an error
// wrapping ErrUnavailable (saying why) while it cannot. It must be cheap
// (it answers /readyz probes) and never block.
type HealthChecker interface {
	Healthy() error
}

// BrokerHealth reports the broker's state: nil when it is healthy or does
// not implement HealthChecker (the memory broker), its error otherwise.
func (h *Hub) BrokerHealth() error {
	if hc, ok := h.broker.(HealthChecker); ok {
		return hc.Healthy()
	}
	return nil
}
