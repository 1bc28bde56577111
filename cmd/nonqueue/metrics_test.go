package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/metrics"
	"github.com/nonqueue/nonqueue/queue"
)

// Debian's prometheus package ships both.
const (
	promtoolBin   = "promtool"
	prometheusBin = "/usr/bin/prometheus"
)

// requireProm skips without promtool and prometheus, naming the fix, and
// fails under CI, where a skipped check must not look green.
func requireProm(t *testing.T) string {
	t.Helper()
	promtool, err := exec.LookPath(promtoolBin)
	if err == nil {
		_, err = os.Stat(prometheusBin)
	}
	if err != nil {
		msg := fmt.Sprintf("prometheus/promtool not installed (%v): run `bash .ci/deps` or `apt-get install prometheus`", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return promtool
}

// syncBuffer is the package tests' name for testdb.SyncBuffer.
type syncBuffer = testdb.SyncBuffer

// scrape GETs url and returns the body and the parsed families.
func scrape(t *testing.T, u string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s\n%s", u, resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("scrape %s: content type %q, want the text format", u, ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", u, err, body)
	}
	return string(body), fams
}

// metricWith returns the family's metric whose labels include want, or nil.
func metricWith(mf *dto.MetricFamily, want map[string]string) *dto.Metric {
next:
	for _, m := range mf.GetMetric() {
		for k, v := range want {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// checkFamilies asserts that every named family exists with its type.
func checkFamilies(t *testing.T, fams map[string]*dto.MetricFamily, want map[string]dto.MetricType) {
	t.Helper()
	for name, typ := range want {
		mf := fams[name]
		switch {
		case mf == nil:
			t.Errorf("family %s missing", name)
		case mf.GetType() != typ:
			t.Errorf("family %s is a %v, want %v", name, mf.GetType(), typ)
		}
	}
}

// promtoolCheck runs `promtool check metrics` on a scrape and fails on
// any finding: it prints lint problems and exits non-zero.
func promtoolCheck(t *testing.T, promtool, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// workerFamilies are what a worker's /metrics must have once it has run
// topics, with their types.
var workerFamilies = map[string]dto.MetricType{
	"nonqueue_runs_total":                    dto.MetricType_COUNTER,
	"nonqueue_publish_errors_total":          dto.MetricType_COUNTER,
	"nonqueue_run_phase_duration_seconds":    dto.MetricType_HISTOGRAM,
	"nonqueue_bytes_shipped_total":           dto.MetricType_COUNTER,
	"nonqueue_claims_total":                  dto.MetricType_COUNTER,
	"nonqueue_claims_combined_total":         dto.MetricType_COUNTER,
	"nonqueue_leases_reaped_total":           dto.MetricType_COUNTER,
	"nonqueue_replication_lag_seconds":       dto.MetricType_GAUGE,
	"nonqueue_replication_running":           dto.MetricType_GAUGE,
	"nonqueue_instances":                     dto.MetricType_GAUGE,
	"nonqueue_pending_drops":                 dto.MetricType_GAUGE,
	"go_goroutines":                          dto.MetricType_GAUGE,
	"process_cpu_seconds_total":              dto.MetricType_COUNTER,
	"promhttp_metric_handler_requests_total": dto.MetricType_COUNTER,
}

// TestMetricsServer: the worker's metrics server alone, no database: off
// when the address is empty, bound before start returns, served as
// parseable text that promtool accepts, hooks wired to the families, and
// stopped both by Stop and by the end of its context.
func TestMetricsServer(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	off, err := startWorkerMetrics(context.Background(), "", &queue.Queue{}, &monitor.Gate{}, nil, nil, nil, logger)
	if err != nil || off.observer() != nil || off.stateFunc() != nil || off.reapedFunc() != nil {
		t.Fatalf("metrics off: %v, hooks %v %v", err, off.observer() != nil, off.stateFunc() != nil)
	}
	off.Stop()
	if err := checkMetricsListen("9464"); err == nil {
		t.Error("--metrics-listen 9464 (no host) accepted")
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := startWorkerMetrics(context.Background(), busy.Addr().String(), &queue.Queue{}, &monitor.Gate{}, nil, nil, nil, logger); err == nil {
		t.Error("start on a busy port succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wm, err := startWorkerMetrics(ctx, "127.0.0.1:0", &queue.Queue{}, &monitor.Gate{}, nil, nil, func() int { return 0 }, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer wm.Stop()
	wm.observer()(&monitor.Run{Outcome: monitor.OutcomeDone, Claim: time.Millisecond, Proc: time.Second, Bytes: 4096})
	wm.stateFunc()(1001, monitor.StateIdle)
	wm.reapedFunc()(queue.Reaped{TopicID: 1})
	u := "http://" + wm.addr.String() + "/metrics"
	body, fams := scrape(t, u)
	want := map[string]dto.MetricType{}
	for name, typ := range workerFamilies {
		if !strings.HasPrefix(name, "nonqueue_replication_") { // no gate sample here
			want[name] = typ
		}
	}
	checkFamilies(t, fams, want)
	if fams["nonqueue_replication_lag_seconds"] != nil {
		t.Error("replication lag exported before the gate's first sample")
	}
	for _, c := range []struct {
		family string
		labels map[string]string
		value  float64
	}{
		{"nonqueue_runs_total", map[string]string{"outcome": "done"}, 1},
		{"nonqueue_bytes_shipped_total", nil, 4096},
		{"nonqueue_leases_reaped_total", nil, 1},
		{"nonqueue_instances", map[string]string{"state": "idle"}, 1},
	} {
		m := metricWith(fams[c.family], c.labels)
		if m == nil {
			t.Errorf("%s%v missing", c.family, c.labels)
			continue
		}
		if got := m.GetCounter().GetValue() + m.GetGauge().GetValue(); got != c.value {
			t.Errorf("%s%v = %v, want %v", c.family, c.labels, got, c.value)
		}
	}
	if promtool, err := exec.LookPath(promtoolBin); err == nil {
		promtoolCheck(t, promtool, body)
	} else if os.Getenv("CI") != "" {
		t.Errorf("promtool not installed: %v", err)
	}

	// The end of ctx stops the server: new connections are refused.
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", wm.addr.String(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("metrics server still accepting 10s after its context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	wm.Stop() // after the context's stop: a no-op
}

// listenRe finds the metrics address in the worker's log.
var listenRe = regexp.MustCompile(`msg="metrics listening" addr=(127\.0\.0\.1:\d+)`)

// TestMetricsEndToEnd: a real worker (`nonqueue work --metrics-listen
// 127.0.0.1:0`, in-process, on replica 1 of the package's topology) runs
// topics; its /metrics then has every family with the right type and
// values that match the run history, and promtool finds nothing to
// complain about. The dashboard's topic collector, served here on
// 127.0.0.1:0, counts the same topics. A real Prometheus scrapes both
// every second and answers nonqueue_runs_total and nonqueue_topics
// queries over its HTTP API.
func TestMetricsEndToEnd(t *testing.T) {
	promtool := requireProm(t)
	b := setupWork(t)
	const topics = 8
	ids := make([]int64, topics)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	b.addTopics(t, ids...)

	// The worker, in-process, so its log (and the bound port) is ours.
	ctx, stopWorker := context.WithCancel(b.ctx)
	defer stopWorker()
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"work", "--config", b.config(t, 0, ""), "--instances", "2", "--metrics-listen", "127.0.0.1:0"}, io.Discard, &logs)
	}()
	waited := false
	wait := func() error {
		if waited {
			return nil
		}
		waited = true
		select {
		case err := <-done:
			return err
		case <-time.After(60 * time.Second):
			return errors.New("worker did not stop within 60s")
		}
	}
	defer func() {
		stopWorker()
		if err := wait(); err != nil {
			t.Errorf("worker: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", logs.String())
		}
	}()
	var addr string
	testdb.WaitFor(t, 60*time.Second, "the worker's metrics address in its log", func() bool {
		if m := listenRe.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
			return true
		}
		select {
		case err := <-done:
			done <- err
			t.Fatalf("worker exited before serving metrics: %v\n%s", err, logs.String())
		default:
		}
		return false
	})
	testdb.WaitFor(t, 90*time.Second, "all topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	// A run is recorded, then observed, just after its topic finishes.
	var runsDone int
	testdb.WaitFor(t, 30*time.Second, "every done run recorded", func() bool {
		runsDone = b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'")
		return runsDone >= topics
	})

	// The worker's endpoint.
	workerURL := "http://" + addr + "/metrics"
	var body string
	var fams map[string]*dto.MetricFamily
	value := func(family string, labels map[string]string) float64 {
		t.Helper()
		m := metricWith(fams[family], labels)
		if m == nil {
			t.Fatalf("%s%v missing", family, labels)
		}
		return m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	// The gate samples every 100ms; the last run is observed right after
	// it is recorded: wait for both.
	testdb.WaitFor(t, 30*time.Second, "a replication lag sample and every done run counted", func() bool {
		body, fams = scrape(t, workerURL)
		done := metricWith(fams["nonqueue_runs_total"], map[string]string{"outcome": "done"})
		return fams["nonqueue_replication_lag_seconds"] != nil && done != nil && done.GetCounter().GetValue() >= float64(runsDone)
	})
	checkFamilies(t, fams, workerFamilies)
	if got := value("nonqueue_runs_total", map[string]string{"outcome": "done"}); got != float64(runsDone) {
		t.Errorf("runs_total{outcome=done} = %v, run history has %d", got, runsDone)
	}
	if got := value("nonqueue_claims_total", map[string]string{"result": "won"}); got < float64(runsDone) {
		t.Errorf("claims_total{result=won} = %v, want at least %d", got, runsDone)
	}
	if got := value("nonqueue_bytes_shipped_total", nil); got <= 0 {
		t.Errorf("bytes_shipped_total = %v after %d published topics", got, runsDone)
	}
	for _, thread := range []string{"io", "sql"} {
		if got := value("nonqueue_replication_running", map[string]string{"thread": thread}); got != 1 {
			t.Errorf("replication_running{thread=%s} = %v, want 1", thread, got)
		}
	}
	if lag := value("nonqueue_replication_lag_seconds", nil); lag < 0 || lag > 5 {
		t.Errorf("replication lag %vs on an idle loopback replica", lag)
	}
	var instances float64
	for _, m := range fams["nonqueue_instances"].GetMetric() {
		instances += m.GetGauge().GetValue()
	}
	if instances != 2 {
		t.Errorf("nonqueue_instances sums to %v, want the 2 instances", instances)
	}
	for _, phase := range []string{metrics.PhaseClaim, metrics.PhaseLagWait, metrics.PhaseProcedure, metrics.PhaseTransfer, metrics.PhasePublish} {
		h := metricWith(fams["nonqueue_run_phase_duration_seconds"], map[string]string{"phase": phase}).GetHistogram()
		if h.GetSampleCount() < uint64(runsDone) || h.GetSampleSum() <= 0 {
			t.Errorf("phase %s: %d observations summing to %vs, want at least %d", phase, h.GetSampleCount(), h.GetSampleSum(), runsDone)
		}
	}
	promtoolCheck(t, promtool, body)

	// The dashboard side: `nonqueue dashboard` on the same configuration
	// serves the topic collector at /metrics.
	dashURL, _, stopDash := startDashboard(t, "--config", b.config(t, 0, ""), "--listen", "127.0.0.1:0")
	defer stopDash()
	dashAddr := strings.TrimSuffix(strings.TrimPrefix(dashURL, "http://"), "/")
	tbody, tfams := scrape(t, "http://"+dashAddr+"/metrics")
	checkFamilies(t, tfams, map[string]dto.MetricType{
		"nonqueue_topics":                       dto.MetricType_GAUGE,
		"nonqueue_oldest_due_age_seconds":       dto.MetricType_GAUGE,
		"nonqueue_topic_query_success":          dto.MetricType_GAUGE,
		"nonqueue_topic_query_duration_seconds": dto.MetricType_GAUGE,
	})
	fams = tfams
	if got := value("nonqueue_topics", map[string]string{"state": "idle"}); got != topics {
		t.Errorf("topics{state=idle} = %v, want all %d", got, topics)
	}
	if got := value("nonqueue_topics", map[string]string{"state": "due"}); got != 0 {
		t.Errorf("topics{state=due} = %v, want 0", got)
	}
	promtoolCheck(t, promtool, tbody)

	// A real Prometheus scrapes both and answers queries.
	prom := startPrometheus(t, addr, dashAddr)
	promQuery(t, prom, `nonqueue_runs_total{job="worker",outcome="done"}`, float64(runsDone))
	promQuery(t, prom, `nonqueue_topics{job="topics",state="idle"}`, topics)
	promQuery(t, prom, `sum(up)`, 2)
}

// startPrometheus runs Debian's prometheus on a free loopback port with a
// temporary database, scraping the worker and topics targets every
// second, and stops it when t ends. It returns the server's base URL once
// /-/ready answers. A port taken between choosing and binding is retried.
func startPrometheus(t *testing.T, workerAddr, topicsAddr string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	yml := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: worker
    static_configs:
      - targets: [%q]
  - job_name: topics
    static_configs:
      - targets: [%q]
`, workerAddr, topicsAddr)
	if err := os.WriteFile(cfg, []byte(yml), 0o600); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; ; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		listen := ln.Addr().String()
		ln.Close()
		out := &syncBuffer{}
		cmd := exec.Command(prometheusBin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+listen, "--log.level=warn")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}
		base := "http://" + listen
		ready, err := waitReady(base+"/-/ready", exited, 30*time.Second)
		if ready {
			t.Cleanup(func() {
				stop()
				if t.Failed() {
					t.Logf("prometheus output:\n%s", out.String())
				}
			})
			return base
		}
		stop()
		if attempt == 3 || !strings.Contains(out.String(), "address already in use") {
			t.Fatalf("prometheus did not become ready: %v\n%s", err, out.String())
		}
	}
}

// waitReady polls u until it answers 200, the process exits, or d passes.
func waitReady(u string, exited <-chan error, d time.Duration) (bool, error) {
	deadline := time.Now().Add(d)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("prometheus exited: %v", err)
		default:
		}
		if resp, err := client.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false, fmt.Errorf("not ready after %v", d)
}

// promQuery polls Prometheus' /api/v1/query until query returns exactly
// one sample equal to want, for at most 60s (a few scrape intervals plus
// Prometheus' start-up).
func promQuery(t *testing.T, base, query string, want float64) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for {
		got, raw, err := promInstant(client, base, query)
		switch {
		case err != nil:
			last = err.Error()
		case len(got) == 1 && got[0] == want:
			t.Logf("prometheus: %s = %v", query, want)
			return
		default:
			last = raw
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %s never returned %v in 60s; last answer: %s", query, want, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// promInstant runs one instant query and returns the samples' values and
// the raw answer.
func promInstant(client *http.Client, base, query string) ([]float64, string, error) {
	resp, err := client.Get(base + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", err
	}
	var ans struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(raw, &ans); err != nil {
		return nil, string(raw), fmt.Errorf("decode %s: %w", raw, err)
	}
	if ans.Status != "success" || ans.Data.ResultType != "vector" {
		return nil, string(raw), fmt.Errorf("answer %s", raw)
	}
	var vals []float64
	for _, r := range ans.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, string(raw), fmt.Errorf("value %q: %w", s, err)
		}
		vals = append(vals, v)
	}
	return vals, string(raw), nil
}
