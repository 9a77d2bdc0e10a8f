package engine

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserPath finds headless Chromium. Without it the test fails if
// FANOUT_REQUIRE_BROWSER is set (.ci/run installs Chromium and sets it) and
// is skipped loudly otherwise.
func browserPath(t *testing.T) string {
	t.Helper()
	names := []string{"chromium", "chromium-browser", "google-chrome"}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("FANOUT_REQUIRE_BROWSER") != "" {
		t.Fatalf("no Chromium found (none of %s on PATH) and FANOUT_REQUIRE_BROWSER is set", strings.Join(names, ", "))
	}
	skipLoudly(t, fmt.Sprintf("Chromium not installed (none of %s on PATH), so the browser end-to-end test did not run; install it, or set FANOUT_REQUIRE_BROWSER=1 to fail instead", strings.Join(names, ", ")))
	return ""
}

// skipLoudly skips t for a missing external program and says so in one
// "SKIPPED:" line. go test shows nothing of a passing package without -v, so
// the line is also appended to the file named by $FANOUT_SKIP_LOG;
// ./scripts/test.sh sets that variable and prints the file at the end.
func skipLoudly(t *testing.T, reason string) {
	t.Helper()
	line := "SKIPPED: " + t.Name() + ": " + reason
	if path := os.Getenv("FANOUT_SKIP_LOG"); path != "" {
		if f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			_, _ = fmt.Fprintln(f, line)
			_ = f.Close()
		}
	}
	t.Skip(line)
}

// newBrowser starts headless Chromium with a fresh profile and returns a
// function opening a new tab.
func newBrowser(t *testing.T) func() context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browserPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	if _, err := chromedp.Run(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start browser: %v", err)
	}
	return func() context.Context {
		tctx, tcancel := chromedp.NewContext(bctx)
		t.Cleanup(tcancel)
		return tctx
	}
}

// eval runs a JavaScript expression (awaiting a promise) in a tab.
func eval[T any](t *testing.T, tab context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 15*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("eval %s: %v", expr, err)
	}
	return v
}

// waitJS polls a boolean expression in a tab.
func waitJS(t *testing.T, tab context.Context, expr string) {
	t.Helper()
	checkFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if !eval[bool](t, tab, "Boolean("+expr+")") {
			return fmt.Errorf("still false: %s", expr)
		}
		return nil
	})
}

// TestBrowserChat drives the embedded web app in headless Chromium against
// the real server: join, live messages rendered as text, presence, history
// on join and gap-free recovery after a dropped connection.
func TestBrowserChat(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	newTab := newBrowser(t)
	s := startServer(t, Config{})
	url := "http://" + s.Addr().String() + "/"

	open := func(name string) context.Context {
		tab := newTab()
		// The first Run creates the tab and ties it to its context: run it
		// on the tab's own context, not a shorter-lived one.
		if _, err := chromedp.Run(tab, chromedp.Navigate(url)); err != nil {
			t.Fatal(err)
		}
		waitJS(t, tab, `window.fanoutApp && window.fanoutApp.state === "online"`)
		eval[bool](t, tab, fmt.Sprintf(`window.fanoutApp.join(%q, "lobby").then(() => true)`, name))
		waitJS(t, tab, `window.fanoutApp.subscribed`)
		return tab
	}
	alice := open("alice")
	bob := open("bob")

	offset := eval[float64](t, alice, `window.fanoutApp.send("hello <b>bold</b> & co")`)
	if offset < 1 {
		t.Fatalf("send offset %v", offset)
	}
	waitJS(t, bob, `window.fanoutApp.messages.some(m => m.text === "hello <b>bold</b> & co" && m.name === "alice")`)
	// Rendered as text, never as markup.
	boldTags := eval[int](t, bob, `document.querySelectorAll("#messages b").length`)
	shown := eval[string](t, bob, `document.querySelector("#messages .text").textContent`)
	if boldTags != 0 || !strings.Contains(shown, "<b>bold</b>") {
		t.Fatalf("message rendered as markup: %d <b> tags, text %q", boldTags, shown)
	}
	waitJS(t, alice, `window.fanoutApp.presence.length === 2`)
	waitJS(t, bob, `document.querySelectorAll("#presence li").length === 2`)

	// Bob drops; Alice publishes 3; Bob reconnects and recovers all 3.
	eval[bool](t, bob, `window.fanoutApp.disconnect(), true`)
	waitJS(t, bob, `window.fanoutApp.state === "offline"`)
	waitJS(t, alice, `window.fanoutApp.presence.length === 1`)
	for i := 1; i <= 3; i++ {
		eval[float64](t, alice, fmt.Sprintf(`window.fanoutApp.send("missed %d")`, i))
	}
	eval[bool](t, bob, `window.fanoutApp.connect(), true`)
	waitJS(t, bob, `window.fanoutApp.messages.length === 4`)
	offsets := eval[[]float64](t, bob, `window.fanoutApp.messages.map(m => m.offset)`)
	for i, o := range offsets {
		if o != float64(i+1) {
			t.Fatalf("offsets after recovery %v, want 1..4", offsets)
		}
	}
	notices := eval[[]string](t, bob, `window.fanoutApp.notices`)
	for _, n := range notices {
		if strings.Contains(n, "missing") {
			t.Fatalf("recovery reported a gap: %v", notices)
		}
	}

	// A late joiner gets the history.
	carol := open("carol")
	waitJS(t, carol, `window.fanoutApp.messages.length === 4`)
	waitJS(t, alice, `window.fanoutApp.presence.length === 3`)
}
