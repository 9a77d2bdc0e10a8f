package redisbroker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// roundTrips times the publish script's round trips: from sending the
// script to its reply (or its failure: a timeout is a round trip of
// Timeout, which is what the publisher waited). Publishes refused at once
// because Redis is known to be down are not round trips and not observed.
type roundTrips struct {
	publish prometheus.Histogram
}

func newRoundTrips() roundTrips {
	return roundTrips{publish: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "fanout",
		Name:      "broker_publish_seconds",
		Help:      "Round trip of the Redis publish script (offset, stream append, PUBLISH), successful or not.",
		// 100 µs (Redis on the same host) to the 1 s default Timeout and
		// beyond.
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	})}
}

// publishDone observes a publish round trip that started at start.
func (r roundTrips) publishDone(start time.Time) {
	r.publish.Observe(time.Since(start).Seconds())
}

// Broker metrics: the counters of Stats, the interest and the publish
// round trip. The engine serves them on /metrics because Broker implements
// prometheus.Collector (the engine does not import this package); its own
// fanout_broker_up gauge says whether the pub/sub link is up (Healthy).
var (
	descReconnects  = prometheus.NewDesc("fanout_broker_reconnects_total", "Pub/sub connections to Redis made after the first.", nil, nil)
	descPublished   = prometheus.NewDesc("fanout_broker_published_total", "Publications assigned an offset by this node.", nil, nil)
	descDelivered   = prometheus.NewDesc("fanout_broker_delivered_total", "Publications the broker handed to this node's hub.", nil, nil)
	descDuplicates  = prometheus.NewDesc("fanout_broker_duplicates_total", "Publications received twice and dropped.", nil, nil)
	descCaughtUp    = prometheus.NewDesc("fanout_broker_caught_up_total", "Publications delivered from history to fill a gap (a reconnect, a lost pub/sub message).", nil, nil)
	descLost        = prometheus.NewDesc("fanout_broker_lost_total", "Offsets that could not be delivered: the history no longer held them.", nil, nil)
	descRegressions = prometheus.NewDesc("fanout_broker_regressions_total", "Channels found with an offset below one delivered in the same epoch (Redis lost acknowledged writes); each started a new epoch.", nil, nil)
	descChannels    = prometheus.NewDesc("fanout_broker_channels", "Channels this node has an interest in (pub/sub subscriptions).", nil, nil)
)

// Describe implements prometheus.Collector.
func (b *Broker) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range [...]*prometheus.Desc{descReconnects, descPublished, descDelivered, descDuplicates, descCaughtUp, descLost, descRegressions, descChannels} {
		ch <- d
	}
	b.rtt.publish.Describe(ch)
}

// Collect implements prometheus.Collector.
func (b *Broker) Collect(ch chan<- prometheus.Metric) {
	st := b.Stats()
	counter := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	counter(descReconnects, st.Reconnects)
	counter(descPublished, st.Published)
	counter(descDelivered, st.Delivered)
	counter(descDuplicates, st.Duplicates)
	counter(descCaughtUp, st.CaughtUp)
	counter(descLost, st.Lost)
	counter(descRegressions, st.Regressions)
	ch <- prometheus.MustNewConstMetric(descChannels, prometheus.GaugeValue, float64(st.Channels))
	b.rtt.publish.Collect(ch)
}
