package engine

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/fanout-dev/fanout/codec"
	"github.com/fanout-dev/fanout/engine/auth"
	"github.com/fanout-dev/fanout/engine/wsframe"
	"github.com/gobwas/ws"
)

// Authentication (docs/PROTOCOL.md, "Authentication").
//
// Without token keys (Config.TokenSecret, TokenPublicKeyFile, TokenJWKSFile)
// nothing is checked: Conn.authn stays nil, which every permission check
// reads as "everything open" (PROTOCOL.md's local default).
//
// With keys, the upgrade request decides (authenticate):
//
//	token in Authorization: Bearer or ?token=   valid: upgraded as its sub;
//	                                            bad or expired: 401
//	no token, no Origin (not a browser)         AllowAnonymous: anonymous;
//	                                            else 401
//	no token, Origin (a browser, which cannot   upgraded, pending: only the
//	set headers; the origin is checked first)   connect op is served until it
//	                                            succeeds, within HandshakeTimeout
//	                                            (else close 1008); with
//	                                            AllowAnonymous, connect may
//	                                            give only a name
//
// A pending connection gets no connected push at the upgrade; a successful
// connect answers {"id","ok":true,"client","user"} and then sends it.
//
// A token's deadlines live in the sweeper's wheel like every other
// deadline (checkAuth): the refresh push at refreshAt, close 1008 "token
// expired" at exp. No timer per connection.

// maxTokenBytes bounds a token: longer ones are refused before parsing.
const maxTokenBytes = 8 << 10

// maxNameBytes bounds the display name an anonymous client gives.
const maxNameBytes = 128

// refreshLeadMax caps how long before exp the refresh push is sent. It is
// a tenth of the token's remaining life, but at least two sweeper ticks
// (so that the push and the expiry never fall in the same tick) unless
// that is more than half the remaining life.
const refreshLeadMax = 30 * time.Second

// Reasons for closing, for authentication.
var (
	errAuthRequired = &CloseError{ClosePolicy, "authentication required"}
	errTokenExpired = &CloseError{ClosePolicy, "token expired"}
	errDisconnected = &CloseError{ClosePolicy, "disconnected by the server"}
)

// wwwAuthenticate is sent with every 401 (RFC 6750).
const (
	wwwAuthenticate        = "WWW-Authenticate: Bearer realm=\"fanout\"\r\n"
	wwwAuthenticateInvalid = "WWW-Authenticate: Bearer realm=\"fanout\", error=\"invalid_token\"\r\n"
)

// Upgrade refusals of authentication (401).
var (
	errTokenRequired = ws.RejectConnectionError(
		ws.RejectionStatus(401),
		ws.RejectionReason("token required: send Authorization: Bearer <jwt> or the token query parameter"),
		ws.RejectionHeader(ws.HandshakeHeaderString(wwwAuthenticate)),
	)
	errTokenExpiredReject = ws.RejectConnectionError(
		ws.RejectionStatus(401),
		ws.RejectionReason("token expired"),
		ws.RejectionHeader(ws.HandshakeHeaderString(wwwAuthenticateInvalid)),
	)
)

// errTokenTooLong is wrapped like auth's errors: an invalid token.
var errTokenTooLong = fmt.Errorf("%w: longer than %d bytes", auth.ErrInvalidToken, maxTokenBytes)

// connAuth is who a connection is and what it may do. It is immutable
// once stored in Conn.authn (a refresh stores a new one), except
// refreshSent.
type connAuth struct {
	// user is the token's sub ("" for anonymous connections).
	user string
	// name is the token's info.name ("" when it has none).
	name string
	// channels and publish are the glob patterns of the channels the
	// connection may subscribe to (and read history and presence of), and
	// publish to.
	channels, publish []string
	// exp and refreshAt (server clock, unix nanoseconds) are when the
	// token expires and when the refresh push is due; 0 without a token.
	exp, refreshAt int64
	// refreshSent is set once the refresh push for this token went out.
	refreshSent atomic.Bool
}

func (a *connAuth) canSubscribe(ch []byte) bool { return auth.MatchAny(a.channels, bytesView(ch)) }
func (a *connAuth) canPublish(ch []byte) bool   { return auth.MatchAny(a.publish, bytesView(ch)) }

// bytesView is b as a string without a copy, for calls that do not keep
// it.
func bytesView(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// authenticator is the server's authentication state.
type authenticator struct {
	// verifier checks tokens; nil when no token keys are configured.
	verifier *auth.Verifier
	// anonymous is the identity of every anonymous connection when keys
	// are configured; pending that of a connection waiting for connect
	// (it may do nothing).
	anonymous, pending *connAuth
	// devSecret signs dev tokens (DevTokens); nil without.
	devSecret []byte
	// minLead is the shortest time between the refresh push and the
	// expiry: two sweeper ticks.
	minLead int64
	// users holds the publish byte buckets of authenticated users.
	users userLimiter
	// Counters for /metrics: publishes refused by the byte rate, upgrades
	// and connects refused for their token.
	publishLimited atomic.Uint64
	refused        atomic.Uint64
}

// newAuthenticator loads the token keys of s.cfg (already defaulted).
func newAuthenticator(s *Server) (*authenticator, error) {
	cfg := &s.cfg
	a := &authenticator{minLead: 2 * s.sweepInterval().Nanoseconds()}
	a.users.init()
	secret := []byte(cfg.TokenSecret)
	if cfg.DevTokens {
		if len(secret) == 0 {
			secret = make([]byte, 32)
			_, _ = rand.Read(secret)
			cfg.Logger.Warn("dev tokens: no --token-secret given, so a random one signs them (tokens do not survive a restart)")
		}
		a.devSecret = secret
		cfg.Logger.Warn("DEVELOPMENT ONLY: --dev-tokens is set: GET /api/dev-token mints a token for any name to anyone who asks; never use it in production",
			"channels", cfg.DevTokenChannels, "publish", cfg.DevTokenPublish, "ttl", cfg.DevTokenTTL)
	}
	if len(secret) == 0 && cfg.TokenPublicKeyFile == "" && cfg.TokenJWKSFile == "" {
		if cfg.AllowAnonymous || len(cfg.AnonymousChannels) > 0 || len(cfg.AnonymousPublish) > 0 {
			cfg.Logger.Warn("anonymous access settings ignored: no token keys are configured, so every connection is anonymous with every channel open")
		}
		return a, nil
	}
	v, err := auth.NewVerifier(auth.Config{
		Secret:        secret,
		PublicKeyFile: cfg.TokenPublicKeyFile,
		JWKSFile:      cfg.TokenJWKSFile,
	})
	if err != nil {
		return nil, fmt.Errorf("engine: token keys: %w", err)
	}
	a.verifier = v
	a.pending = &connAuth{}
	a.anonymous = &connAuth{channels: cfg.AnonymousChannels, publish: cfg.AnonymousPublish}
	return a, nil
}

// required reports whether tokens are checked at all.
func (a *authenticator) required() bool { return a.verifier != nil }

// ReloadKeys reads the token key files (TokenPublicKeyFile, TokenJWKSFile)
// again, for key rotation (the command's SIGHUP). On error the keys in use
// stay and the error is logged and returned. Without token keys it does
// nothing.
func (s *Server) ReloadKeys() error {
	if s.authn == nil || s.authn.verifier == nil {
		return nil
	}
	if err := s.authn.verifier.Reload(); err != nil {
		s.log.Error("token key reload failed; keeping the previous keys", "err", err)
		return fmt.Errorf("engine: token keys: %w", err)
	}
	s.log.Info("token keys reloaded")
	return nil
}

// verify checks token at server time nowNs and returns the identity it
// grants. A token whose exp has passed is expired here even within the
// verifier's clock-skew leeway: the connection would be closed at once.
func (a *authenticator) verify(token string, nowNs int64) (*connAuth, error) {
	if len(token) > maxTokenBytes {
		return nil, errTokenTooLong
	}
	cl, err := a.verifier.Verify(token)
	if err != nil {
		return nil, err
	}
	exp := cl.Expires.UnixNano()
	if exp <= nowNs {
		return nil, auth.ErrExpired
	}
	life := exp - nowNs
	lead := max(min(refreshLeadMax.Nanoseconds(), life/10), min(a.minLead, life/2))
	return &connAuth{
		user:      cl.Subject,
		name:      cl.Name,
		channels:  cl.Channels,
		publish:   cl.Publish,
		exp:       exp,
		refreshAt: exp - lead,
	}, nil
}

// tokenErrorText is what a client is told about a refused token.
func tokenErrorText(err error) string {
	switch {
	case errors.Is(err, auth.ErrExpired):
		return "token expired"
	case errors.Is(err, auth.ErrNoToken):
		return "token required"
	}
	return err.Error()
}

// authenticate establishes who is upgrading, once every header was read
// (see the table at the top of this file). Without token keys there is
// nothing to check.
func (s *Server) authenticate(u *upgradeState) (ws.HandshakeHeader, error) {
	a := s.authn
	if !a.required() {
		return nil, nil
	}
	c := u.c
	token, ok := upgradeToken(u)
	if !ok {
		switch {
		case len(u.origin) > 0 && !s.cfg.Echo:
			// A browser: it may authenticate with connect.
			by := s.now() + s.cfg.HandshakeTimeout.Nanoseconds()
			c.authn.Store(a.pending)
			c.connectBy.Store(by)
			s.wheel.scheduleBy(c, by)
			return nil, nil
		case s.cfg.AllowAnonymous:
			c.authn.Store(a.anonymous)
			return nil, nil
		}
		a.refused.Add(1)
		return nil, errTokenRequired
	}
	ca, err := a.verify(token, s.now())
	if err != nil {
		a.refused.Add(1)
		if errors.Is(err, auth.ErrExpired) {
			return nil, errTokenExpiredReject
		}
		return nil, ws.RejectConnectionError(
			ws.RejectionStatus(401),
			ws.RejectionReason(tokenErrorText(err)),
			ws.RejectionHeader(ws.HandshakeHeaderString(wwwAuthenticateInvalid)),
		)
	}
	s.setIdentity(c, ca)
	return nil, nil
}

// upgradeToken returns the token of an upgrade request: the Authorization
// header's Bearer credentials, else the token query parameter. An
// Authorization header of another scheme (a site behind HTTP Basic auth,
// whose browser sends it along) is not a token.
func upgradeToken(u *upgradeState) (string, bool) {
	if v := u.authorization; len(v) > 7 && bytes.EqualFold(v[:7], []byte("Bearer ")) {
		if t := bytes.TrimSpace(v[7:]); len(t) > 0 {
			return string(t), true
		}
	}
	q := u.uri
	if i := bytes.IndexByte(q, '?'); i >= 0 {
		q = q[i+1:]
	} else {
		return "", false
	}
	if i := bytes.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	for len(q) > 0 {
		var kv []byte
		if i := bytes.IndexByte(q, '&'); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			kv, q = q, nil
		}
		v, found := bytes.CutPrefix(kv, []byte("token="))
		if !found || len(v) == 0 {
			continue
		}
		t := string(v)
		if bytes.ContainsAny(v, "%+") {
			var err error
			if t, err = url.QueryUnescape(t); err != nil {
				return "", true // present but unreadable: refused as invalid
			}
		}
		return t, true
	}
	return "", false
}

// setIdentity makes ca the connection's identity: its user and name in
// every info it sends from now on, its permissions, and its token's
// deadlines in the wheel. Reader only.
func (s *Server) setIdentity(c *Conn, ca *connAuth) {
	c.info.User, c.info.Name = ca.user, ca.name
	c.authn.Store(ca)
	if ca.exp != 0 {
		s.wheel.scheduleBy(c, ca.refreshAt)
	}
}

// pending reports whether c still has to send connect.
func (c *Conn) pending() bool { return c.connectBy.Load() != 0 }

// connect serves {"op":"connect","token":T} (or, with AllowAnonymous,
// {"op":"connect","name":N}) on a connection that upgraded without a
// token: the reply carries the identity, then the connected push follows.
func (s *Server) connect(c *Conn, cmd *codec.Command) {
	if !c.pending() {
		s.replyError(c, cmd, codec.CodeBadRequest, "already connected")
		return
	}
	var ca *connAuth
	if len(cmd.Token) == 0 {
		if !s.cfg.AllowAnonymous {
			s.authn.refused.Add(1)
			s.replyError(c, cmd, codec.CodeUnauthorized, "token required")
			return
		}
		if !s.applyName(c, cmd) {
			return
		}
		ca = s.authn.anonymous
		c.authn.Store(ca)
	} else {
		var err error
		if ca, err = s.authn.verify(string(cmd.Token), s.now()); err != nil {
			s.authn.refused.Add(1)
			s.replyError(c, cmd, codec.CodeUnauthorized, tokenErrorText(err))
			return
		}
		s.setIdentity(c, ca)
	}
	c.connectBy.Store(0)
	connected := wsframe.Get()
	connected.B = codec.AppendConnected(connected.B, c.enc, c.info)
	connected.Finish(c.dataOpCode())
	if !cmd.HasID {
		c.Send(connected)
		return
	}
	reply := wsframe.Get()
	reply.B = codec.AppendConnectOK(reply.B, c.enc, cmd.ID, c.info)
	reply.Finish(c.dataOpCode())
	c.SendBatch([]*wsframe.Frame{reply, connected})
}

// refresh serves {"op":"refresh","token":T}: a token of the same user
// replaces the connection's, with its permissions (for the commands that
// follow; subscriptions made are kept) and its expiry.
func (s *Server) refresh(c *Conn, cmd *codec.Command) {
	if !s.authn.required() {
		s.replyError(c, cmd, codec.CodeBadRequest, "this server does not use tokens")
		return
	}
	cur := c.authn.Load()
	if cur == nil || cur.user == "" {
		s.replyError(c, cmd, codec.CodeBadRequest, "refresh needs a connection authenticated by a token")
		return
	}
	ca, err := s.authn.verify(string(cmd.Token), s.now())
	if err != nil {
		s.authn.refused.Add(1)
		s.replyError(c, cmd, codec.CodeUnauthorized, tokenErrorText(err))
		return
	}
	if ca.user != cur.user {
		s.replyError(c, cmd, codec.CodeForbidden, "token is for another user")
		return
	}
	s.setIdentity(c, ca)
	s.replyOK(c, cmd)
}

// applyName sets the display name an anonymous connection gives in connect
// or subscribe. A name may change only while the connection has no
// subscription (the presence entries made carry the name they were made
// with). The token's name of an authenticated connection wins: a name in a
// command is ignored there. It returns false after an error reply.
func (s *Server) applyName(c *Conn, cmd *codec.Command) bool {
	if len(cmd.Name) == 0 || c.info.User != "" || bytesView(cmd.Name) == c.info.Name {
		return true
	}
	if !validName(cmd.Name) {
		s.replyError(c, cmd, codec.CodeBadRequest, "name must be 1-128 bytes of UTF-8 text without control characters")
		return false
	}
	if len(c.subs) > 0 {
		s.replyError(c, cmd, codec.CodeBadRequest, "name differs from the connection's, which can change only while it has no subscriptions")
		return false
	}
	c.info.Name = string(cmd.Name)
	return true
}

// validName: 1 to maxNameBytes bytes of UTF-8 without control characters.
func validName(b []byte) bool {
	if len(b) == 0 || len(b) > maxNameBytes || !utf8.Valid(b) {
		return false
	}
	for _, r := range bytesView(b) {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) || r == '\u2028' || r == '\u2029' {
			return false
		}
	}
	return true
}

// checkAuth enforces the connection's authentication deadlines for the
// sweeper (checkConn), with its due: close 1008 a connection that did not
// connect in time, push refresh when the token is about to expire, close
// 1008 "token expired" once it has.
func (s *Server) checkAuth(c *Conn, due func(at int64) bool) {
	if by := c.connectBy.Load(); by != 0 {
		if due(by) {
			c.CloseWith(errAuthRequired)
		}
		return
	}
	a := c.authn.Load()
	if a == nil || a.exp == 0 {
		return
	}
	if due(a.exp) {
		if c.authn.Load() == a { // not refreshed meanwhile
			c.CloseWith(errTokenExpired)
		}
		return
	}
	if !a.refreshSent.Load() && !s.cfg.Echo && due(a.refreshAt) { // Echo speaks no protocol
		a.refreshSent.Store(true)
		f := wsframe.Get()
		f.B = codec.AppendRefresh(f.B, c.enc)
		c.sendData(f.Finish(c.dataOpCode()))
	}
}

// allowPublish takes n bytes from the publisher's byte bucket: the user's
// (shared by its connections) for an authenticated connection, the
// connection's own otherwise. Reader only.
func (s *Server) allowPublish(c *Conn, n int) bool {
	rate := s.cfg.PublishBytesPerSecond
	if rate < 0 {
		return true
	}
	// Nanoseconds per byte, and the backlog a full bucket absorbs, clamped
	// so that no sum below overflows.
	const maxNs = math.MaxInt64 / 4
	nsPerByte := float64(time.Second) / float64(max(rate, 1))
	cost := int64(min(float64(n)*nsPerByte, maxNs))
	tolerance := int64(min(float64(s.cfg.PublishBurstBytes)*nsPerByte, maxNs))
	now := c.lastRead // this read's time (noteRead): no clock read per publish
	if c.info.User != "" {
		return s.authn.users.allow(c.info.User, cost, tolerance, now)
	}
	tat := max(c.pubTAT, now) + cost
	if tat-now > tolerance {
		return false
	}
	c.pubTAT = tat
	return true
}

// userLimiter holds the publish byte buckets of users, as GCRA: the
// monotime at which a user's bucket is full again. A full bucket is the
// same as none, so entries whose time has passed are dropped: each shard
// sweeps itself when it has doubled since its last sweep, which keeps the
// map proportional to the users who published lately, at O(1) amortized.
type userLimiter struct {
	seed   maphash.Seed
	shards [32]userShard
}

type userShard struct {
	mu      sync.Mutex
	tat     map[string]int64
	sweepAt int
	_       [40]byte // keep shards on separate cache lines
}

// userShardSweepMin is the smallest map size at which a shard sweeps.
const userShardSweepMin = 64

func (l *userLimiter) init() {
	l.seed = maphash.MakeSeed()
	for i := range l.shards {
		l.shards[i].tat = make(map[string]int64)
		l.shards[i].sweepAt = userShardSweepMin
	}
}

// allow takes cost nanoseconds' worth of bytes from user's bucket, which
// holds at most tolerance; false leaves the bucket as it was.
func (l *userLimiter) allow(user string, cost, tolerance, now int64) bool {
	sh := &l.shards[maphash.String(l.seed, user)%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	tat := max(sh.tat[user], now) + cost
	if tat-now > tolerance {
		return false
	}
	sh.tat[user] = tat
	if len(sh.tat) >= sh.sweepAt {
		for u, t := range sh.tat {
			if t <= now {
				delete(sh.tat, u)
			}
		}
		sh.sweepAt = max(userShardSweepMin, 2*len(sh.tat))
	}
	return true
}

// len is the number of users holding a bucket (tests).
func (l *userLimiter) len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.tat)
		sh.mu.Unlock()
	}
	return n
}

// disconnectUser closes every open connection of user on this node with
// reason and returns how many it closed. It walks the registry instead of
// keeping a user index: disconnects are rare (a backend revoking access),
// a walk costs a pointer copy and an atomic load per connection (about a
// millisecond per 100k), and an index would cost every authentication and
// every close a sharded map update and the close path a hook.
func (s *Server) disconnectUser(user string, reason *CloseError) int {
	n := 0
	var batch []*Conn
	for i := range s.registry.shards {
		batch = s.registry.shards[i].snapshot(batch[:0])
		for _, c := range batch {
			if a := c.authn.Load(); a != nil && a.user == user && c.state.Load() == stateOpen {
				c.CloseWith(reason)
				n++
			}
		}
		clear(batch)
	}
	return n
}
