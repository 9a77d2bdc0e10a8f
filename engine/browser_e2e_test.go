package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The two-page scenario of the web app, run in Chromium (chromedp) and in
// Firefox (puppeteer-core over WebDriver BiDi, web/e2e/driver.js). The
// scenario is written once, against e2ePage; each browser only supplies
// pages that evaluate JavaScript.

// e2ePage is one tab of a real browser showing the app.
type e2ePage interface {
	// eval awaits the expression in the page and returns its value as JSON.
	eval(expr string) ([]byte, error)
}

// evalTimeout bounds one evaluation (a busy 2-core machine runs two
// browsers and the server).
const evalTimeout = 20 * time.Second

// jsValue evaluates expr in p and decodes its value into T.
func jsValue[T any](t *testing.T, p e2ePage, expr string) T {
	t.Helper()
	var v T
	b, err := p.eval(expr)
	if err != nil {
		t.Fatalf("eval %s: %v", abbrev(expr), err)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("eval %s: %s: %v", abbrev(expr), abbrev(string(b)), err)
	}
	return v
}

// jsWait polls a boolean expression in p until it is true.
func jsWait(t *testing.T, p e2ePage, what, expr string) {
	t.Helper()
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		b, err := p.eval("Boolean(" + expr + ")")
		if err != nil {
			return fmt.Errorf("%s: %v", what, err)
		}
		if string(b) != "true" {
			return fmt.Errorf("%s: still false (%s)", what, abbrev(expr))
		}
		return nil
	})
}

func abbrev(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// chromePage is a Chromium tab driven by chromedp.
type chromePage struct{ tab context.Context }

func (p chromePage) eval(expr string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(p.tab, evalTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		"(async () => JSON.stringify(await ("+expr+")))()", chromedp.EvalAwaitPromise))
	return []byte(s), err
}

// TestBrowserTwoPagesChromium runs the two-page scenario in headless
// Chromium.
func TestBrowserTwoPagesChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	newTab := newBrowser(t)
	twoPageScenario(t, func(url string) e2ePage {
		tab := newTab()
		// The first Run creates the tab: run it on the tab's own context.
		if _, err := chromedp.Run(tab, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		return chromePage{tab}
	})
}

// TestBrowserTwoPagesFirefox runs the two-page scenario in headless Firefox
// (ESR), driven over WebDriver BiDi by web/e2e/driver.js.
func TestBrowserTwoPagesFirefox(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	firefox, driver := firefoxDriverPaths(t)
	var d *nodeDriver
	twoPageScenario(t, func(url string) e2ePage {
		if d == nil {
			d = startNodeDriver(t, driver, firefox, url)
		}
		var r struct {
			Page int `json:"page"`
		}
		if err := d.call(map[string]any{"op": "open", "url": url}, &r); err != nil {
			t.Fatalf("open %s in Firefox: %v", url, err)
		}
		return firefoxPage{d, r.Page}
	})
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
}

// firefoxDriverPaths finds Firefox, node and the installed driver; without
// one of them the test fails under FANOUT_REQUIRE_BROWSER and is skipped
// loudly otherwise.
func firefoxDriverPaths(t *testing.T) (firefox, driver string) {
	t.Helper()
	var missing []string
	names := []string{"firefox-esr", "firefox"}
	if env := os.Getenv("FIREFOX"); env != "" {
		names = []string{env}
	}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			firefox = p
			break
		}
	}
	if firefox == "" {
		missing = append(missing, "Firefox (firefox-esr or firefox on PATH, or $FIREFOX; apt-get install firefox-esr)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node (apt-get install nodejs npm)")
	}
	driver, _ = filepath.Abs(filepath.Join("..", "web", "e2e", "driver.js"))
	if _, err := os.Stat(filepath.Join(filepath.Dir(driver), "node_modules", "puppeteer-core", "package.json")); err != nil {
		missing = append(missing, "web/e2e's node modules (npm ci --prefix web/e2e)")
	}
	if len(missing) == 0 {
		return firefox, driver
	}
	reason := "missing " + strings.Join(missing, ", ")
	if os.Getenv("FANOUT_REQUIRE_BROWSER") != "" {
		t.Fatalf("%s, and FANOUT_REQUIRE_BROWSER is set", reason)
	}
	skipLoudly(t, reason+", so the Firefox end-to-end test did not run; install them, or set FANOUT_REQUIRE_BROWSER=1 to fail instead")
	return "", ""
}

// nodeDriver is a running web/e2e/driver.js: one JSON command per line on
// its stdin, one JSON answer per line on its stdout.
type nodeDriver struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan []byte
	stderr *lockedBuffer
	mu     sync.Mutex
	id     int
	closed bool
	pid    int           // the browser's process, for the cleanup of last resort
	done   chan struct{} // closed once the driver has exited
	exit   error         // cmd.Wait's result, set before done closes
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startNodeDriver(t *testing.T, driver, firefox, base string) *nodeDriver {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "node", driver, base, firefox)
	// Its own process group, asked to close the browser first (SIGTERM),
	// killed outright if it has not within WaitDelay.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	tmp := t.TempDir()
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HOME="+tmp, "MOZ_CRASHREPORTER_DISABLE=1")
	d := &nodeDriver{t: t, cmd: cmd, lines: make(chan []byte, 16), stderr: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stderr = d.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if d.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			d.lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(d.lines)
		d.exit = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		_ = d.stdin.Close() // the driver closes the browser and exits
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			cancel()
			<-d.done
		}
		cancel()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // anything left in its group
		if d.pid > 0 {
			// puppeteer starts the browser in a process group of its own.
			_ = syscall.Kill(-d.pid, syscall.SIGKILL)
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
		}
		if t.Failed() {
			t.Logf("driver stderr:\n%s", d.stderr.String())
		}
	})
	var ready struct {
		Ready   bool   `json:"ready"`
		Version string `json:"version"`
		PID     int    `json:"pid"`
	}
	if err := d.read(60*time.Second, &ready); err != nil || !ready.Ready {
		t.Fatalf("Firefox driver did not start: %v\n%s", err, d.stderr.String())
	}
	d.pid = ready.PID
	t.Logf("driving %s (pid %d)", ready.Version, ready.PID)
	return d
}

// read decodes the driver's next line into v.
func (d *nodeDriver) read(timeout time.Duration, v any) error {
	select {
	case line, ok := <-d.lines:
		if !ok {
			return fmt.Errorf("driver exited: %s", d.stderr.String())
		}
		return json.Unmarshal(line, v)
	case <-time.After(timeout):
		return fmt.Errorf("no answer from the driver in %v", timeout)
	}
}

// call sends one command and decodes the answer's fields into v.
func (d *nodeDriver) call(cmd map[string]any, v any) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("driver closed")
	}
	d.id++
	cmd["id"] = d.id
	b, _ := json.Marshal(cmd)
	if _, err := d.stdin.Write(append(b, '\n')); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := d.read(evalTimeout+5*time.Second, &raw); err != nil {
		return err
	}
	var head struct {
		ID    int    `json:"id"`
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return err
	}
	if head.ID != d.id {
		return fmt.Errorf("answer %s to command %d", raw, d.id)
	}
	if !head.OK {
		return errors.New(head.Error)
	}
	if v != nil {
		return json.Unmarshal(raw, v)
	}
	return nil
}

// close asks the driver to close the browser and checks that it exited 0.
func (d *nodeDriver) close() error {
	if err := d.call(map[string]any{"op": "close"}, nil); err != nil {
		return err
	}
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	_ = d.stdin.Close()
	go func() { // drain what else it prints
		for range d.lines {
		}
	}()
	select {
	case <-d.done:
		if d.exit != nil {
			return fmt.Errorf("driver exit: %v\n%s", d.exit, d.stderr.String())
		}
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("driver did not exit after close")
	}
}

// firefoxPage is a Firefox tab of a nodeDriver.
type firefoxPage struct {
	d    *nodeDriver
	page int
}

func (p firefoxPage) eval(expr string) ([]byte, error) {
	var r struct {
		Value string `json:"value"`
	}
	if err := p.d.call(map[string]any{"op": "eval", "page": p.page, "expr": expr}, &r); err != nil {
		return nil, err
	}
	return []byte(r.Value), nil
}

// twoPageScenario: two people chat in one room, each in a page of the
// browser that open gives; the server restarts and cuts one connection.
func twoPageScenario(t *testing.T, open func(url string) e2ePage) {
	cfg := Config{RetryAfterMin: 150 * time.Millisecond, RetryAfterSpread: time.Millisecond}
	srv := startServer(t, cfg)
	addr := srv.Addr().String()
	url := "http://" + addr + "/"
	const room = "e2e"
	nameA := "Ada \u202Eexe.txt" // a right-to-left override in a name
	nameB := "Bob"
	sortedNames := jsString(strings.Join(sortStrings(nameA, nameB), "\n"))
	bothPresent := `fanoutApp.presenceNames.slice().sort().join("\n") === ` + sortedNames +
		` && document.querySelectorAll("#presence .anon").length === 0`

	openJoined := func(name string) e2ePage {
		p := open(url)
		jsWait(t, p, "app online", `window.fanoutApp && fanoutApp.state === "online"`)
		jsValue[bool](t, p, fmt.Sprintf(`fanoutApp.join(%s, %q).then(() => true)`, jsString(name), room))
		jsWait(t, p, "subscribed", `fanoutApp.subscribed`)
		return p
	}
	a := openJoined(nameA)
	b := openJoined(nameB)

	// Each sees the other in presence by name (not by id label).
	jsWait(t, a, "A sees both names", bothPresent)
	jsWait(t, b, "B sees both names", bothPresent)
	// Names are isolated: <bdi>, unicode-bidi isolate.
	iso := jsValue[[]string](t, b, `[...document.querySelectorAll("#presence .person-name")].map(e => e.tagName + " " + getComputedStyle(e).unicodeBidi)`)
	for _, s := range iso {
		if s != "BDI isolate" {
			t.Fatalf("presence names are not isolated: %v", iso)
		}
	}

	// The page may connect to its own origin only: another origin (same
	// server, other host name) is refused by the CSP.
	otherOrigin := "ws://localhost:" + addr[strings.LastIndex(addr, ":")+1:] + "/ws"
	verdict := jsValue[string](t, a, `new Promise((resolve) => {
		document.addEventListener("securitypolicyviolation", (e) => {
			if ((e.effectiveDirective || e.violatedDirective).startsWith("connect-src")) resolve("blocked");
		});
		try {
			const ws = new WebSocket(`+jsString(otherOrigin)+`, "fanout.v1.json");
			ws.onopen = () => resolve("connected");
		} catch (err) {
			resolve("blocked");
		}
		setTimeout(() => resolve("no violation"), 10000);
	})`)
	if verdict != "blocked" {
		t.Fatalf("a WebSocket to %s from the page: %s, want blocked by connect-src", otherOrigin, verdict)
	}

	// A types hostile text into the message box; B shows it as text.
	hostile := `<img src=x onerror="window.__pwned=1"> ` + "\u202E" + `gnp.exe <b>x</b> ` + strings.Repeat("W", 1500)
	jsValue[bool](t, a, `(() => {
		const m = document.getElementById("message");
		m.value = `+jsString(hostile)+`;
		document.getElementById("send").click();
		return true;
	})()`)
	lastText := `[...document.querySelectorAll("#messages .msg")].pop()`
	jsWait(t, b, "B shows the hostile message", `fanoutApp.messages.some(m => m.text === `+jsString(hostile)+`)`)
	type shown struct {
		Text, Author, AuthorTag, AuthorBidi, TextBidi, TextDir string
		Children, Imgs, Bolds                                  int
		Pwned                                                  bool
		Overflow                                               int
	}
	got := jsValue[shown](t, b, `(() => {
		const li = `+lastText+`;
		const text = li.querySelector(".text"), author = li.querySelector(".author");
		const sc = document.getElementById("scroller");
		return {
			Text: text.textContent, Author: author.textContent, AuthorTag: author.tagName,
			AuthorBidi: getComputedStyle(author).unicodeBidi, TextBidi: getComputedStyle(text).unicodeBidi,
			TextDir: text.dir, Children: text.childElementCount,
			Imgs: document.querySelectorAll("img").length, Bolds: document.querySelectorAll("#messages b").length,
			Pwned: window.__pwned !== undefined, Overflow: sc.scrollWidth - sc.clientWidth,
		};
	})()`)
	want := shown{Text: hostile, Author: nameA, AuthorTag: "BDI", AuthorBidi: "isolate", TextBidi: "isolate", TextDir: "auto"}
	if got.Overflow > 1 { // the very long word wraps instead of widening the page
		t.Errorf("the long word overflows the message list by %d px", got.Overflow)
	}
	got.Overflow = 0
	if got != want {
		t.Fatalf("hostile message shown as %+v\nwant %+v", got, want)
	}

	// The server restarts (1012 with retry_after_ms): both pages come back
	// with new client ids and are shown by name before anyone speaks again.
	oldA, oldB := jsValue[string](t, a, `fanoutApp.clientId`), jsValue[string](t, b, `fanoutApp.clientId`)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	cancel()
	cfg.Addr = addr
	srv = startServer(t, cfg)
	for _, p := range []struct {
		page e2ePage
		old  string
	}{{a, oldA}, {b, oldB}} {
		jsWait(t, p.page, "back after the restart", `fanoutApp.state === "online" && fanoutApp.subscribed && fanoutApp.clientId !== `+jsString(p.old))
	}
	jsWait(t, a, "A sees both names after the restart", bothPresent)
	jsWait(t, b, "B sees both names after the restart", bothPresent)
	jsValue[float64](t, b, `fanoutApp.send("after restart")`)
	jsWait(t, a, "A shows B's message by name", lastText+`?.querySelector(".text").textContent === "after restart"`)
	if author := jsValue[string](t, a, lastText+`.querySelector(".author").textContent`); author != nameB {
		t.Fatalf("B's message after the restart is shown by %q, want %q", author, nameB)
	}

	// B's connection is cut by the server (no close frame). B is held off
	// until A has published three messages, then recovers them: once each,
	// in order, without reporting a gap.
	noticesBefore := jsValue[int](t, b, `fanoutApp.notices.length`)
	jsValue[bool](t, b, `(c => { c.baseDelay = 600000; c.capDelay = 600000; c.random = () => 1; return true; })(fanoutApp.client)`)
	bID := jsValue[string](t, b, `fanoutApp.clientId`)
	if !cutConnection(srv, bID) {
		t.Fatalf("no connection of client %s on the server", bID)
	}
	jsWait(t, b, "B cut", `fanoutApp.state === "offline" && fanoutApp.client.retryAt > Date.now() + 60000`)
	jsWait(t, a, "A sees B leave", `fanoutApp.presenceNames.length === 1`)
	for i := 1; i <= 3; i++ {
		jsValue[float64](t, a, fmt.Sprintf(`fanoutApp.send("cut %d")`, i))
	}
	jsValue[bool](t, b, `(c => { c.baseDelay = 500; c.capDelay = 30000; c.random = Math.random; return true; })(fanoutApp.client)`)
	jsValue[bool](t, b, `fanoutApp.connect(), true`)
	jsWait(t, b, "B recovered", `fanoutApp.subscribed && fanoutApp.messages.some(m => m.text === "cut 3")`)
	type recovery struct {
		Texts   []string
		DOM     []string
		Offsets []float64
		Notices int
	}
	rec := jsValue[recovery](t, b, `(() => {
		const ms = fanoutApp.messages, epoch = ms[ms.length - 1].epoch;
		return {
			Texts: ms.filter(m => m.text.startsWith("cut ")).map(m => m.text),
			DOM: [...document.querySelectorAll("#messages .msg .text")].map(e => e.textContent).filter(s => s.startsWith("cut ")),
			Offsets: ms.filter(m => m.epoch === epoch).map(m => m.offset),
			Notices: fanoutApp.notices.length,
		};
	})()`)
	wantCut := []string{"cut 1", "cut 2", "cut 3"}
	if !equalStrings(rec.Texts, wantCut) || !equalStrings(rec.DOM, wantCut) {
		t.Fatalf("after the cut B shows %q (DOM %q), want %q", rec.Texts, rec.DOM, wantCut)
	}
	for i, o := range rec.Offsets {
		if o != float64(i+1) {
			t.Fatalf("offsets since the restart %v, want 1..%d without gap or repeat", rec.Offsets, len(rec.Offsets))
		}
	}
	if rec.Notices != noticesBefore {
		t.Fatalf("recovery after the cut reported a gap: %v", jsValue[[]string](t, b, `fanoutApp.notices`))
	}
	jsWait(t, a, "A sees B by name after the cut", bothPresent)

	// Anonymous clients are labelled by the part of their ids that
	// differs, and consecutive ids get unrelated colours.
	anon1 := dialClient(t, srv, false)
	anon2 := dialClient(t, srv, true)
	for _, c := range []*testClient{anon1, anon2} {
		c.mustOK(map[string]any{"op": "subscribe", "channel": "room:" + room})
	}
	labels := jsString(strings.Join(sortStrings(anon1.client[len(anon1.client)-8:], anon2.client[len(anon2.client)-8:]), "\n"))
	jsWait(t, a, "A labels the anonymous clients", `[...document.querySelectorAll("#presence .anon")].map(e => e.textContent).sort().join("\n") === `+labels)
	if l := jsValue[[]string](t, a, `["fanout-node1-000001", "fanout-node1-000002"].map(fanoutApp.labelOf)`); l[0] == l[1] {
		t.Errorf("ids with a shared prefix get one label: %v", l)
	}
	hues := jsValue[[]float64](t, a, `Array.from({length: 64}, (_, i) => fanoutApp.hueOf("aaaaaaaaaaaa" + String(i).padStart(4, "0")))`)
	if spread := hueSpread(hues); spread < 60 {
		t.Errorf("consecutive ids get close colours (mean neighbour distance %.1f°): %v", spread, hues)
	}

	// The live stats view of a visible page (a background tab does not
	// poll) shows the server's numbers: the connections (two pages, two
	// anonymous clients) and, while messages flow, a rate.
	var visible []e2ePage
	for _, p := range []e2ePage{a, b} {
		if !jsValue[bool](t, p, `document.hidden`) {
			visible = append(visible, p)
		}
	}
	if len(visible) == 0 {
		t.Fatal("neither page is visible")
	}
	for _, p := range visible {
		checkFor(t, 30*time.Second, 200*time.Millisecond, func() error {
			anon1.mustOK(map[string]any{"op": "publish", "channel": "stats-feed", "data": "tick"})
			ok, err := p.eval(`(() => {
				const s = fanoutApp.stats, rate = document.getElementById("stats-rate").textContent;
				return !!s && document.getElementById("stats").dataset.state === "live" &&
					s.connections === 4 && s.messagesPerSecond > 0 &&
					document.getElementById("stats-connections").textContent === "4" &&
					/^[0-9][0-9.,]*$/.test(rate) && rate !== "0.0";
			})()`)
			if err != nil || string(ok) != "true" {
				return fmt.Errorf("stats view not showing 4 connections and a rate: %s %v", ok, err)
			}
			return nil
		})
	}

	// B renames itself while in the room (with A and the two anonymous
	// clients: four present). The server takes a new name only
	// on a connection without subscriptions, so the app starts a new one:
	// A sees the new name at once, before B speaks.
	jsValue[bool](t, b, `fanoutApp.join("Bobby", `+jsString(room)+`).then(() => true)`)
	renamed := `fanoutApp.presenceNames.includes("Bobby") && !fanoutApp.presenceNames.includes("Bob") && fanoutApp.presenceNames.length === 4`
	jsWait(t, a, "A sees B's new name", renamed)
	// The name is remembered: B reloads, joins the room again by itself,
	// and is shown by that name.
	bID = jsValue[string](t, b, `fanoutApp.clientId`)
	jsValue[bool](t, b, `(setTimeout(() => location.reload(), 0), true)`)
	jsWait(t, b, "B back after a reload", `window.fanoutApp && fanoutApp.subscribed && fanoutApp.name === "Bobby" && fanoutApp.clientId !== `+jsString(bID))
	jsWait(t, a, "A sees B's name after the reload", renamed+` && !fanoutApp.presence.includes(`+jsString(bID)+`)`)
}

func sortStrings(s ...string) []string {
	sort.Strings(s)
	return s
}

func equalStrings(a, b []string) bool {
	return strings.Join(a, "\x00") == strings.Join(b, "\x00") && len(a) == len(b)
}

// hueSpread is the mean circular distance between neighbouring hues.
func hueSpread(h []float64) float64 {
	var sum float64
	for i := 1; i < len(h); i++ {
		d := math.Abs(h[i] - h[i-1])
		sum += math.Min(d, 360-d)
	}
	return sum / float64(len(h)-1)
}

// cutConnection drops the connection of a client id without a close frame,
// as a network failure would.
func cutConnection(s *Server, client string) bool {
	for i := range s.registry.shards {
		for _, c := range s.registry.shards[i].snapshot(nil) {
			// The id is written before the state turns open: read it after.
			if c.state.Load() == stateOpen && c.info.Client == client {
				c.closeSocket()
				return true
			}
		}
	}
	return false
}
