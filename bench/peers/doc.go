// Package peers holds third-party WebSocket servers used as side-by-side
// benchmark peers for fanout: ./gorilla, ./gws and ./nbio are each a main
// package speaking the same raw protocol (see README.md). This root package
// only carries the end-to-end test that builds and exercises all three.
//
// It is its own Go module so that the main fanout module does not depend on
// the peers' libraries.
package peers
