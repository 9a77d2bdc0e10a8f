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
	"unicode/utf8"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/auth"
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
		if err := s.hub.BrokerHealth(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, err.Error()+"\n")
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	// Reached only when a connection that already served plain HTTP (a
	// proxy's kept-alive upstream connection) asks for an upgrade: it goes
	// back to the event loop and upgrades there (proxy.go).
	mux.HandleFunc("/ws", s.keptAliveUpgrade)
	s.routeAuth(mux)
	mux.Handle("GET /api/stats", s.newLiveStatsHandler()) // the web app's live stats (livestats.go)
	mux.Handle("/", web.Handler())
	return s.refuseStrayUpgrades(mux)
}

// refuseStrayUpgrades answers a WebSocket handshake for any path but /ws
// with 404 (RFC 6455 4.2.2: a service that is not available gets an HTTP
// error), instead of serving that path's page as if it were an upgrade
// (the web app's HTML answered "GET / Upgrade: websocket" with 200),
// and counts it (fanout_upgrades_refused_total{cause="wrong_path"}).
func (s *Server) refuseStrayUpgrades(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			s.stats.upgradeFailed(failWrongPath)
			http.Error(w, "no WebSocket endpoint at "+r.URL.Path+": connect to /ws", http.StatusNotFound)
			return
		}
		next.ServeHTTP(w, r)
	})
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

// routeAPI adds the server-side API, for backends bearing the API key.
func (s *Server) routeAPI(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/publish", s.apiPublish)
	mux.HandleFunc("POST /api/disconnect", s.apiDisconnect)
}

// routeAuth adds what browsers need from the public port to authenticate:
// /auth.json, which tells the web app whether and where to get a token,
// and with DevTokens the development token endpoint.
func (s *Server) routeAuth(mux *http.ServeMux) {
	mux.HandleFunc("GET /auth.json", s.authConfig)
	if s.cfg.DevTokens {
		mux.HandleFunc("GET /api/dev-token", s.devToken)
	}
}

// API bounds.
const (
	// maxBatchPublications bounds the publications of one batch.
	maxBatchPublications = 1000
	// maxBatchBodyBytes bounds a batch's body (a single publish is bounded
	// by MaxMessageBytes plus maxPublishBodyOverhead, whichever is larger).
	maxBatchBodyBytes = 8 << 20
)

// apiAuthorized checks the API key (a bearer token). It answers 404 when
// no key is configured (the API is off) and 401 for a wrong one.
func (s *Server) apiAuthorized(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		http.NotFound(w, r)
		return false
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer realm="fanout"`)
		writeJSONError(w, http.StatusUnauthorized, "missing or wrong API key")
		return false
	}
	return true
}

// readAPIBody reads a request body of at most limit bytes, answering the
// error itself when it cannot.
func readAPIBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSONError(w, http.StatusRequestEntityTooLarge, "body larger than "+strconv.FormatInt(tooBig.Limit, 10)+" bytes")
			return nil, false
		}
		writeJSONError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return nil, false
	}
	return body, true
}

// apiPublication is one publication of POST /api/publish.
type apiPublication struct {
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// apiPublishResult is the answer for one publication: its position, or
// the error and the HTTP status it would have had alone.
type apiPublishResult struct {
	Offset uint64 `json:"offset,omitempty"`
	Epoch  string `json:"epoch,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
}

// apiPublish implements POST /api/publish with the API key as a bearer
// token: {"channel":"c","data":<any>} answers {"offset":N,"epoch":"E"};
// the batch form {"publications":[{"channel","data"},...]} (at most
// maxBatchPublications, published in order) answers 200 with
// {"results":[...]}, one per publication in the same order: its
// {"offset","epoch"}, or {"error","status"} for one that failed (the
// others are published all the same).
func (s *Server) apiPublish(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	body, ok := readAPIBody(w, r, max(int64(s.cfg.MaxMessageBytes)+maxPublishBodyOverhead, maxBatchBodyBytes))
	if !ok {
		return
	}
	var req struct {
		apiPublication
		Publications []apiPublication `json:"publications"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSONError(w, http.StatusBadRequest, "body is not a JSON object {\"channel\",\"data\"} or {\"publications\":[...]}: "+err.Error())
		return
	}
	// A backend may wait for a backlogged channel (unlike a WebSocket
	// client, whose reader must not), but not for ever: apiPublishWait
	// for the whole request.
	ctx, cancel := context.WithTimeout(r.Context(), apiPublishWait)
	defer cancel()
	if req.Publications == nil {
		if int64(len(body)) > int64(s.cfg.MaxMessageBytes)+maxPublishBodyOverhead {
			writeJSONError(w, http.StatusRequestEntityTooLarge, "body larger than "+strconv.Itoa(s.cfg.MaxMessageBytes+maxPublishBodyOverhead)+" bytes")
			return
		}
		res := s.apiPublishOne(ctx, &req.apiPublication)
		if res.Error != "" {
			if res.Status == http.StatusServiceUnavailable {
				w.Header().Set("Retry-After", "1")
			}
			writeJSONError(w, res.Status, res.Error)
			return
		}
		writeJSON(w, http.StatusOK, struct {
			Offset uint64 `json:"offset"`
			Epoch  string `json:"epoch"`
		}{res.Offset, res.Epoch})
		return
	}
	switch {
	case req.Channel != "" || req.Data != nil:
		writeJSONError(w, http.StatusBadRequest, "give either channel and data, or publications")
		return
	case len(req.Publications) == 0:
		writeJSONError(w, http.StatusBadRequest, "publications is empty")
		return
	case len(req.Publications) > maxBatchPublications:
		writeJSONError(w, http.StatusRequestEntityTooLarge, "at most "+strconv.Itoa(maxBatchPublications)+" publications per request")
		return
	}
	results := make([]apiPublishResult, len(req.Publications))
	for i := range req.Publications {
		results[i] = s.apiPublishOne(ctx, &req.Publications[i])
	}
	writeJSON(w, http.StatusOK, struct {
		Results []apiPublishResult `json:"results"`
	}{results})
}

// apiPublishOne validates and publishes one publication of the API.
func (s *Server) apiPublishOne(ctx context.Context, p *apiPublication) apiPublishResult {
	fail := func(status int, msg string) apiPublishResult { return apiPublishResult{Error: msg, Status: status} }
	switch {
	case p.Channel == "":
		return fail(http.StatusBadRequest, "missing channel")
	case !codec.ValidChannel([]byte(p.Channel)):
		return fail(http.StatusBadRequest, "invalid channel name: use 1-255 characters of A-Z a-z 0-9 _ - : . /")
	case len(p.Data) == 0:
		return fail(http.StatusBadRequest, "missing data")
	case len(p.Data) > s.cfg.MaxMessageBytes:
		return fail(http.StatusRequestEntityTooLarge, "data larger than "+strconv.Itoa(s.cfg.MaxMessageBytes)+" bytes")
	}
	pos, err := s.hub.Publish(ctx, p.Channel, p.Data, codec.JSON, codec.ClientInfo{})
	switch {
	case err == nil:
		return apiPublishResult{Offset: pos.Offset, Epoch: pos.Epoch}
	case errors.Is(err, hub.ErrBadData):
		return fail(http.StatusBadRequest, err.Error())
	case errors.Is(err, hub.ErrTooLarge):
		return fail(http.StatusRequestEntityTooLarge, "data larger than the maximum message size in some encoding")
	case errors.Is(err, context.DeadlineExceeded):
		return fail(http.StatusServiceUnavailable, "channel fan-out backlogged; retry later")
	case errors.Is(err, hub.ErrUnavailable):
		return fail(http.StatusServiceUnavailable, "broker unavailable; retry later")
	}
	s.log.Warn("api publish failed", "channel", p.Channel, "err", err)
	return fail(http.StatusInternalServerError, "publish failed")
}

// apiDisconnect implements POST /api/disconnect with the API key:
// {"user":"alice","code":4000-4999 or 1008,"reason":"..."} closes every
// connection of the user on this node with that close code (1008 and
// "disconnected by the server" when code and reason are absent) and
// answers {"disconnected":N}. The user's tokens stay valid until they
// expire: a backend revoking access also stops issuing them.
func (s *Server) apiDisconnect(w http.ResponseWriter, r *http.Request) {
	if !s.apiAuthorized(w, r) {
		return
	}
	body, ok := readAPIBody(w, r, 4<<10)
	if !ok {
		return
	}
	var req struct {
		User   string `json:"user"`
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSONError(w, http.StatusBadRequest, "body is not a JSON object {\"user\",\"code\",\"reason\"}: "+err.Error())
		return
	}
	reason := errDisconnected
	if req.Code != 0 || req.Reason != "" {
		reason = &CloseError{Code: ClosePolicy, Reason: errDisconnected.Reason}
		if req.Code != 0 {
			reason.Code = uint16(req.Code)
		}
		if req.Reason != "" {
			reason.Reason = req.Reason
		}
	}
	switch {
	case req.User == "":
		writeJSONError(w, http.StatusBadRequest, "missing user")
		return
	case req.Code != 0 && req.Code != int(ClosePolicy) && (req.Code < 4000 || req.Code > 4999):
		writeJSONError(w, http.StatusBadRequest, "code must be 1008 or 4000-4999")
		return
	case len(reason.Reason) > 123 || !utf8.ValidString(reason.Reason):
		writeJSONError(w, http.StatusBadRequest, "reason must be at most 123 bytes of UTF-8")
		return
	}
	n := s.disconnectUser(req.User, reason)
	s.log.Info("api disconnect", "user", req.User, "code", reason.Code, "connections", n)
	writeJSON(w, http.StatusOK, struct {
		Disconnected int `json:"disconnected"`
	}{n})
}

// authConfig implements GET /auth.json, from which the web app learns
// whether the server wants a token and where to get one:
// {"auth":"none"|"required"|"optional","tokenURL":"...","dev":bool}.
// "none": no token keys, connect as today; "required": a token is needed;
// "optional": anonymous connections are allowed too. dev is set when
// tokenURL is the development endpoint, which takes ?name=.
func (s *Server) authConfig(w http.ResponseWriter, _ *http.Request) {
	mode := "none"
	switch {
	case s.authn.required() && s.cfg.AllowAnonymous:
		mode = "optional"
	case s.authn.required():
		mode = "required"
	}
	tokenURL, dev := s.cfg.TokenURL, false
	if tokenURL == "" && s.cfg.DevTokens {
		tokenURL, dev = "/api/dev-token", true
	}
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusOK, struct {
		Auth     string `json:"auth"`
		TokenURL string `json:"tokenURL,omitempty"`
		Dev      bool   `json:"dev,omitempty"`
	}{mode, tokenURL, dev})
}

// devToken implements GET /api/dev-token?name=N (DevTokens only, for
// development): an HS256 token with sub and name N, the DevTokenChannels
// and DevTokenPublish globs, valid for DevTokenTTL. Anyone who reaches it
// can be anyone.
func (s *Server) devToken(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimSpace(r.URL.Query().Get("name"))
	if !validName([]byte(name)) {
		writeJSONError(w, http.StatusBadRequest, "name must be 1-128 bytes of UTF-8 text without control characters")
		return
	}
	tok, err := auth.Mint(s.authn.devSecret, auth.Claims{
		Subject:  name,
		Name:     name,
		Channels: s.cfg.DevTokenChannels,
		Publish:  s.cfg.DevTokenPublish,
	}, s.cfg.DevTokenTTL)
	if err != nil {
		writeJSONError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, struct {
		Token   string `json:"token"`
		User    string `json:"user"`
		Name    string `json:"name"`
		Expires int64  `json:"expires"`
	}{tok, name, name, time.Now().Add(s.cfg.DevTokenTTL).Unix()})
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
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
	counter("keepalive_upgrades_total", "WebSocket upgrades of connections that served plain HTTP first (a proxy's kept-alive upstream connections), given back to the event loop by net/http; counted in upgrades_total too.", s.adm.keepalive.upgrades.Load)
	counter("frames_received_total", "WebSocket frames received.", st.framesIn.Load)
	counter("messages_received_total", "WebSocket data messages received.", st.messagesIn.Load)
	counter("messages_inflated_total", "Compressed (permessage-deflate) messages received and inflated.", st.inflated.Load)
	counter("upgrades_compressed_total", "WebSocket upgrades that negotiated permessage-deflate.", st.deflateUpgrades.Load)
	counter("command_errors_total", "Error replies sent.", st.commandErrors.Load)
	counter("writev_total", "Direct writev calls.", st.writevs.Load)
	counter("socket_full_waits_total", "Times a socket was full and the write poller waited for it.", st.socketFullWaits.Load)
	counter("write_timeouts_total", "Connections dropped because their socket took nothing for --write-timeout.", st.writeTimeouts.Load)
	counter("write_errors_total", "Connections dropped because a write failed (the peer reset or vanished).", st.writeErrors.Load)
	counter("close_timeouts_total", "Connections dropped because the peer did not close within --close-timeout of the server's close.", st.closeTimeouts.Load)
	counter("slow_consumers_total", "Connections closed 1008 for a full write queue.", st.slowConsumers.Load)
	counter("commands_rate_limited_total", "Commands refused rate_limited by the per-connection command rate.", st.rateLimited.Load)
	counter("publish_bytes_limited_total", "Publishes refused rate_limited by --publish-bytes-per-second (per user, or per anonymous connection).", s.authn.publishLimited.Load)
	counter("auth_refused_total", "Upgrades (401) and connect or refresh commands refused for a missing, bad or expired token.", s.authn.refused.Load)
	gauge("connections", "Open WebSocket connections.", func() float64 { return float64(st.open.Load()) })
	s.registerAdmissionMetrics(reg)
	gauge("reassembly_bytes", "Bytes held for messages not fully arrived (fragments, large frames), against --max-reassembly-bytes.", func() float64 { return float64(s.reassembly.Load()) })
	if s.cfg.TLSCertFile != "" {
		// s.tls is created by Start; before it these read zero.
		tlsCounter := func(name, help string, f func(*tlsFront) uint64) {
			counter(name, help, func() uint64 {
				if s.tls == nil {
					return 0
				}
				return f(s.tls)
			})
		}
		tlsCounter("tls_handshakes_total", "TLS handshakes completed on the public port.", func(f *tlsFront) uint64 { return f.handshakes.Load() })
		tlsCounter("tls_handshake_errors_total", "TLS handshakes that failed or timed out.", func(f *tlsFront) uint64 { return f.handshakeErrors.Load() })
		tlsCounter("tls_plaintext_refused_total", "Plain HTTP requests to the TLS port (answered 400).", func(f *tlsFront) uint64 { return f.plaintextRefused.Load() })
		tlsCounter("tls_shed_total", "Clients closed at accept because the TLS front held its maximum.", func(f *tlsFront) uint64 { return f.shed.Load() })
		gauge("tls_connections", "Connections the TLS front holds, handshakes included.", func() float64 {
			f := s.tls
			if f == nil {
				return 0
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			return float64(len(f.live))
		})
	}
	s.registerServerMetrics(reg) // metrics.go
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
		{hubDesc("subscribe_local_positions_total", "Subscribes answered from the position this node already knew (the channel's newest publication here), with no broker read."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.LocalPositions) }},
		{hubDesc("compressed_total", "Compressed (permessage-deflate) frames made: once per encoding per publication or presence push, and per large reply."), prometheus.CounterValue, func(h hub.Stats) float64 { return float64(h.Compressed) }},
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
