package metrics

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
)

// fakeSources are the scrape-time sources a Worker reads, changeable by
// the test while the Worker is live.
type fakeSources struct {
	mu          sync.Mutex
	claims      queue.ClaimStats
	status      monitor.ReplicaStatus
	pauses      []monitor.Pause
	pausesFresh bool
}

func (f *fakeSources) inForce() ([]monitor.Pause, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pauses, f.pausesFresh
}

func (f *fakeSources) claimStats() queue.ClaimStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.claims
}

func (f *fakeSources) replicaStatus() monitor.ReplicaStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

func (f *fakeSources) set(fn func(*fakeSources)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

type workerBundle struct {
	reg *prometheus.Registry
	w   *Worker
	src *fakeSources
}

func setupWorker(t *testing.T) *workerBundle {
	t.Helper()
	src := &fakeSources{}
	reg := prometheus.NewRegistry()
	w, err := NewWorker(reg, WorkerConfig{ClaimStatsFunc: src.claimStats, ReplicaStatusFunc: src.replicaStatus, PausesFunc: src.inForce})
	if err != nil {
		t.Fatal(err)
	}
	return &workerBundle{reg: reg, w: w, src: src}
}

// families gathers reg into a map by name.
func families(t *testing.T, reg prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// find returns the metric of family name whose labels include want, or nil.
func find(fams map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	mf := fams[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		return m
	}
	return nil
}

// TestWorkerRuns: runs are counted by outcome, phase durations land in
// the right histogram (unreached phases are not observed), bytes add up.
func TestWorkerRuns(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	b.w.ObserveRun(&monitor.Run{Outcome: monitor.OutcomeDone, Bytes: 1000,
		Claim: 2 * time.Millisecond, LagWait: time.Millisecond, Proc: 3 * time.Second, Transfer: 40 * time.Millisecond, Publish: 5 * time.Millisecond})
	b.w.ObserveRun(&monitor.Run{Outcome: monitor.OutcomeDone, Bytes: 500,
		Claim: time.Millisecond, LagWait: time.Millisecond, Proc: time.Second, Transfer: 20 * time.Millisecond, Publish: 5 * time.Millisecond})
	// Failed in the procedure: transfer and publish never happened.
	b.w.ObserveRun(&monitor.Run{Outcome: monitor.OutcomeFailed, Claim: time.Millisecond, LagWait: time.Millisecond, Proc: 700 * time.Second})
	b.w.ObserveRun(&monitor.Run{})
	b.w.ObserveRun(nil)

	for outcome, want := range map[string]float64{"done": 2, "failed": 1, "parked": 0, "released": 0, "lost": 0, "unknown": 1} {
		if got := testutil.ToFloat64(b.w.runs.WithLabelValues(outcome)); got != want {
			t.Errorf("runs_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if got := testutil.ToFloat64(b.w.bytes); got != 1500 {
		t.Errorf("bytes_shipped_total = %v, want 1500", got)
	}
	fams := families(t, b.reg)
	for phase, want := range map[string]uint64{"claim": 3, "lag_wait": 3, "procedure": 3, "transfer": 2, "publish": 2} {
		m := find(fams, "nonqueue_run_phase_duration_seconds", map[string]string{"phase": phase})
		if m == nil {
			t.Fatalf("no histogram for phase %s", phase)
		}
		if got := m.GetHistogram().GetSampleCount(); got != want {
			t.Errorf("phase %s: %d observations, want %d", phase, got, want)
		}
	}
	proc := find(fams, "nonqueue_run_phase_duration_seconds", map[string]string{"phase": "procedure"}).GetHistogram()
	if got := proc.GetSampleSum(); math.Abs(got-704) > 1e-9 {
		t.Errorf("procedure sum = %v s, want 704", got)
	}
	// 700 s is past the last bucket (600 s): only +Inf holds it.
	buckets := proc.GetBucket()
	if last := buckets[len(buckets)-1]; last.GetUpperBound() != 600 || last.GetCumulativeCount() != 2 {
		t.Errorf("last bucket %v holds %d, want 600 holding 2", last.GetUpperBound(), last.GetCumulativeCount())
	}
	if first := buckets[0]; first.GetUpperBound() != 0.001 {
		t.Errorf("first bucket %v, want 0.001", first.GetUpperBound())
	}
}

// TestWorkerPublishErrors: a run counts under the reason of the transfer
// error it wraps, however deep (the worker wraps it again), a lost run
// that was not fenced as claim_lost, and any other run not at all; every
// reason is exported at zero from the start.
func TestWorkerPublishErrors(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	wrap := func(err error) error { return fmt.Errorf("transfer: ship topic 7: %w", err) }
	for _, r := range []*monitor.Run{
		{Outcome: monitor.OutcomeFailed, Err: wrap(fmt.Errorf("%w: app.result: 14 tries", transfer.ErrTableBusy))},
		{Outcome: monitor.OutcomeParked, Err: wrap(transfer.ErrTableBusy)},
		{Outcome: monitor.OutcomeFailed, Err: wrap(transfer.ErrStalled)},
		{Outcome: monitor.OutcomeReleased, Err: fmt.Errorf("replica: %w", transfer.ErrResultsBusy)},
		{Outcome: monitor.OutcomeLost, Err: wrap(transfer.ErrFenced)},
		{Outcome: monitor.OutcomeLost, Err: context.Canceled},
		{Outcome: monitor.OutcomeFailed, Err: errors.New("procedure: Error 1644: no data")},
		{Outcome: monitor.OutcomeDone},
	} {
		b.w.ObserveRun(r)
	}
	want := `# HELP nonqueue_publish_errors_total Runs of this process that published nothing because of a publish, lock or transfer error, by reason (table_busy, lock_timeout, results_busy, fenced, claim_lost, stalled, checksum, host_key); also counted in runs_total.
# TYPE nonqueue_publish_errors_total counter
nonqueue_publish_errors_total{reason="checksum"} 0
nonqueue_publish_errors_total{reason="claim_lost"} 1
nonqueue_publish_errors_total{reason="fenced"} 1
nonqueue_publish_errors_total{reason="host_key"} 0
nonqueue_publish_errors_total{reason="lock_timeout"} 0
nonqueue_publish_errors_total{reason="results_busy"} 1
nonqueue_publish_errors_total{reason="stalled"} 1
nonqueue_publish_errors_total{reason="table_busy"} 2
`
	if err := testutil.GatherAndCompare(b.reg, strings.NewReader(want), "nonqueue_publish_errors_total"); err != nil {
		t.Fatal(err)
	}
}

// TestWorkerInstanceStates: nonqueue_instances counts each instance in its
// latest state only, and every known state is exported at zero.
func TestWorkerInstanceStates(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	b.w.SetInstanceState(101, monitor.StateIdle)
	b.w.SetInstanceState(102, monitor.StateIdle)
	b.w.SetInstanceState(103, monitor.StateRunning)
	b.w.SetInstanceState(102, monitor.StateRunning) // moves, not adds
	b.w.SetInstanceState(104, monitor.StateLagWait)
	want := `# HELP nonqueue_instances Worker instances of this process per state (starting, idle, waiting for lag, replica stopped, throttled, paused, running, stopping, exited).
# TYPE nonqueue_instances gauge
nonqueue_instances{state="exited"} 0
nonqueue_instances{state="idle"} 1
nonqueue_instances{state="paused"} 0
nonqueue_instances{state="replica stopped"} 0
nonqueue_instances{state="running"} 2
nonqueue_instances{state="starting"} 0
nonqueue_instances{state="stopping"} 0
nonqueue_instances{state="throttled"} 0
nonqueue_instances{state="waiting for lag"} 1
`
	if err := testutil.GatherAndCompare(b.reg, strings.NewReader(want), "nonqueue_instances"); err != nil {
		t.Fatal(err)
	}
}

// TestWorkerThrottled: nonqueue_throttled is 1 for each reason the
// source reports at scrape time and 0 for every other known reason.
func TestWorkerThrottled(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	var reasons []string
	if _, err := NewWorker(reg, WorkerConfig{ThrottledFunc: func() []string { return reasons }}); err != nil {
		t.Fatal(err)
	}
	head := `# HELP nonqueue_throttled 1 while this reason holds this process's work back (no claims; no publishes for the primary's: threads_running, throttle_url; no claims for the lag gate's: replica_lag, replica_stopped), 0 otherwise.
# TYPE nonqueue_throttled gauge
`
	for _, c := range []struct {
		reasons []string
		want    string
	}{
		{nil, `nonqueue_throttled{reason="replica_lag"} 0
nonqueue_throttled{reason="replica_stopped"} 0
nonqueue_throttled{reason="threads_running"} 0
nonqueue_throttled{reason="throttle_url"} 0
`},
		{[]string{monitor.ThrottleThreadsRunning, monitor.ThrottleURL, monitor.ThrottleReplicaLag}, `nonqueue_throttled{reason="replica_lag"} 1
nonqueue_throttled{reason="replica_stopped"} 0
nonqueue_throttled{reason="threads_running"} 1
nonqueue_throttled{reason="throttle_url"} 1
`},
	} {
		reasons = c.reasons
		if err := testutil.GatherAndCompare(reg, strings.NewReader(head+c.want), "nonqueue_throttled"); err != nil {
			t.Errorf("%v: %v", c.reasons, err)
		}
	}
}

// TestWorkerPendingDrops: nonqueue_pending_drops is the dropper's count
// at scrape time.
func TestWorkerPendingDrops(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	var pending atomic.Int64
	if _, err := NewWorker(reg, WorkerConfig{PendingDropsFunc: func() int { return int(pending.Load()) }}); err != nil {
		t.Fatal(err)
	}
	head := `# HELP nonqueue_pending_drops Tables on the primary (swapped out, or a failed run's staging tables) whose DROP failed and waits for a retry; after 15 minutes of retries they are left to the periodic sweep.
# TYPE nonqueue_pending_drops gauge
`
	for _, n := range []int64{0, 130, 0} {
		pending.Store(n)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(head+fmt.Sprintf("nonqueue_pending_drops %d\n", n)), "nonqueue_pending_drops"); err != nil {
			t.Errorf("%d pending: %v", n, err)
		}
	}
}

// TestWorkerClaimsAndReaped: claims come from the queue's counters at
// scrape time (no copy to drift), reaped leases from the reaper hook.
func TestWorkerClaimsAndReaped(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	b.src.set(func(f *fakeSources) { f.claims = queue.ClaimStats{Won: 7, Lost: 2, Empty: 40, Combined: 3} })
	b.w.ObserveReaped(queue.Reaped{TopicID: 1})
	b.w.ObserveReaped(queue.Reaped{TopicID: 2})
	want := `# HELP nonqueue_claims_total Claim attempts of this process by result: won (got a topic), lost (compare-and-set lost: deadlock or lock-wait retry, or taken back before read), empty (nothing due).
# TYPE nonqueue_claims_total counter
nonqueue_claims_total{result="empty"} 40
nonqueue_claims_total{result="lost"} 2
nonqueue_claims_total{result="won"} 7
# HELP nonqueue_claims_combined_total Claims won through a combined statement (claims of this process that arrived together); a share of won.
# TYPE nonqueue_claims_combined_total counter
nonqueue_claims_combined_total 3
# HELP nonqueue_leases_reaped_total Claims whose lease ran out that this process's reaper took back.
# TYPE nonqueue_leases_reaped_total counter
nonqueue_leases_reaped_total 2
`
	if err := testutil.GatherAndCompare(b.reg, strings.NewReader(want), "nonqueue_claims_total", "nonqueue_claims_combined_total", "nonqueue_leases_reaped_total"); err != nil {
		t.Fatal(err)
	}
	b.src.set(func(f *fakeSources) { f.claims.Won = 8 })
	fams := families(t, b.reg)
	if got := find(fams, "nonqueue_claims_total", map[string]string{"result": "won"}).GetCounter().GetValue(); got != 8 {
		t.Errorf("claims won after a later claim = %v, want 8", got)
	}
}

// TestWorkerReplication: each case says what the gate's last sample was
// and which replication series a scrape must show.
func TestWorkerReplication(t *testing.T) {
	t.Parallel()
	now := time.Now()
	cases := []struct {
		name      string
		status    monitor.ReplicaStatus
		lag       float64 // NaN: absent
		io, sqlTh float64 // NaN: absent
	}{
		// Before the first sample, or when the status query failed:
		// nothing is known, nothing is exported (not a misleading 0).
		{"no sample", monitor.ReplicaStatus{}, math.NaN(), math.NaN(), math.NaN()},
		// Healthy: both threads run, lag measured.
		{"healthy", monitor.ReplicaStatus{Configured: true, IORunning: true, SQLRunning: true, LagKnown: true, Lag: 1500 * time.Millisecond, SampledAt: now}, 1.5, 1, 1},
		// SQL thread stopped: running{sql}=0, lag still the measured one.
		{"sql stopped", monitor.ReplicaStatus{Configured: true, IORunning: true, LagKnown: true, Lag: 3 * time.Second, SampledAt: now}, 3, 1, 0},
		// Heartbeat row not replicated yet: lag unknown, so absent.
		{"lag unknown", monitor.ReplicaStatus{Configured: true, IORunning: true, SQLRunning: true, SampledAt: now}, math.NaN(), 1, 1},
		// A sample older than ReplicaStaleAfter (a stopped gate) proves
		// nothing any more.
		{"stale", monitor.ReplicaStatus{Configured: true, IORunning: true, SQLRunning: true, LagKnown: true, SampledAt: now.Add(-time.Hour)}, math.NaN(), math.NaN(), math.NaN()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setupWorker(t)
			b.src.set(func(f *fakeSources) { f.status = tc.status })
			fams := families(t, b.reg)
			check := func(what string, m *dto.Metric, want float64) {
				t.Helper()
				switch {
				case math.IsNaN(want) && m != nil:
					t.Errorf("%s = %v, want absent", what, m.GetGauge().GetValue())
				case !math.IsNaN(want) && m == nil:
					t.Errorf("%s absent, want %v", what, want)
				case !math.IsNaN(want) && m.GetGauge().GetValue() != want:
					t.Errorf("%s = %v, want %v", what, m.GetGauge().GetValue(), want)
				}
			}
			check("lag", find(fams, "nonqueue_replication_lag_seconds", nil), tc.lag)
			check("running{io}", find(fams, "nonqueue_replication_running", map[string]string{"thread": "io"}), tc.io)
			check("running{sql}", find(fams, "nonqueue_replication_running", map[string]string{"thread": "sql"}), tc.sqlTh)
		})
	}
}

// TestWorkerOptionalSources: without sources the claim and replication
// metrics are left out, the rest is there.
func TestWorkerOptionalSources(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := NewWorker(reg, WorkerConfig{}); err != nil {
		t.Fatal(err)
	}
	fams := families(t, reg)
	for _, name := range []string{"nonqueue_runs_total", "nonqueue_run_phase_duration_seconds", "nonqueue_bytes_shipped_total",
		"nonqueue_leases_reaped_total", "nonqueue_instances"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	for _, name := range []string{"nonqueue_claims_total", "nonqueue_replication_running", "nonqueue_paused", "nonqueue_pending_drops"} {
		if fams[name] != nil {
			t.Errorf("%s present without a source", name)
		}
	}
}

// TestWorkerPaused: nonqueue_paused{scope} says which kinds of pause
// cover the process at scrape time, every scope present at 0 or 1, and
// "unknown" while the pauses cannot be read (the worker claims nothing).
func TestWorkerPaused(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	gauge := func(scope string) float64 {
		m := find(families(t, b.reg), "nonqueue_paused", map[string]string{"scope": scope})
		if m == nil {
			t.Fatalf("nonqueue_paused{scope=%q} missing", scope)
		}
		return m.GetGauge().GetValue()
	}
	check := func(what string, want map[string]float64) {
		t.Helper()
		for _, s := range PauseScopes() {
			if got := gauge(s); got != want[s] {
				t.Errorf("%s: nonqueue_paused{scope=%q} = %v, want %v", what, s, got, want[s])
			}
		}
	}
	check("before the first read", map[string]float64{"unknown": 1})
	b.src.set(func(f *fakeSources) { f.pausesFresh = true })
	check("no pause", nil)
	p5 := int64(5)
	b.src.set(func(f *fakeSources) {
		f.pauses = []monitor.Pause{{ID: 1}, {ID: 2, Scope: monitor.PauseScope{ReplicaServerID: 1001}}, {ID: 3, Scope: monitor.PauseScope{BelowPriority: &p5}}}
	})
	check("three kinds", map[string]float64{"all": 1, "replica": 1, "below_priority": 1})
	b.src.set(func(f *fakeSources) { f.pauses = f.pauses[2:]; f.pausesFresh = false })
	check("stale, a priority pause last known", map[string]float64{"below_priority": 1, "unknown": 1})
}

// TestWorkerTwiceInOneRegistry: a second Worker in the same registry is an
// error, and the failed attempt leaves the registry as it was.
func TestWorkerTwiceInOneRegistry(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	before := len(families(t, b.reg))
	_, err := NewWorker(b.reg, WorkerConfig{ClaimStatsFunc: b.src.claimStats})
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("second NewWorker: %v, want AlreadyRegisteredError", err)
	}
	if after := len(families(t, b.reg)); after != before {
		t.Errorf("%d families after the failed registration, want %d", after, before)
	}
}

// TestLint: every metric this package defines passes client_golang's
// linter (the rules promtool check metrics applies: _total on counters,
// base units, help text).
func TestLint(t *testing.T) {
	t.Parallel()
	b := setupWorker(t)
	b.src.set(func(f *fakeSources) {
		f.status = monitor.ReplicaStatus{Configured: true, IORunning: true, SQLRunning: true, LagKnown: true, SampledAt: time.Now()}
	})
	b.w.ObserveRun(&monitor.Run{Outcome: monitor.OutcomeDone, Claim: time.Millisecond, Bytes: 1})
	b.reg.MustRegister(newTopicCollector(fakeCounter(map[string]int64{"due": 3}, time.Second, nil), time.Second, nil))
	problems, err := testutil.GatherAndLint(b.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func fakeCounter(counts map[string]int64, oldest time.Duration, err error) stateCounter {
	return func(context.Context) (map[string]int64, time.Duration, error) {
		if err != nil {
			return nil, 0, err
		}
		return counts, oldest, nil
	}
}

// TestTopicCollector: a successful query exports every state (missing
// ones at zero) and the backlog's age; a failed one exports success 0, no
// topic gauges (not zeros), and logs the error.
func TestTopicCollector(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newTopicCollector(fakeCounter(map[string]int64{
		queue.StateCountDue: 5, queue.StateCountRunning: 2, queue.StateCountIdle: 1000, queue.StateCountRequired: 7,
	}, 90*time.Second, nil), time.Second, nil))
	want := `# HELP nonqueue_oldest_due_age_seconds How long the oldest due topic has been due, on the primary's clock; 0 when none is due.
# TYPE nonqueue_oldest_due_age_seconds gauge
nonqueue_oldest_due_age_seconds 90
# HELP nonqueue_topic_query_success 1 if this scrape's topic count query on the primary succeeded, 0 if it failed (the topic gauges are then absent).
# TYPE nonqueue_topic_query_success gauge
nonqueue_topic_query_success 1
# HELP nonqueue_topics Topics in the topic table per state: due, running, backoff, scheduled, parked, inactive and idle partition the table; required counts every requested topic and overlaps them.
# TYPE nonqueue_topics gauge
nonqueue_topics{state="backoff"} 0
nonqueue_topics{state="due"} 5
nonqueue_topics{state="idle"} 1000
nonqueue_topics{state="inactive"} 0
nonqueue_topics{state="parked"} 0
nonqueue_topics{state="required"} 7
nonqueue_topics{state="running"} 2
nonqueue_topics{state="scheduled"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"nonqueue_topics", "nonqueue_oldest_due_age_seconds", "nonqueue_topic_query_success"); err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	failing := prometheus.NewRegistry()
	failing.MustRegister(newTopicCollector(fakeCounter(nil, 0, errors.New("primary gone")), time.Second, logger))
	fams := families(t, failing)
	if fams["nonqueue_topics"] != nil || fams["nonqueue_oldest_due_age_seconds"] != nil {
		t.Error("topic gauges exported after a failed query")
	}
	if m := find(fams, "nonqueue_topic_query_success", nil); m == nil || m.GetGauge().GetValue() != 0 {
		t.Errorf("query success after a failure: %v, want 0", m)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "primary gone") {
		t.Errorf("failure not logged: %q", logs.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestTopicCollectorTimeout: a query that hangs is cut off at the
// collector's timeout, so a slow primary cannot hang the scrape.
func TestTopicCollectorTimeout(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	reg.MustRegister(newTopicCollector(func(ctx context.Context) (map[string]int64, time.Duration, error) {
		<-ctx.Done()
		return nil, 0, ctx.Err()
	}, 100*time.Millisecond, nil))
	start := time.Now()
	fams := families(t, reg)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("scrape took %v with a 100ms query timeout", d)
	}
	if m := find(fams, "nonqueue_topic_query_success", nil); m == nil || m.GetGauge().GetValue() != 0 {
		t.Errorf("query success after a timeout: %v, want 0", m)
	}
	if m := find(fams, "nonqueue_topic_query_duration_seconds", nil); m == nil || m.GetGauge().GetValue() < 0.09 {
		t.Errorf("query duration after a 100ms timeout: %v", m)
	}
}

// TestHandler: Handler serves the registry in the text format with the
// process and Go collectors of NewRegistry and the handler's own metrics.
func TestHandler(t *testing.T) {
	t.Parallel()
	reg := NewRegistry()
	w, err := NewWorker(reg, WorkerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	w.ObserveRun(&monitor.Run{Outcome: monitor.OutcomeDone, Claim: time.Millisecond})
	srv := httptest.NewServer(Handler(reg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for name, typ := range map[string]dto.MetricType{
		"nonqueue_runs_total":                    dto.MetricType_COUNTER,
		"nonqueue_run_phase_duration_seconds":    dto.MetricType_HISTOGRAM,
		"go_goroutines":                          dto.MetricType_GAUGE,
		"process_cpu_seconds_total":              dto.MetricType_COUNTER,
		"promhttp_metric_handler_requests_total": dto.MetricType_COUNTER,
	} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		} else if fams[name].GetType() != typ {
			t.Errorf("%s is a %v, want %v", name, fams[name].GetType(), typ)
		}
	}
	if got := find(fams, "nonqueue_runs_total", map[string]string{"outcome": "done"}).GetCounter().GetValue(); got != 1 {
		t.Errorf("runs_total{outcome=done} = %v, want 1", got)
	}
}
