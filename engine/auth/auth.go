package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Sentinel errors. Verify wraps them; test with errors.Is.
var (
	// ErrNoToken: no token was presented.
	ErrNoToken = errors.New("auth: no token")
	// ErrInvalidToken: the token does not parse, its signature or algorithm
	// is wrong, or a required claim is missing.
	ErrInvalidToken = errors.New("auth: invalid token")
	// ErrExpired: the token's exp has passed (or its nbf is still ahead).
	ErrExpired = errors.New("auth: token expired")
	// ErrNoKeys: a Verifier was configured with no key at all.
	ErrNoKeys = errors.New("auth: no keys configured")
)

// Config configures a Verifier. At least one key source must be set.
type Config struct {
	// Secret is the HS256 shared secret. If empty, HS256 tokens are
	// refused.
	Secret []byte
	// PublicKeyFile is a PEM file of one or more public keys (RSA for
	// RS256, P-256 ECDSA for ES256), used for tokens without a kid or whose
	// kid names no JWKS key. If empty, none.
	PublicKeyFile string
	// JWKSFile is a JSON Web Key Set file (RFC 7517); a token's kid picks
	// the key, which is how keys rotate: publish the new key, start signing
	// with it, drop the old one later. Reload re-reads it. If empty, none.
	JWKSFile string
	// Leeway is the clock skew allowed on exp, nbf and iat. If zero, 5 s.
	Leeway time.Duration
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
}

// Claims is what a verified token grants a connection.
type Claims struct {
	// Subject is the token's sub: the connection's user, unspoofable.
	Subject string
	// Name is the optional display name (the info.name claim).
	Name string
	// Expires is the token's exp.
	Expires time.Time
	// Channels and Publish are glob patterns (see Match) of the channels
	// the user may subscribe to (and read history and presence of) and
	// publish to. Empty: none.
	Channels []string
	Publish  []string
}

// CanSubscribe reports whether the claims allow subscribing to ch, reading
// its history and its presence.
func (c *Claims) CanSubscribe(ch string) bool { return MatchAny(c.Channels, ch) }

// CanPublish reports whether the claims allow publishing to ch.
func (c *Claims) CanPublish(ch string) bool { return MatchAny(c.Publish, ch) }

// tokenClaims is the JSON shape of fanout's tokens.
type tokenClaims struct {
	jwt.RegisteredClaims
	Channels []string `json:"channels,omitempty"`
	Publish  []string `json:"publish,omitempty"`
	Info     *struct {
		Name string `json:"name,omitempty"`
	} `json:"info,omitempty"`
}

// keySet is the verifier's keys; replaced whole by Reload.
type keySet struct {
	byKID   map[string]crypto.PublicKey
	unnamed []crypto.PublicKey // from PublicKeyFile
}

// Verifier checks tokens. Safe for concurrent use.
type Verifier struct {
	cfg    Config
	keys   atomic.Pointer[keySet]
	parser *jwt.Parser
}

// NewVerifier loads cfg's keys.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.Secret) == 0 && cfg.PublicKeyFile == "" && cfg.JWKSFile == "" {
		return nil, ErrNoKeys
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 5 * time.Second
	}
	var methods []string
	if len(cfg.Secret) > 0 {
		methods = append(methods, "HS256")
	}
	if cfg.PublicKeyFile != "" || cfg.JWKSFile != "" {
		methods = append(methods, "RS256", "ES256")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithIssuedAt(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v := &Verifier{cfg: cfg, parser: jwt.NewParser(opts...)}
	if err := v.Reload(); err != nil {
		return nil, err
	}
	return v, nil
}

// Reload re-reads the key files (on SIGHUP, for key rotation). On error
// the previous keys stay in use.
func (v *Verifier) Reload() error {
	ks := &keySet{byKID: map[string]crypto.PublicKey{}}
	if f := v.cfg.PublicKeyFile; f != "" {
		keys, err := loadPEMKeys(f)
		if err != nil {
			return err
		}
		ks.unnamed = keys
	}
	if f := v.cfg.JWKSFile; f != "" {
		keys, err := loadJWKS(f)
		if err != nil {
			return err
		}
		ks.byKID = keys
	}
	v.keys.Store(ks)
	return nil
}

// Verify checks token and returns its claims. Errors wrap ErrNoToken,
// ErrExpired or ErrInvalidToken; their text is safe to show the client.
func (v *Verifier) Verify(token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	var tc tokenClaims
	_, err := v.parser.ParseWithClaims(token, &tc, v.keyFor)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet):
		return nil, fmt.Errorf("%w", ErrExpired)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrInvalidToken, err)
	case tc.Subject == "":
		return nil, fmt.Errorf("%w: no sub claim", ErrInvalidToken)
	}
	c := &Claims{
		Subject:  tc.Subject,
		Expires:  tc.ExpiresAt.Time,
		Channels: tc.Channels,
		Publish:  tc.Publish,
	}
	if tc.Info != nil {
		c.Name = tc.Info.Name
	}
	return c, nil
}

// keyFor picks the verification key for t by its algorithm family and kid,
// so that no key is ever used with an algorithm of another family.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if len(v.cfg.Secret) == 0 {
			return nil, errors.New("HS256 not accepted")
		}
		return v.cfg.Secret, nil
	case *jwt.SigningMethodRSA, *jwt.SigningMethodECDSA:
	default:
		return nil, fmt.Errorf("algorithm %v not accepted", t.Header["alg"])
	}
	ks := v.keys.Load()
	candidates := ks.unnamed
	if kid, _ := t.Header["kid"].(string); kid != "" {
		if k, ok := ks.byKID[kid]; ok {
			candidates = []crypto.PublicKey{k}
		} else if len(ks.unnamed) == 0 {
			return nil, fmt.Errorf("unknown kid %q", kid)
		}
	}
	var keys []jwt.VerificationKey
	for _, k := range candidates {
		switch k.(type) {
		case *rsa.PublicKey:
			if _, ok := t.Method.(*jwt.SigningMethodRSA); ok {
				keys = append(keys, k)
			}
		case *ecdsa.PublicKey:
			if _, ok := t.Method.(*jwt.SigningMethodECDSA); ok {
				keys = append(keys, k)
			}
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no key for this token")
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

func loadPEMKeys(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: public key file: %w", err)
	}
	var keys []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		var k any
		switch blk.Type {
		case "PUBLIC KEY":
			k, err = x509.ParsePKIXPublicKey(blk.Bytes)
		case "RSA PUBLIC KEY":
			k, err = x509.ParsePKCS1PublicKey(blk.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(blk.Bytes); err == nil {
				k = cert.PublicKey
			}
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("auth: %s: %w", path, err)
		}
		switch k.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			keys = append(keys, k)
		default:
			return nil, fmt.Errorf("auth: %s: unsupported key type %T (RSA or ECDSA)", path, k)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth: %s: no PEM public key", path)
	}
	return keys, nil
}

// jwk is the subset of RFC 7517/7518 that RS256 and ES256 keys use.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func loadJWKS(path string) (map[string]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS file: %w", err)
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("auth: %s: %w", path, err)
	}
	keys := make(map[string]crypto.PublicKey, len(set.Keys))
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Kid == "" {
			return nil, fmt.Errorf("auth: %s: key %d has no kid", path, i)
		}
		pk, err := k.publicKey()
		if err != nil {
			return nil, fmt.Errorf("auth: %s: key %q: %w", path, k.Kid, err)
		}
		keys[k.Kid] = pk
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth: %s: no signing key", path)
	}
	return keys, nil
}

func (k jwk) publicKey() (crypto.PublicKey, error) {
	dec := func(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
	switch k.Kty {
	case "RSA":
		n, err := dec(k.N)
		if err != nil {
			return nil, fmt.Errorf("n: %w", err)
		}
		e, err := dec(k.E)
		if err != nil {
			return nil, fmt.Errorf("e: %w", err)
		}
		if len(e) == 0 || len(e) > 4 || len(n) < 256 {
			return nil, errors.New("RSA key too small or exponent invalid")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, fmt.Errorf("curve %q (ES256 needs P-256)", k.Crv)
		}
		x, err := dec(k.X)
		if err != nil {
			return nil, fmt.Errorf("x: %w", err)
		}
		y, err := dec(k.Y)
		if err != nil {
			return nil, fmt.Errorf("y: %w", err)
		}
		// Validate the point through crypto/ecdh-backed parsing.
		raw := append([]byte{4}, append(leftPad(x, 32), leftPad(y, 32)...)...)
		pub, err := x509.ParsePKIXPublicKey(pkixP256(raw))
		if err != nil {
			return nil, fmt.Errorf("point not on P-256: %w", err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("kty %q not supported (RSA or EC)", k.Kty)
}

func leftPad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	return append(make([]byte, n-len(b)), b...)
}

// pkixP256 wraps an uncompressed P-256 point in a SubjectPublicKeyInfo, so
// x509 validates it (elliptic's own constructors are deprecated).
func pkixP256(point []byte) []byte {
	// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING point }
	prefix := []byte{0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00}
	return append(prefix, point...)
}

// Mint signs an HS256 token for development and tests: sub, exp (now+ttl),
// channels and publish globs, and an optional display name.
func Mint(secret []byte, c Claims, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("auth: empty secret")
	}
	now := time.Now()
	tc := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   c.Subject,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		Channels: c.Channels,
		Publish:  c.Publish,
	}
	if c.Name != "" {
		tc.Info = &struct {
			Name string `json:"name,omitempty"`
		}{c.Name}
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, tc).SignedString(secret)
}
