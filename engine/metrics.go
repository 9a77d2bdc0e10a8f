package engine

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// latencyBuckets are the upper bounds, in seconds, of the latency
// histograms: 100 µs (a fan-out to a few local subscribers) to 10 s (a
// subscriber that stopped reading and is about to be closed).
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// registerServerMetrics adds what newMetricsHandler does not declare
// inline: the fan-out latency, the broker's state (and its own metrics,
// when it has some), the close codes sent and the upgrade failures outside
// admission control.
func (s *Server) registerServerMetrics(reg *prometheus.Registry) {
	// One observation per publication frame (per publication and encoding
	// in use) when its last reference is released: see
	// hub.SetFrameObserver and wsframe.Frame.Track.
	delivery := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "fanout",
		Name:      "delivery_seconds",
		Help: "Per node: seconds from a publication's frame being encoded on this node (at once when published here, " +
			"on arrival from the broker otherwise) to its write to the node's last subscriber of the channel.",
		Buckets: latencyBuckets,
	})
	reg.MustRegister(delivery)
	s.hub.SetFrameObserver(delivery)

	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "fanout", Name: "broker_up",
		Help: "1 while the broker can serve (always for the in-memory broker), 0 while it cannot reach its engine (/readyz fails).",
	}, func() float64 {
		if s.hub.BrokerHealth() != nil {
			return 0
		}
		return 1
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "fanout", Name: "ready",
		Help: "1 while /readyz answers 200; 0 while the server drains or its broker is down.",
	}, func() float64 {
		if s.draining.Load() || s.hub.BrokerHealth() != nil {
			return 0
		}
		return 1
	}))
	// A broker with metrics of its own (redisbroker: counters and the
	// publish round trip) implements prometheus.Collector; engine does not
	// import it.
	if c, ok := s.cfg.Broker.(prometheus.Collector); ok {
		reg.MustRegister(c)
	}

	st := &s.stats
	closes := prometheus.NewDesc("fanout_closes_sent_total",
		"Close frames sent, by code: the codes the server closes with (docs/PROTOCOL.md), "+
			"app for 3000-4999 (POST /api/disconnect, or echoed), other for any other code a client closed with and the server echoed.",
		[]string{"code"}, nil)
	reg.MustRegister(collectorFunc{desc: closes, collect: func(ch chan<- prometheus.Metric) {
		for i := range st.closes {
			ch <- prometheus.MustNewConstMetric(closes, prometheus.CounterValue, float64(st.closes[i].Load()), closeLabels[i])
		}
	}})

}

// Close codes counted by fanout_closes_sent_total. sentCloseCodes are the
// codes the server closes with on its own (errors.go, server.go) and the
// usual answers to a client's close; a series is exported for each, at 0
// until the first, and for nothing else, so that a dashboard does not list
// codes the server never sends.
var sentCloseCodes = [...]uint16{
	CloseNormal, CloseGoingAway, CloseProtocolError, CloseUnsupported,
	CloseInvalidPayload, ClosePolicy, CloseTooBig, CloseRestart,
}

const (
	closeSlotApp   = len(sentCloseCodes)     // 3000-4999: POST /api/disconnect's codes, or a client's echoed
	closeSlotOther = len(sentCloseCodes) + 1 // any other code echoed to a client
	closeCodeSlots = len(sentCloseCodes) + 2
)

var closeLabels = func() (l [closeCodeSlots]string) {
	for i, c := range sentCloseCodes {
		l[i] = strconv.Itoa(int(c))
	}
	l[closeSlotApp], l[closeSlotOther] = "app", "other"
	return l
}()

// closeSlot maps a close code to its counter.
func closeSlot(code uint16) int {
	for i, c := range sentCloseCodes {
		if c == code {
			return i
		}
	}
	if code >= 3000 && code <= 4999 {
		return closeSlotApp
	}
	return closeSlotOther
}

// upgradeFailure is why an upgrade request was refused outside admission
// control. Both kinds share one metric, fanout_upgrades_refused_total
// {cause} (registerAdmissionMetrics), so that every refused upgrade is
// counted once, in one place, by cause.
type upgradeFailure uint8

const (
	// failWrongPath: an upgrade asked net/http for a path other than /ws
	// (answered 404 by refuseStrayUpgrades).
	failWrongPath upgradeFailure = iota
	// failDraining: the server is draining (503 with Retry-After).
	failDraining
	// failBadRequest: gobwas/ws refused the request itself: a malformed
	// request line, a missing or wrong Upgrade, Connection or
	// Sec-WebSocket-Version header, a method other than GET.
	failBadRequest
	// failHeadTooLarge: a request head over 16 KiB (431).
	failHeadTooLarge
	// failBadSubprotocol: none of the offered subprotocols is fanout's.
	failBadSubprotocol
	// failUnauthorized: authentication at the upgrade failed (401).
	failUnauthorized
	numUpgradeFailures
)

var upgradeFailureNames = [numUpgradeFailures]string{
	failWrongPath:      "wrong_path",
	failDraining:       "draining",
	failBadRequest:     "bad_request",
	failHeadTooLarge:   "head_too_large",
	failBadSubprotocol: "bad_subprotocol",
	failUnauthorized:   "unauthorized",
}
