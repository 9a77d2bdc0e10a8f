package engine

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// The browser origin check (cross-site WebSocket hijacking, CSRF): a page
// on another site must not open a WebSocket with the user's ambient
// credentials. Browsers always send Origin; other clients usually do not,
// and a request without one is not a browser's and is allowed.
//
// Two modes, chosen at New and logged there:
//
//   - configured: Config.PublicURL and Config.AllowedOrigins name the
//     origins allowed (scheme, host and port; default ports made explicit,
//     so http://x and http://x:80 are one origin). The Host header plays no
//     part: a DNS-rebinding page (Host: evil.example, Origin:
//     http://evil.example) is refused.
//   - development (neither is set): the Origin must be the request's own
//     host, and that host must be localhost or a loopback address, with
//     scheme http or https (X-Forwarded-Proto from a trusted proxy fixes
//     which). Anything else is refused, with a reason naming the flags.
//
// X-Forwarded-Host and X-Forwarded-Proto are believed only from a peer in
// Config.TrustedProxies.

// Errors of Config validation (New).
var (
	// ErrBadOrigin: an AllowedOrigins entry or the PublicURL is not
	// scheme://host[:port].
	ErrBadOrigin = errors.New("engine: bad origin")
	// ErrBadTrustedProxy: a TrustedProxies entry is neither a CIDR nor an
	// address.
	ErrBadTrustedProxy = errors.New("engine: bad trusted proxy")
)

// originSpec is one allowed origin: lower-case scheme and host, and the
// port with the scheme's default filled in (0: none known).
type originSpec struct {
	scheme, host string
	port         int
}

// originPolicy is what New made of PublicURL and AllowedOrigins.
type originPolicy struct {
	any     bool         // "*" in AllowedOrigins
	allowed []originSpec // PublicURL's origin and AllowedOrigins
	// dev: neither was configured; the Host fallback, for localhost only.
	dev bool
}

// defaultPort is the port an origin of scheme has when it names none.
func defaultPort(scheme []byte) int {
	switch {
	case bytes.EqualFold(scheme, []byte("http")), bytes.EqualFold(scheme, []byte("ws")):
		return 80
	case bytes.EqualFold(scheme, []byte("https")), bytes.EqualFold(scheme, []byte("wss")):
		return 443
	}
	return 0
}

// splitHostPort splits an authority (host[:port], [v6][:port]) into its
// host and port; port is 0 when absent. ok is false for an empty host, a
// bad port or stray characters (userinfo, path, spaces).
func splitHostPort(b []byte) (host []byte, port int, ok bool) {
	if len(b) == 0 || bytes.ContainsAny(b, "/?#@ \t\\") {
		return nil, 0, false
	}
	var rest []byte
	if b[0] == '[' {
		end := bytes.IndexByte(b, ']')
		if end < 0 {
			return nil, 0, false
		}
		host, rest = b[:end+1], b[end+1:]
	} else if i := bytes.LastIndexByte(b, ':'); i >= 0 {
		host, rest = b[:i], b[i:]
	} else {
		host = b
	}
	if len(host) == 0 || bytes.IndexByte(host[min(1, len(host)):], '[') >= 0 {
		return nil, 0, false
	}
	if len(rest) > 0 {
		if rest[0] != ':' || len(rest) == 1 || len(rest) > 6 {
			return nil, 0, false
		}
		for _, d := range rest[1:] {
			if d < '0' || d > '9' {
				return nil, 0, false
			}
			port = port*10 + int(d-'0')
		}
		if port == 0 || port > 65535 {
			return nil, 0, false
		}
	}
	return host, port, true
}

// parseOrigin splits a serialized origin, scheme "://" host [":" port]
// (RFC 6454), filling in the scheme's default port. It allocates nothing.
func parseOrigin(b []byte) (scheme, host []byte, port int, ok bool) {
	i := bytes.Index(b, []byte("://"))
	if i < 1 {
		return nil, nil, 0, false
	}
	scheme = b[:i]
	for j, ch := range scheme {
		alpha := ch|0x20 >= 'a' && ch|0x20 <= 'z'
		if !alpha && (j == 0 || !(ch >= '0' && ch <= '9' || ch == '+' || ch == '-' || ch == '.')) {
			return nil, nil, 0, false
		}
	}
	host, port, ok = splitHostPort(b[i+3:])
	if !ok {
		return nil, nil, 0, false
	}
	if port == 0 {
		port = defaultPort(scheme)
	}
	return scheme, host, port, true
}

// newOriginPolicy builds the policy from PublicURL and AllowedOrigins.
func newOriginPolicy(publicURL string, allowed []string) (originPolicy, error) {
	var p originPolicy
	if publicURL != "" {
		u, err := url.Parse(publicURL)
		if err != nil || u.Host == "" || u.User != nil {
			return p, fmt.Errorf("%w: public URL %q: want scheme://host[:port][/path]", ErrBadOrigin, publicURL)
		}
		scheme := strings.ToLower(u.Scheme)
		switch scheme { // the page is loaded over http(s), whatever the socket
		case "ws":
			scheme = "http"
		case "wss":
			scheme = "https"
		}
		spec, err := originSpecOf(scheme + "://" + u.Host)
		if err != nil {
			return p, fmt.Errorf("%w: public URL %q", ErrBadOrigin, publicURL)
		}
		p.allowed = append(p.allowed, spec)
	}
	for _, o := range allowed {
		o = strings.TrimSuffix(strings.TrimSpace(o), "/")
		switch o {
		case "":
			continue
		case "*":
			p.any = true
			continue
		}
		spec, err := originSpecOf(o)
		if err != nil {
			return p, err
		}
		p.allowed = append(p.allowed, spec)
	}
	p.dev = !p.any && len(p.allowed) == 0
	return p, nil
}

func originSpecOf(o string) (originSpec, error) {
	scheme, host, port, ok := parseOrigin([]byte(o))
	if !ok {
		return originSpec{}, fmt.Errorf("%w: %q: want scheme://host[:port]", ErrBadOrigin, o)
	}
	return originSpec{scheme: strings.ToLower(string(scheme)), host: strings.ToLower(string(host)), port: port}, nil
}

// String describes the policy for the startup log.
func (p *originPolicy) String() string {
	switch {
	case p.any:
		return "any origin (--allowed-origins *)"
	case p.dev:
		return "development: only pages on localhost (set --public-url or --allowed-origins for a deployment)"
	}
	var b strings.Builder
	for i, o := range p.allowed {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(o.scheme + "://" + o.host)
		if o.port != 0 {
			b.WriteString(":" + strconv.Itoa(o.port))
		}
	}
	return b.String()
}

// allows reports whether a browser page of origin may open a WebSocket.
// host is the authority the request was sent to (the trusted
// X-Forwarded-Host, the absolute request target, or the Host header) and
// proto the trusted X-Forwarded-Proto (nil when none): both matter only in
// development mode.
func (p *originPolicy) allows(origin, host, proto []byte) bool {
	if p.any {
		return true
	}
	scheme, oh, oport, ok := parseOrigin(origin)
	if !ok {
		return false // "null", garbage, a path: not an origin a page of ours has
	}
	if !p.dev {
		for i := range p.allowed {
			a := &p.allowed[i]
			if a.port == oport && bytes.EqualFold(scheme, []byte(a.scheme)) && bytes.EqualFold(oh, []byte(a.host)) {
				return true
			}
		}
		return false
	}
	rh, rport, ok := splitHostPort(host)
	if !ok || !isLoopbackHost(rh) || !bytes.EqualFold(oh, rh) {
		return false
	}
	if len(proto) > 0 {
		if !bytes.EqualFold(scheme, bytes.TrimSpace(proto)) {
			return false
		}
	} else if !bytes.EqualFold(scheme, []byte("http")) && !bytes.EqualFold(scheme, []byte("https")) {
		return false
	}
	if rport == 0 {
		rport = defaultPort(scheme)
	}
	return oport == rport
}

// isLoopbackHost reports whether host (as in a Host header; IPv6 in
// brackets) names this machine: localhost, *.localhost or a loopback
// address.
func isLoopbackHost(host []byte) bool {
	if bytes.EqualFold(host, []byte("localhost")) || len(host) > 10 && bytes.EqualFold(host[len(host)-10:], []byte(".localhost")) {
		return true
	}
	if len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']' {
		host = host[1 : len(host)-1]
	}
	if len(host) > 64 {
		return false
	}
	a, err := netip.ParseAddr(string(host))
	return err == nil && a.Unmap().IsLoopback()
}

// trustedProxies is Config.TrustedProxies parsed.
type trustedProxies []netip.Prefix

func parseTrustedProxies(list []string) (trustedProxies, error) {
	var t trustedProxies
	for _, e := range list {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			t = append(t, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("%w: %q: want a CIDR (10.0.0.0/8) or an address", ErrBadTrustedProxy, e)
		}
		a = a.Unmap()
		t = append(t, netip.PrefixFrom(a, a.BitLen()))
	}
	return t, nil
}

func (t trustedProxies) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr is the address a request comes from: the peer's, or, when the
// peer is a trusted proxy, the rightmost address of X-Forwarded-For that is
// not itself a trusted proxy (every proxy appends the address it got the
// request from; what is left of the first untrusted one may be forged). If
// every hop is trusted, the leftmost; if an entry does not parse, the last
// trusted hop before it.
func (t trustedProxies) clientAddr(peer netip.Addr, forwardedFor []byte) netip.Addr {
	if len(forwardedFor) == 0 || !peer.IsValid() || !t.contains(peer) {
		return peer
	}
	client := peer
	for v := forwardedFor; len(v) > 0; {
		item := v
		if i := bytes.LastIndexByte(v, ','); i >= 0 {
			item, v = v[i+1:], v[:i]
		} else {
			v = nil
		}
		a, ok := parseForwardedAddr(bytes.TrimSpace(item))
		if !ok {
			return client
		}
		client = a
		if !t.contains(a) {
			return a
		}
	}
	return client
}

// parseForwardedAddr parses one X-Forwarded-For entry: an address, or an
// address with a port (1.2.3.4:5, [::1]:5).
func parseForwardedAddr(b []byte) (netip.Addr, bool) {
	if len(b) == 0 || len(b) > 64 {
		return netip.Addr{}, false
	}
	s := string(b)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}
