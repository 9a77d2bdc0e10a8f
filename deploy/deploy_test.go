// Package deploy holds the deployment files (Dockerfile at the repository
// root; compose file, systemd unit, Grafana dashboard and Prometheus rules
// here). It has no code: its test checks that the files agree with the
// server they deploy.
package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fanout-dev/fanout/engine"
	"github.com/fanout-dev/fanout/engine/broker/redisbroker"
)

// need returns the path of an external program, or skips the test loudly
// (fails it with FANOUT_REQUIRE_CLIENTS=1, as CI sets).
func need(t *testing.T, prog, install string) string {
	t.Helper()
	path, err := exec.LookPath(prog)
	if err == nil {
		return path
	}
	if os.Getenv("FANOUT_REQUIRE_CLIENTS") == "1" {
		t.Fatalf("%s not installed (%s) and FANOUT_REQUIRE_CLIENTS=1", prog, install)
	}
	line := "SKIPPED: " + t.Name() + ": " + prog + " not installed (" + install + "); FANOUT_REQUIRE_CLIENTS=1 makes this a failure"
	if p := os.Getenv("FANOUT_SKIP_LOG"); p != "" {
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			_, _ = fmt.Fprintln(f, line)
			_ = f.Close()
		}
	}
	t.Skip(line)
	return ""
}

// exposition is what a running server exports: each metric name (as
// exposed: a histogram's _bucket, _sum and _count) with its label pairs.
type exposition map[string]map[string]bool

// serverMetrics starts a real server with the Redis broker (so that the
// broker's metrics exist too) and scrapes its /metrics.
func serverMetrics(t *testing.T) exposition {
	t.Helper()
	redisPath := need(t, "redis-server", "apt-get install redis-server")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	redis := exec.Command(redisPath, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	if err := redis.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = redis.Process.Kill(); _ = redis.Wait() })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := redisbroker.New(redisbroker.Config{URL: fmt.Sprintf("redis://127.0.0.1:%d", port), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := engine.New(engine.Config{Addr: "127.0.0.1:0", Broker: b, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	base := "http://" + srv.Addr().String()
	// Ready once the broker reached Redis: its metrics are then complete.
	var body []byte
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %v %v", resp.Status, err)
	}
	exp := exposition{}
	label := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, labels := line, ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			name, labels = line[:i], line[i:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			name = line[:i]
		}
		if exp[name] == nil {
			exp[name] = map[string]bool{}
		}
		for _, m := range label.FindAllStringSubmatch(labels, -1) {
			exp[name][m[1]+`="`+m[2]+`"`] = true
		}
	}
	return exp
}

var (
	// metricRef is a metric named in PromQL. Prometheus's own "up" is not
	// the server's and is left out.
	metricRef = regexp.MustCompile(`\b((?:fanout|go|process)_[a-zA-Z0-9_]+)\b`)
	// matcherRef is a metric with label matchers.
	matcherRef = regexp.MustCompile(`\b((?:fanout|go|process)_[a-zA-Z0-9_]+)\{([^}]*)\}`)
	// eqMatcher is one label="value" matcher (exact, not a regex).
	eqMatcher = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"`)
)

// checkExprs checks that every metric expressions reference is exported,
// and that every exact label value they match (but instance and job, which
// Prometheus adds) occurs.
func checkExprs(t *testing.T, file string, exprs []string, exp exposition) {
	t.Helper()
	if len(exprs) == 0 {
		t.Fatalf("%s: no expressions found", file)
	}
	names := map[string]bool{}
	for _, e := range exprs {
		for _, m := range metricRef.FindAllStringSubmatch(e, -1) {
			names[m[1]] = true
			if exp[m[1]] == nil {
				t.Errorf("%s: %s is not exported by the server (in %q)", file, m[1], e)
			}
		}
		for _, m := range matcherRef.FindAllStringSubmatch(e, -1) {
			for _, lm := range eqMatcher.FindAllStringSubmatch(m[2], -1) {
				if lm[1] == "instance" || lm[1] == "job" || strings.HasPrefix(lm[2], "$") {
					continue
				}
				if pair := lm[1] + `="` + lm[2] + `"`; exp[m[1]] != nil && !exp[m[1]][pair] {
					t.Errorf("%s: no %s{%s} series (in %q)", file, m[1], pair, e)
				}
			}
		}
	}
	list := make([]string, 0, len(names))
	for n := range names {
		list = append(list, n)
	}
	sort.Strings(list)
	t.Logf("%s: %d expressions, metrics %s", file, len(exprs), strings.Join(list, " "))
}

// dashboardExprs returns every "expr" of the dashboard (panels, rows,
// variables), checking the structure Grafana needs on the way.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID, Title    string
		SchemaVersion int
		Panels        []struct {
			ID      int
			Type    string
			Title   string
			Targets []struct {
				RefID string
				Expr  string
			}
			GridPos struct{ H, W, X, Y int }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 || len(d.Panels) == 0 {
		t.Fatalf("grafana-dashboard.json: uid %q, title %q, schemaVersion %d, %d panels", d.UID, d.Title, d.SchemaVersion, len(d.Panels))
	}
	var exprs []string
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				t.Errorf("panel %q: target %+v", p.Title, tg)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	return exprs
}

// alertExprs returns the expr of every rule of alerts.yml. The file is
// written one "expr:" per line; promtool (TestAlertRulesValid) checks the
// YAML and PromQL themselves.
func alertExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, line := range strings.Split(string(raw), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(line), "expr:"); ok {
			exprs = append(exprs, strings.TrimSpace(e))
		}
	}
	if n := strings.Count(string(raw), "- alert:"); n != len(exprs) {
		t.Fatalf("alerts.yml: %d alerts, %d one-line exprs", n, len(exprs))
	}
	return exprs
}

// TestMetricsReferencedExist: every metric the dashboard and the alert
// rules use is exported by a running server.
func TestMetricsReferencedExist(t *testing.T) {
	exp := serverMetrics(t)
	checkExprs(t, "grafana-dashboard.json", dashboardExprs(t), exp)
	checkExprs(t, "alerts.yml", alertExprs(t), exp)
}

// TestAlertRulesValid: promtool accepts the rules.
func TestAlertRulesValid(t *testing.T) {
	promtool := need(t, "promtool", "apt-get install prometheus")
	out, err := exec.Command(promtool, "check", "rules", "alerts.yml").CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if n := strings.Count(mustRead(t, "alerts.yml"), "- alert:"); !strings.Contains(string(out), fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Errorf("promtool did not find the %d rules:\n%s", n, out)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unitSetting returns the value of key in a systemd unit (the last one).
func unitSetting(unit, key string) string {
	v := ""
	for _, line := range strings.Split(unit, "\n") {
		if rest, ok := strings.CutPrefix(line, key+"="); ok {
			v = rest
		}
	}
	return v
}

// TestSystemdUnit: systemd-analyze accepts the unit; it raises the
// descriptor limit, and waits for a whole drain before killing.
func TestSystemdUnit(t *testing.T) {
	unit := mustRead(t, "fanout.service")
	for key, want := range map[string]string{
		"LimitNOFILE": "1048576", "KillSignal": "SIGTERM", "Restart": "on-failure",
		"NoNewPrivileges": "yes", "ProtectSystem": "strict", "DynamicUser": "yes",
	} {
		if got := unitSetting(unit, key); got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	stop, err := time.ParseDuration(unitSetting(unit, "TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if drain := engineDrainDefaults(t); stop <= drain {
		t.Errorf("TimeoutStopSec=%v does not outlast the default drain (%v)", stop, drain)
	}
	analyze := need(t, "systemd-analyze", "apt-get install systemd")
	// verify wants ExecStart to exist: point it at a real executable.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(t.TempDir(), "fanout.service")
	re := regexp.MustCompile(`(?m)^ExecStart=.*$`)
	if err := os.WriteFile(tmp, []byte(re.ReplaceAllString(unit, "ExecStart="+self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", tmp).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// engineDrainDefaults is the command's --drain-delay plus --drain-timeout
// defaults, read from its usage so that the unit and the compose file
// follow them.
func engineDrainDefaults(t *testing.T) time.Duration {
	t.Helper()
	src := mustRead(t, "../cmd/fanout/main.go")
	var total time.Duration
	for _, flag := range []string{"drain-delay", "drain-timeout"} {
		m := regexp.MustCompile(`"` + flag + `", ([0-9]+) ?\* ?time\.Second`).FindStringSubmatch(src)
		if m == nil {
			t.Fatalf("no default for --%s in cmd/fanout/main.go", flag)
		}
		n, _ := strconv.Atoi(m[1])
		total += time.Duration(n) * time.Second
	}
	return total
}

// TestCompose: the compose file parses, runs Redis, three nodes on it and
// nginx with deploy/nginx.conf, and stops nodes no faster than a drain.
func TestCompose(t *testing.T) {
	// Debian's python3 (where .ci/run installs python3-yaml), not
	// whichever python3 is first on PATH.
	py := need(t, "/usr/bin/python3", "apt-get install python3 python3-yaml")
	// YAML to JSON with python3-yaml: the module has no YAML parser, and
	// this is the only YAML it reads.
	out, err := exec.Command(py, "-c", "import sys, json, yaml; json.dump(yaml.safe_load(open('compose.yaml')), sys.stdout)").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("compose.yaml does not parse: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("compose.yaml does not parse: %v", err)
	}
	var c struct {
		Services map[string]struct {
			Image           string
			Build           any
			Environment     map[string]string
			StopGracePeriod string `json:"stop_grace_period"`
			Ulimits         struct{ Nofile struct{ Soft, Hard int } }
			Volumes         []string
			DependsOn       map[string]any `json:"depends_on"`
		}
	}
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	drain := engineDrainDefaults(t)
	nodes := 0
	for name, s := range c.Services {
		if !strings.HasPrefix(name, "fanout") {
			continue
		}
		nodes++
		if s.Environment["FANOUT_BROKER"] != "redis://redis:6379" {
			t.Errorf("%s: FANOUT_BROKER %q", name, s.Environment["FANOUT_BROKER"])
		}
		if s.Build == nil {
			t.Errorf("%s: not built from the Dockerfile", name)
		}
		if s.Ulimits.Nofile.Soft != 1048576 {
			t.Errorf("%s: nofile %d", name, s.Ulimits.Nofile.Soft)
		}
		if g, err := time.ParseDuration(s.StopGracePeriod); err != nil || g <= drain {
			t.Errorf("%s: stop_grace_period %q does not outlast the drain (%v)", name, s.StopGracePeriod, drain)
		}
		if _, ok := s.DependsOn["redis"]; !ok {
			t.Errorf("%s does not depend on redis", name)
		}
	}
	if nodes != 3 {
		t.Errorf("%d fanout nodes, want 3", nodes)
	}
	if _, ok := c.Services["redis"]; !ok {
		t.Error("no redis service")
	}
	nginx, ok := c.Services["nginx"]
	if !ok {
		t.Fatal("no nginx service")
	}
	mounted := false
	for _, v := range nginx.Volumes {
		if src, _, _ := strings.Cut(v, ":"); src == "./nginx.conf" {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("nginx does not mount ./nginx.conf: %v", nginx.Volumes)
	}
	// The upstream line the compose file rewrites must be in nginx.conf.
	if !strings.Contains(mustRead(t, "nginx.conf"), "server 127.0.0.1:8080;") {
		t.Error("deploy/nginx.conf has no 'server 127.0.0.1:8080;' upstream for compose.yaml to replace")
	}
}
