// Package auth owns fanout's identities and permissions: it verifies the
// JSON Web Tokens a client presents (HS256 with a shared secret; RS256 and
// ES256 with public keys from a PEM file or a JWKS file, chosen by the
// token's kid), turns their claims into a connection's identity (sub, an
// optional display name) and its channel permissions (glob patterns for
// subscribing and publishing), and mints tokens for development.
//
// Verification is strict: the algorithm must be one the configured keys
// allow (a public key is never used as an HMAC secret), exp is required,
// and nbf/iat are honoured with a small leeway.
//
// It must not import engine, hub, codec or anything networking: the engine
// asks it questions, it never calls back.
package auth
