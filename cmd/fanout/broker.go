package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/fanout-dev/fanout/engine"
	"github.com/fanout-dev/fanout/engine/broker/redisbroker"
	"github.com/fanout-dev/fanout/engine/hub"
)

// newBroker makes the cluster broker --broker names (docs/CLUSTER.md), with
// the history bounds of the other flags.
func newBroker(url string, cfg engine.Config, logger *slog.Logger) (hub.Broker, error) {
	scheme, _, _ := strings.Cut(url, "://")
	switch scheme {
	case "redis", "rediss", "unix":
		b, err := redisbroker.New(redisbroker.Config{
			URL:         url,
			HistorySize: cfg.HistorySize,
			HistoryTTL:  cfg.HistoryTTL,
			Logger:      logger,
		})
		if err != nil {
			return nil, fmt.Errorf("--broker: %w", err)
		}
		return b, nil
	case "nats":
		return nil, fmt.Errorf("--broker %s: NATS is not supported (measured and set aside for Redis: docs/CLUSTER.md); use redis://host:6379", url)
	}
	return nil, fmt.Errorf("--broker %q: want redis://host:port[/db] or rediss://... (docs/CLUSTER.md)", url)
}
