package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// The alerting rules and the dashboard shipped with nonqueue (and in the
// package, under /usr/share/nonqueue/).
const (
	alertsFile    = "../../monitor/prometheus/alerts.yml"
	dashboardFile = "../../monitor/grafana/nonqueue.json"
)

// metricNameRe finds nonqueue metric names in PromQL or any text. Every
// nonqueue metric starts with the namespace and no other identifier in the
// rules or the dashboard does, so a match is a metric name whatever its
// place in an expression (selector, function argument, label_values, or
// an annotation's text). A PromQL parser would do the same with a heavy
// dependency (github.com/prometheus/prometheus); promtool already parses
// every expression in monitor/prometheus and monitor/grafana's tests.
var metricNameRe = regexp.MustCompile(`\bnonqueue_[a-zA-Z0-9_:]*`)

// seriesNames returns the series names a family exposes: a histogram's
// _bucket, _sum and _count, a summary's name, _sum and _count, any other
// family's own name.
func seriesNames(mf *dto.MetricFamily) []string {
	n := mf.GetName()
	switch mf.GetType() {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return []string{n + "_bucket", n + "_sum", n + "_count"}
	case dto.MetricType_SUMMARY:
		return []string{n, n + "_sum", n + "_count"}
	default:
		return []string{n}
	}
}

// dashboardQueries returns every query of the dashboard: the panels'
// exprs and the variables' queries, found wherever they are nested.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if s, ok := c.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					out = append(out, s)
				}
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	return out
}

// usedNames returns the nonqueue metric names in texts, each with the
// first text it appears in (trimmed, for messages).
func usedNames(texts ...string) map[string]string {
	used := map[string]string{}
	for _, s := range texts {
		for _, n := range metricNameRe.FindAllString(s, -1) {
			if _, ok := used[n]; !ok {
				used[n] = strings.TrimSpace(s)
			}
		}
	}
	return used
}

// startWorkerProcess runs `nonqueue work --metrics-listen 127.0.0.1:0` as
// a separate process (this test binary as nonqueue, see TestMain) and
// returns its metrics address from its log. The process is stopped with
// SIGTERM (SIGKILL after 30s) when t ends.
func startWorkerProcess(t *testing.T, cfg string) string {
	t.Helper()
	return startMetricsProcess(t, "worker", "work", "--config", cfg, "--instances", "1")
}

// startMetricsProcess runs `nonqueue ARGS... --metrics-listen 127.0.0.1:0`
// as startWorkerProcess does; what names it in messages.
func startMetricsProcess(t *testing.T, what string, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], append(args, "--metrics-listen", "127.0.0.1:0")...)
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out.String())
		}
	})
	var addr string
	testdb.WaitFor(t, 60*time.Second, "the "+what+"'s metrics address in its log", func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited before serving metrics: %v\n%s", what, err, out.String())
		default:
		}
		if m := listenRe.FindStringSubmatch(out.String()); m != nil {
			addr = m[1]
			return true
		}
		return false
	})
	return addr
}

// TestMonitoringMetricNames: every nonqueue metric named in the alerting
// rules (monitor/prometheus/alerts.yml) and in the Grafana dashboard's
// queries (monitor/grafana/nonqueue.json) is one a real worker process
// (`nonqueue work --metrics-listen`), a real binlog follower (`nonqueue
// follow --metrics-listen`) or a real dashboard (/metrics) exports, and the
// dashboard shows every nonqueue metric they export. The worker runs
// against replica 1 of the package's sandbox until its lag gate has
// sampled, so the replication metrics, which exist only then, are
// exported too.
func TestMonitoringMetricNames(t *testing.T) {
	b := setupWork(t)
	b.addTopics(t, 1)
	cfg := b.config(t, 0, "")

	workerAddr := startWorkerProcess(t, cfg)
	var wfams map[string]*dto.MetricFamily
	testdb.WaitFor(t, 60*time.Second, "the worker's replication metrics (the lag gate's first sample)", func() bool {
		_, wfams = scrape(t, "http://"+workerAddr+"/metrics")
		return wfams["nonqueue_replication_lag_seconds"] != nil && wfams["nonqueue_replication_running"] != nil
	})
	dashURL, _, stopDash := startDashboard(t, "--config", cfg, "--listen", "127.0.0.1:0")
	defer stopDash()
	_, dfams := scrape(t, strings.TrimSuffix(dashURL, "/")+"/metrics")
	followAddr := startMetricsProcess(t, "follower", "follow", "--config", followConfig(t, b, cfg))
	_, ffams := scrape(t, "http://"+followAddr+"/metrics")

	// What the processes export: series name -> family.
	exported := map[string]string{}
	var families []string
	for _, fams := range []map[string]*dto.MetricFamily{wfams, dfams, ffams} {
		for name, mf := range fams {
			if !strings.HasPrefix(name, "nonqueue_") {
				continue
			}
			families = append(families, name)
			for _, s := range seriesNames(mf) {
				exported[s] = name
			}
		}
	}

	rules, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	fromRules := usedNames(strings.Split(string(rules), "\n")...) // by line, to name the line
	fromDash := usedNames(dashboardQueries(t)...)
	// A file that lost its queries would pass the check below vacuously.
	if len(fromRules) < 7 || len(fromDash) < 12 {
		t.Fatalf("found %d metric names in %s and %d in %s; want at least 7 and 12", len(fromRules), alertsFile, len(fromDash), dashboardFile)
	}
	for _, src := range []struct {
		file string
		used map[string]string
	}{{alertsFile, fromRules}, {dashboardFile, fromDash}} {
		for _, name := range slices.Sorted(maps.Keys(src.used)) {
			if _, ok := exported[name]; !ok {
				t.Errorf("%s uses %s, which neither the worker, the follower nor the dashboard exports; in: %s", src.file, name, src.used[name])
			}
		}
	}
	shown := map[string]bool{}
	for name := range fromDash {
		if fam, ok := exported[name]; ok {
			shown[fam] = true
		}
	}
	for _, fam := range slices.Sorted(slices.Values(families)) {
		if !shown[fam] {
			t.Errorf("the dashboard shows no series of %s, which nonqueue exports", fam)
		}
	}
	if t.Failed() {
		return
	}
	t.Logf("%d nonqueue families exported; %d metric names in the rules, %d in the dashboard, all exported", len(families), len(fromRules), len(fromDash))
}

// followConfig writes cfg (a worker's configuration) with a follower of a
// new source table of b's database, as `nonqueue demo` runs one, and
// returns its path.
func followConfig(t *testing.T, b *workBundle, cfg string) string {
	t.Helper()
	if _, err := b.primary.ExecContext(b.ctx, "CREATE TABLE post (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := cfg + ".follow.toml"
	body = append(body, fmt.Sprintf("\n[follower]\nname = \"monitoring\"\n\n[[follow]]\ntable = \"%s.post\"\ntopic_column = \"topic\"\n", b.db)...)
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
