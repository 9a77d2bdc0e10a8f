// Command fanout runs a fanout WebSocket pub/sub server.
//
// Every flag has an environment equivalent: --max-message-bytes is
// FANOUT_MAX_MESSAGE_BYTES. Flags given on the command line win.
//
// "fanout token --secret S --sub alice ..." prints an HS256 token for
// development (see tokenCommand).
//
// "fanout healthcheck" exits 0 when the server configured by the
// environment answers /healthz (the container image's HEALTHCHECK; see
// healthcheckCommand).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/fanout-dev/fanout/engine"
	"github.com/fanout-dev/fanout/engine/auth"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "token" {
		err = tokenCommand(os.Args[2:], os.Stdout, os.Stderr)
	} else if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		if err = healthcheckCommand(os.Args[2:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "fanout:", err)
			os.Exit(1) // unhealthy: what HEALTHCHECK expects
		}
	} else {
		err = run(os.Args[1:], os.Stderr)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fanout:", err)
		os.Exit(2)
	}
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("fanout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg       engine.Config
		origins   string
		logLevel  string
		logFormat string

		anonChannels, anonPublish, devChannels, devPublish string

		trustedProxies string
		brokerURL      string
		compression    string
	)
	fs.StringVar(&cfg.Addr, "addr", ":8080", "TCP address to listen on")
	fs.BoolVar(&cfg.ReusePort, "reuse-port", false, "set SO_REUSEPORT so several processes share the port")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate chain: with --tls-key, the port serves https:// and wss:// only (reloaded on SIGHUP)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	fs.IntVar(&cfg.MaxMessageBytes, "max-message-bytes", 1<<20, "largest client message in bytes (larger: close 1009)")
	fs.StringVar(&compression, "compression", "on", "permessage-deflate for clients that offer it: on or off")
	fs.IntVar(&cfg.CompressionMinBytes, "compression-min-bytes", 256, "messages shorter than this go uncompressed (negative: compress all)")
	fs.IntVar(&cfg.CompressionLevel, "compression-level", 1, "compress/flate level, 1 (fastest) to 9 (smallest)")
	fs.IntVar(&cfg.MaxReassemblyBytes, "max-reassembly-bytes", 256<<20, "bytes all connections together may hold for messages still arriving (over: that connection is closed 1009; negative: no bound)")
	fs.IntVar(&cfg.MaxSubscriptionsPerConn, "max-subscriptions-per-conn", 1024, "channels one connection may subscribe to (over: error too_large; negative: no limit)")
	fs.Float64Var(&cfg.CommandRate, "command-rate", 100, "commands per second per connection, on average (over: error rate_limited; ignoring it: close 1008; negative: no limit)")
	fs.IntVar(&cfg.CommandBurst, "command-burst", 200, "commands one connection may send at once before --command-rate applies")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 60*time.Second, "close connections silent this long (pinged half-way)")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", 5*time.Second, "time allowed from accept to a complete upgrade request")
	fs.DurationVar(&cfg.FrameTimeout, "frame-timeout", 10*time.Second, "time allowed for a started frame, or a fragmented message, to arrive whole, from its first byte")
	fs.DurationVar(&cfg.CloseTimeout, "close-timeout", 2*time.Second, "time the peer gets to close after the server's close frame")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", 10*time.Second, "drop a connection whose socket accepts nothing for this long")
	fs.IntVar(&cfg.WriteQueueBytes, "write-queue-bytes", 1<<20, "outbound bytes queued per connection before it is closed 1008 slow consumer")
	fs.IntVar(&cfg.SendBufferBytes, "send-buffer-bytes", 0, "SO_SNDBUF per connection (0: kernel default, autotuned)")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "URL browsers load the app from (e.g. https://chat.example.com): its origin may open WebSockets; unset with no --allowed-origins: development mode, only pages on localhost")
	fs.StringVar(&origins, "allowed-origins", "", "comma-separated further browser origins (scheme://host[:port]) allowed to open WebSockets (* for any)")
	fs.StringVar(&trustedProxies, "trusted-proxies", "", "comma-separated CIDRs of proxies whose X-Forwarded-For/-Host/-Proto are believed (client address, origin check)")
	fs.IntVar(&cfg.MaxConns, "max-conns", 0, "sockets held (WebSockets, handshakes) past which upgrades get 503 + Retry-After (0: RLIMIT_NOFILE less max(256, 5%), /3 with TLS; negative: no limit)")
	fs.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", engine.DefaultMaxConnsPerIP, "open WebSockets per client address (IPv6: per /64; loopback not limited) past which upgrades get 429 (negative: no limit)")
	fs.Int64Var(&cfg.MaxMemory, "max-memory", 0, "memory in bytes (Go runtime, from the OS) above which upgrades get 503 + Retry-After and history is trimmed (0: 80% of the cgroup or machine memory; negative: no limit)")
	fs.DurationVar(&cfg.DrainDelay, "drain-delay", 5*time.Second, "on SIGINT/SIGTERM, how long /readyz says 503 and upgrades get 503 before WebSockets are closed 1012")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 10*time.Second, "after the drain delay, how long to wait for clients to leave")
	fs.DurationVar(&cfg.HTTPReadTimeout, "http-read-timeout", 15*time.Second, "time allowed to read a whole ordinary HTTP request, body included")
	fs.IntVar(&cfg.ReadAheadBytes, "read-ahead-bytes", 64<<10, "unread input buffered per connection before its socket is no longer read")
	fs.BoolVar(&cfg.Echo, "echo", false, "echo every data message verbatim, no protocol (conformance suites)")
	fs.IntVar(&cfg.HistorySize, "history-size", 100, "publications kept per channel for history and recovery")
	fs.DurationVar(&cfg.HistoryTTL, "history-ttl", 5*time.Minute, "drop publications older than this from history, freeing idle channels (negative: never)")
	fs.Int64Var(&cfg.HistoryBytes, "history-bytes", 128<<20, "memory budget of all channels' history; oldest evicted first (negative: unbounded)")
	fs.IntVar(&cfg.HistoryChannels, "history-channels", 100000, "most channels holding history; the least recently published loses it (negative: no cap)")
	fs.IntVar(&cfg.MaxReplyBytes, "max-reply-bytes", 0, "largest subscribe/history reply (0: 3/4 of --write-queue-bytes, at most 786432; negative: no bound)")
	fs.StringVar(&brokerURL, "broker", "", "cluster broker URL joining nodes into one system: redis://[user:password@]host:port[/db] or rediss:// (see docs/CLUSTER.md; empty: in-memory, single node)")
	fs.StringVar(&cfg.APIKey, "api-key", "", "bearer key enabling POST /api/publish and /api/disconnect (unset: they answer 404)")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ (exposes internals; on --admin-addr when set)")
	fs.StringVar(&cfg.AdminAddr, "admin-addr", "", "second address for /metrics, /healthz and --pprof (e.g. 127.0.0.1:9090); the public port then does not serve them")
	fs.BoolVar(&cfg.AdminAPI, "admin-api", false, "serve /api/* on --admin-addr only")
	fs.StringVar(&cfg.TokenSecret, "token-secret", "", "HS256 secret verifying client tokens (prefer FANOUT_TOKEN_SECRET: flags show in ps); with any token key set, clients need a token")
	fs.StringVar(&cfg.TokenPublicKeyFile, "token-public-key", "", "PEM file of RS256/ES256 public keys verifying client tokens")
	fs.StringVar(&cfg.TokenJWKSFile, "token-jwks", "", "JWKS file of RS256/ES256 keys verifying client tokens, chosen by kid (key rotation)")
	fs.BoolVar(&cfg.AllowAnonymous, "allow-anonymous", false, "with token keys set, also accept connections without a token, limited to --anonymous-channels and --anonymous-publish")
	fs.StringVar(&anonChannels, "anonymous-channels", "", "comma-separated channel globs (e.g. 'public:*') anonymous connections may subscribe to, read history and presence of")
	fs.StringVar(&anonPublish, "anonymous-publish", "", "comma-separated channel globs anonymous connections may publish to")
	fs.IntVar(&cfg.PublishBytesPerSecond, "publish-bytes-per-second", 1<<20, "publish data per second per user (per connection when anonymous), on average; over it: error rate_limited (negative: no limit)")
	fs.IntVar(&cfg.PublishBurstBytes, "publish-burst-bytes", 0, "publish data one user may send at once (0: 4x --publish-bytes-per-second; at least --max-message-bytes)")
	fs.StringVar(&cfg.TokenURL, "token-url", "", "same-origin URL the web app fetches {\"token\"} from when the server requires one (default: /api/dev-token with --dev-tokens)")
	fs.BoolVar(&cfg.DevTokens, "dev-tokens", false, "DEVELOPMENT ONLY: serve GET /api/dev-token?name=N, minting a token for any name to anyone")
	fs.StringVar(&devChannels, "dev-token-channels", "*", "comma-separated subscribe globs of dev tokens")
	fs.StringVar(&devPublish, "dev-token-publish", "*", "comma-separated publish globs of dev tokens")
	fs.DurationVar(&cfg.DevTokenTTL, "dev-token-ttl", 10*time.Minute, "lifetime of dev tokens")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: fanout [flags]\n       fanout token --secret S --sub USER [flags]   (print a development token; fanout token -h)\n       fanout healthcheck [--url URL]               (exit 0 when the server answers /healthz)\n\nEvery flag can also be set as FANOUT_<NAME> (e.g. FANOUT_ADDR=:9000).\n\n")
		fs.PrintDefaults()
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	logger, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		return err
	}
	if origins != "" {
		cfg.AllowedOrigins = strings.Split(origins, ",")
	}
	if trustedProxies != "" {
		cfg.TrustedProxies = strings.Split(trustedProxies, ",")
	}
	switch compression {
	case "on":
		cfg.Compression = engine.CompressionOn
	case "off":
		cfg.Compression = engine.CompressionOff
	default:
		return fmt.Errorf("--compression=%q: want on or off", compression)
	}
	if cfg.CompressionLevel < 1 || cfg.CompressionLevel > 9 {
		return fmt.Errorf("--compression-level=%d: want 1 to 9", cfg.CompressionLevel)
	}
	cfg.AnonymousChannels = splitList(anonChannels)
	cfg.AnonymousPublish = splitList(anonPublish)
	cfg.DevTokenChannels = splitList(devChannels)
	cfg.DevTokenPublish = splitList(devPublish)
	cfg.Logger = logger
	if brokerURL != "" {
		if cfg.Broker, err = newBroker(brokerURL, cfg, logger); err != nil {
			return err
		}
	}

	srv, err := engine.New(cfg)
	if err != nil {
		if cfg.Broker != nil {
			_ = cfg.Broker.Close()
		}
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" || cfg.TokenPublicKeyFile != "" || cfg.TokenJWKSFile != "" {
		reloadOnSIGHUP(ctx, srv, cfg.TLSCertFile != "")
	}
	<-ctx.Done()
	stop()
	logger.Info("draining", "delay", cfg.DrainDelay, "timeout", cfg.DrainTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainDelay+cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("drain incomplete; remaining connections dropped", "err", err)
	}
	logger.Info("stopped")
	return nil
}

// reloadOnSIGHUP reads the TLS certificate and key (after a renewal) and
// the token key files (a rotation) again on each SIGHUP, until ctx is done.
// A failed reload keeps what is in use; the server logs either outcome.
func reloadOnSIGHUP(ctx context.Context, srv *engine.Server, tls bool) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if tls {
					_ = srv.ReloadTLS()
				}
				_ = srv.ReloadKeys()
			}
		}
	}()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// tokenCommand is "fanout token": it prints an HS256 token (auth.Mint) for
// development and tests.
func tokenCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fanout token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		secret, sub, name, channels, publish string
		ttl                                  time.Duration
	)
	fs.StringVar(&secret, "secret", os.Getenv("FANOUT_TOKEN_SECRET"), "HS256 secret, the server's --token-secret (default $FANOUT_TOKEN_SECRET)")
	fs.StringVar(&sub, "sub", "", "the user (sub claim)")
	fs.StringVar(&name, "name", "", "display name (info.name claim)")
	fs.StringVar(&channels, "channels", "", "comma-separated globs the user may subscribe to (e.g. 'chat:*')")
	fs.StringVar(&publish, "publish", "", "comma-separated globs the user may publish to")
	fs.DurationVar(&ttl, "ttl", time.Hour, "lifetime")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: fanout token --secret S --sub alice [--channels 'chat:*'] [--publish 'chat:*'] [--name Alice] [--ttl 1h]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("token: unexpected arguments %q", fs.Args())
	case secret == "":
		return errors.New("token: --secret (or FANOUT_TOKEN_SECRET) is required")
	case sub == "":
		return errors.New("token: --sub is required")
	case ttl <= 0:
		return errors.New("token: --ttl must be positive")
	}
	tok, err := auth.Mint([]byte(secret), auth.Claims{
		Subject:  sub,
		Name:     name,
		Channels: splitList(channels),
		Publish:  splitList(publish),
	}, ttl)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// applyEnv sets each flag from FANOUT_<NAME> when that variable is set, so
// that the command line, parsed afterwards, still wins.
func applyEnv(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := "FANOUT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}
