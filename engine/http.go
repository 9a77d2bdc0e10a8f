package engine

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/hub"
	"github.com/fanout-dev/fanout/web"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxPublishBodyOverhead is what a POST /api/publish body may hold beyond
// MaxMessageBytes of data: the JSON envelope and channel name.
const maxPublishBodyOverhead = 4 << 10

// apiPublishWait bounds how long POST /api/publish waits for a backlogged
// channel before answering 503.
const apiPublishWait = 5 * time.Second

// httpHandler routes the ordinary HTTP requests of the public port. With
// AdminAddr set, the metrics and profiles (and with AdminAPI the API) are
// served by adminHandler on that address instead.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	if s.cfg.AdminAddr == "" {
		s.routeAdmin(mux)
	}
	if s.cfg.AdminAddr == "" || !s.cfg.AdminAPI {
		s.routeAPI(mux)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "draining\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, _ *http.Request) {
		// Reached only when a connection that already served plain HTTP
		// asks for an upgrade: upgrades happen on fresh connections.
		http.Error(w, "WebSocket upgrades must use a new connection", http.StatusBadRequest)
	})
	mux.Handle("/", web.Handler())
	return mux
}

// adminHandler routes the admin port (AdminAddr): health, metrics,
// profiles with Pprof, and the API with AdminAPI.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	s.routeAdmin(mux)
	if s.cfg.AdminAPI {
		s.routeAPI(mux)
	}
	return mux
}

// routeAdmin adds what exposes the server's internals.
func (s *Server) routeAdmin(mux *http.ServeMux) {
	mux.Handle("GET /metrics", s.metrics)
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// routeAPI adds the server-side API.
func (s *Server) routeAPI(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/publish", s.apiPublish)
}

// apiPublish implements POST /api/publish: {"channel":"c","data":<any>} with
// the API key as a bearer token; answers {"offset":N,"epoch":"E"}.
func (s *Server) apiPublish(w http.ResponseWriter, r *http.Request) {
	if s.cfg.APIKey == "" {
		http.NotFound(w, r)
		return
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
		writeJSONError(w, http.StatusUnauthorized, "missing or wrong API key")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxMessageBytes)+maxPublishBodyOverhead))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSONError(w, http.StatusRequestEntityTooLarge, "body larger than "+strconv.FormatInt(tooBig.Limit, 10)+" bytes")
			return
		}
		writeJSONError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return
	}
	var req struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSONError(w, http.StatusBadRequest, "body is not a JSON object {\"channel\",\"data\"}: "+err.Error())
		return
	}
	switch {
	case req.Channel == "":
		writeJSONError(w, http.StatusBadRequest, "missing channel")
		return
	case !codec.ValidChannel([]byte(req.Channel)):
		writeJSONError(w, http.StatusBadRequest, "invalid channel name: use 1-255 characters of A-Z a-z 0-9 _ - : . /")
		return
	case len(req.Data) == 0:
		writeJSONError(w, http.StatusBadRequest, "missing data")
		return
	}
	// A backend may wait for a backlogged channel (unlike a WebSocket
	// client, whose reader must not), but not for ever.
	ctx, cancel := context.WithTimeout(r.Context(), apiPublishWait)
	defer cancel()
	pos, err := s.hub.Publish(ctx, req.Channel, req.Data, codec.JSON, codec.ClientInfo{})
	if err != nil {
		switch {
		case errors.Is(err, hub.ErrBadData):
			writeJSONError(w, http.StatusBadRequest, err.Error())
			return
		case errors.Is(err, hub.ErrTooLarge):
			writeJSONError(w, http.StatusRequestEntityTooLarge, "data larger than the maximum message size in some encoding")
			return
		case errors.Is(err, context.DeadlineExceeded):
			w.Header().Set("Retry-After", "1")
			writeJSONError(w, http.StatusServiceUnavailable, "channel fan-out backlogged; retry later")
			return
		}
		s.log.Warn("api publish failed", "channel", req.Channel, "err", err)
		writeJSONError(w, http.StatusInternalServerError, "publish failed")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}{pos.Offset, pos.Epoch})
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error string `json:"error"`
	}{msg})
}

// newMetricsHandler exposes the server's counters, the hub's and the Go
// runtime's in Prometheus text format, from a registry of its own so that
// several servers in one process (tests) do not collide.
func (s *Server) newMetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	counter := func(name, help string, f func() uint64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "fanout", Name: name, Help: help},
			func() float64 { return float64(f()) }))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "fanout", Name: name, Help: help}, f))
	}
	st := &s.stats
	counter("accepted_total", "TCP connections accepted.", st.accepted.Load)
	counter("upgrades_total", "WebSocket upgrades completed.", st.upgrades.Load)
	counter("handshake_failures_total", "Upgrade requests rejected.", st.handshakeFailed.Load)
	counter("handshake_timeouts_total", "Connections closed before completing a handshake in time.", st.handshakeTimeouts.Load)
	counter("http_connections_total", "Connections handed to the HTTP server.", st.httpConns.Load)
	counter("frames_received_total", "WebSocket frames received.", st.framesIn.Load)
	counter("messages_received_total", "WebSocket data messages received.", st.messagesIn.Load)
	counter("command_errors_total", "Error replies sent.", st.commandErrors.Load)
	counter("writev_total", "Direct writev calls.", st.writevs.Load)
	counter("socket_full_waits_total", "Times a socket was full and the write poller waited for it.", st.flushes.Load)
	counter("write_timeouts_total", "Connections dropped because their socket took nothing for --write-timeout.", st.writeTimeouts.Load)
	counter("slow_consumers_total", "Connections closed 1008 for a full write queue.", st.slowConsumers.Load)
	counter("commands_rate_limited_total", "Commands refused rate_limited by the per-connection command rate.", st.rateLimited.Load)
	gauge("connections", "Open WebSocket connections.", func() float64 { return float64(st.open.Load()) })
	gauge("reassembly_bytes", "Bytes held for messages not fully arrived (fragments, large frames), against --max-reassembly-bytes.", func() float64 { return float64(s.reassembly.Load()) })
	closes := prometheus.NewDesc("fanout_closes_sent_total", "Close frames sent, by code.", []string{"code"}, nil)
	reg.MustRegister(collectorFunc{desc: closes, collect: func(ch chan<- prometheus.Metric) {
		for i := range st.closes {
			code := strconv.Itoa(1000 + i)
			if i == closeCodeSlots-1 {
				code = "other"
			}
			ch <- prometheus.MustNewConstMetric(closes, prometheus.CounterValue, float64(st.closes[i].Load()), code)
		}
	}})
	hubDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("fanout_hub_"+name, help, nil, nil)
	}
	hubMetrics := []struct {
		desc  *prometheus.Desc
		kind  prometheus.ValueType
		value func(hub.Stats) float64
	}{
		{hubDesc("channels", "Channels with subscribers."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.Channels) }},
		{hubDesc("subscriptions", "Subscriptions (subscriber, channel)."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.Subscriptions) }},
		{hubDesc("presence_listeners", "Subscriptions receiving join/leave pushes."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.Listeners) }},
		{hubDesc("queue_depth", "Operations waiting in shard queues."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.QueueDepth) }},
		{hubDesc("published_total", "Publications accepted."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Published) }},
		{hubDesc("broadcasts_total", "Publications fanned out."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Broadcasts) }},
		{hubDesc("encodes_total", "Publication frames encoded."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Encodes) }},
		{hubDesc("deliveries_total", "Publication frames handed to subscribers."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Deliveries) }},
		{hubDesc("batches_total", "Coalesced multi-publication sends."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Batches) }},
		{hubDesc("recovered_total", "Subscribes that recovered every missed publication."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Recovered) }},
		{hubDesc("not_recovered_total", "Subscribes whose recovery had a gap."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.NotRecovered) }},
		{hubDesc("throttled_publishes_total", "Publishes that waited for a backlogged fan-out."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Throttled) }},
		{hubDesc("presence_pushes_total", "Join and leave pushes sent."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Presence) }},
		{hubDesc("backpressure_refusals_total", "Publishes answered rate_limited because their channel's fan-out was backlogged."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Refused) }},
		{hubDesc("too_large_total", "Publishes refused because an encoding of them exceeded the maximum message size."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.TooLarge) }},
		{hubDesc("replies_truncated_total", "History replies cut and recoveries refused by the reply size bound."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Truncated) }},
		{hubDesc("history_bytes", "Memory held by history, as counted against --history-bytes."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.HistoryBytes) }},
		{hubDesc("history_channels", "Channels holding history."), prometheus.GaugeValue, func(h hub.Stats) float64 { return float64(h.HistoryChannels) }},
		{hubDesc("history_expired_total", "Publications dropped from history by --history-ttl."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.HistoryExpired) }},
		{hubDesc("history_evicted_bytes_total", "Publications evicted from history by the --history-bytes budget (oldest first)."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.HistoryEvictedBytes) }},
		{hubDesc("history_evicted_channels_total", "Publications evicted from history by the --history-channels cap."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.HistoryEvictedChannels) }},
	}
	// Unchecked (no Describe): one collector reads Stats once per scrape.
	reg.MustRegister(collectorFunc{collect: func(ch chan<- prometheus.Metric) {
		hs := s.hub.Stats()
		for _, m := range hubMetrics {
			ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(hs))
		}
	}})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	if c.desc != nil {
		ch <- c.desc
	}
}
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
