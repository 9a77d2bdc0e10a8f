// Package clients owns fanout's client matrix: the WebSocket client
// programs and libraries that people actually use, each driven against a
// real engine.Server started in-process on a random loopback port. The
// package has no code of its own beyond this comment; the matrix is its
// test files and the client programs under python/ and node/.
//
// Clients (one top-level test each, see clients_test.go):
//
//	TestGorilla                 github.com/gorilla/websocket, offers permessage-deflate (no context takeover)
//	TestCoder                   github.com/coder/websocket, offers permessage-deflate (context takeover)
//	TestPythonWebsockets        Debian python3-websockets (offers permessage-deflate by default)
//	TestPythonWebsocketClient   Debian python3-websocket (websocket-client; no compression)
//	TestNodeWs                  npm ws, without and with perMessageDeflate
//	TestChromium                headless Chromium through chromedp (always offers deflate)
//	TestFirefox                 Firefox ESR through npm puppeteer-core over WebDriver BiDi
//
// Every client speaks one small line protocol, so that one scenario
// (scenario_test.go) drives them all: the Go test writes a JSON command
// ("connect", "subscribe", "publish", "recv", "send", "wait_close") and
// the client answers one JSON line with what it observed, through its own
// library: its own framing, its own msgpack codec, its own inflate. The
// external programs are python/driver.py (both Python libraries),
// node/ws_driver.js, node/browser_driver.js (injected into a page of the
// server's origin in both browsers) and node/firefox.js (the bridge from
// stdin to the Firefox page).
//
// For each client, encoding (fanout.v1.json, fanout.v1.msgpack, where the
// client has a msgpack codec) and server compression setting
// (engine.CompressionOff, engine.CompressionOn) the scenario checks:
//
//   - the subprotocol negotiated, and the Sec-WebSocket-Extensions the
//     client saw: none with CompressionOff; permessage-deflate with
//     CompressionOn exactly when the client offers it;
//   - subscribe, publish and receive its own publication back, a small
//     message and one of 256 KiB (both ways compressed when negotiated,
//     the small one under CompressionMinBytes);
//   - a fragmented publish, where the library can send one;
//   - a publication made by a Go client in the other encoding;
//   - close codes as the client library reports them: 1008 (POST
//     /api/disconnect), 1009 (a message over MaxMessageBytes) and 1012
//     with retry_after_ms (Server.Shutdown).
//
// External programs: the tests find /usr/bin/python3 with its modules,
// node with conformance/clients/node/node_modules (npm ci), chromium and
// firefox-esr. One missing skips its test with one "SKIPPED:" line (also
// appended to $FANOUT_SKIP_LOG); with FANOUT_REQUIRE_CLIENTS=1 (.ci/run) it
// fails instead. Every test logs the versions it ran with, the source of
// the README's compatibility table.
package clients
