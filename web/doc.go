// Package web owns the browser chat app that ships inside the fanout binary:
// the static files index.html, client.js and style.css, embedded with
// go:embed, and the http.Handler that serves them (Handler).
//
// The app speaks the public wire protocol (PROTOCOL.md) over /ws with the
// fanout.v1.json subprotocol, like any third-party client would. This
// package therefore knows nothing about the server's internals and must not
// import the engine, codec or hub packages (or anything else from this
// module); it depends only on the standard library. The handler serves
// exactly the embedded files, with Cache-Control: no-cache and a content
// hash ETag so that browsers revalidate cheaply (304) after every deploy.
// Besides /ws the page asks its own origin for auth.json and, for its live
// stats view, api/stats; the Content-Security-Policy lets it connect to
// nothing else.
//
// web/e2e is the Firefox driver of the end-to-end tests (a node project:
// npm ci --prefix web/e2e); engine/browser_e2e_test.go runs it. It is not
// embedded and not served.
package web
