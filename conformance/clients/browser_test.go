package clients

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browsers always offer permessage-deflate and cannot send a fragmented
// message; both encodings run, msgpack with @msgpack/msgpack's browser
// bundle injected into the page.
var browserSpec = clientSpec{encodings: []string{"json", "msgpack"}, deflate: true}

// TestChromium drives headless Chromium through chromedp: one browser for
// every case, one page of each case's server origin.
func TestChromium(t *testing.T) {
	exe := lookProgram(t, "Chromium", "chromium", "chromium-browser", "google-chrome")
	mods := nodeModules(t, "@msgpack/msgpack")
	msgpackSrc := readFile(t, filepath.Join(mods, "@msgpack", "msgpack", "dist.umd", "msgpack.min.js"))
	driverSrc := readFile(t, filepath.Join(pkgDir(t), "node", "browser_driver.js"))

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
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
	tab, tcancel := chromedp.NewContext(actx)
	t.Cleanup(tcancel)
	if _, err := chromedp.Run(tab, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	out, _ := exec.Command(exe, "--version").Output()
	d := &chromeDriver{tab: tab, msgpackSrc: msgpackSrc, driverSrc: driverSrc, version: strings.TrimSpace(string(out))}
	logVersion(t, d)
	spec := browserSpec
	spec.name = "Chromium"
	runMatrix(t, spec, d)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// chromeDriver runs browser_driver.js in a Chromium tab.
type chromeDriver struct {
	tab                   context.Context
	msgpackSrc, driverSrc string
	version               string // chromium --version
}

func (c *chromeDriver) open(httpURL string) error {
	ctx, cancel := context.WithTimeout(c.tab, cmdTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(httpURL)); err != nil {
		return err
	}
	for _, src := range []string{c.msgpackSrc, c.driverSrc} {
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[any](src)); err != nil {
			return err
		}
	}
	return nil
}

func (c *chromeDriver) do(cmd map[string]any) (reply, error) {
	if cmd["cmd"] == "version" {
		return reply{"client": "Chromium", "version": c.version, "runtime": "chromedp " + modVersion("github.com/chromedp/chromedp")}, nil
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.tab, cmdTimeout+5*time.Second)
	defer cancel()
	expr := fmt.Sprintf("window.__fanoutDriver.handle(%s)", b)
	out, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		return nil, fmt.Errorf("Chromium: %v", err)
	}
	var r reply
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("Chromium: bad answer %q: %v", tail(out), err)
	}
	return r, nil
}

// TestFirefox drives Firefox ESR through puppeteer-core over WebDriver
// BiDi (node/firefox.js): one browser for every case.
func TestFirefox(t *testing.T) {
	exe := lookProgram(t, "Firefox ESR", "firefox-esr", "firefox")
	node := lookProgram(t, "node", "node", "nodejs")
	nodeModules(t, "puppeteer-core", "@msgpack/msgpack")
	out, _ := exec.Command(exe, "--version").Output()
	t.Logf("VERSION: %s", strings.TrimSpace(string(out)))
	d := startProc(t, "firefox", []string{"FIREFOX=" + exe}, node, "node/firefox.js")
	logVersion(t, d)
	spec := browserSpec
	spec.name = "Firefox"
	runMatrix(t, spec, d)
}
