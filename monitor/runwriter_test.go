package monitor_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// history creates nonqueue's meta tables (queue's DDL) in the test's
// database and returns a History on them.
func (b *bundle) history(t *testing.T) *monitor.History {
	t.Helper()
	for _, s := range (queue.Config{Schema: b.name, MetaSchema: b.name}).WithDefaults().DDL() {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return &monitor.History{Primary: b.primary, Schema: b.name}
}

func (b *bundle) runCount(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM run").Scan(&n); err != nil {
		t.Fatalf("count runs: %v", err)
	}
	return n
}

// runRow is a run as written, phases in microseconds.
type runRow struct {
	topic, instance             int64
	replica, outcome            string
	token                       uint64
	scope                       int
	errText, logPath            sql.NullString
	bytes                       int64
	started, finished           time.Time
	claim, lag, proc, xfer, pub int64
}

// TestRunWriterBatches: runs recorded through a RunWriter with a long delay
// wait in it, and Close writes them all, each as recorded; finished_at is
// the run's FinishedAt (on the primary's clock), not the time of the write.
func TestRunWriterBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	h := b.history(t)
	w := monitor.NewRunWriter(h, testLogger(t), time.Minute)
	outcomes := []string{monitor.OutcomeDone, monitor.OutcomeFailed, monitor.OutcomeParked, monitor.OutcomeReleased, monitor.OutcomeLost}
	const early = 2 // the run that ended 2s before the others
	start := time.Now().Add(-3 * time.Second)
	for i, o := range outcomes {
		ms := time.Duration(i+1) * time.Millisecond
		r := &monitor.Run{
			TopicID: int64(11 + i), InstanceID: 1101, Replica: "replica1", ClaimToken: uint64(100 + i), Scope: 2,
			Outcome: o, Bytes: int64(1000 * (i + 1)), StartedAt: start,
			Claim: ms, LagWait: 2 * ms, Proc: 3 * ms, Transfer: 4 * ms, Publish: 5 * ms,
		}
		if o == monitor.OutcomeFailed {
			r.Error, r.LogPath = "procedure: calc failed", "/var/log/nonqueue/12.log"
		}
		if i == early {
			r.FinishedAt = time.Now().Add(-2 * time.Second)
		}
		w.Record(r)
		if r.FinishedAt.IsZero() {
			t.Errorf("Record left run %d without an end time", i)
		}
	}
	// A batch waits for company up to a minute: nothing is written yet.
	time.Sleep(100 * time.Millisecond)
	if n := b.runCount(t); n != 0 {
		t.Fatalf("%d runs written before the delay or Close, want 0", n)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	rows, err := b.primary.QueryContext(b.ctx, `SELECT topic_id, instance_id, replica, claim_token, scope, outcome, error, log_path,
 bytes_shipped, started_at, finished_at, claim_us, lag_wait_us, proc_us, transfer_us, publish_us FROM run ORDER BY topic_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []runRow
	for rows.Next() {
		var r runRow
		if err := rows.Scan(&r.topic, &r.instance, &r.replica, &r.token, &r.scope, &r.outcome, &r.errText, &r.logPath,
			&r.bytes, &r.started, &r.finished, &r.claim, &r.lag, &r.proc, &r.xfer, &r.pub); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(outcomes) {
		t.Fatalf("%d runs written, want %d: %+v", len(got), len(outcomes), got)
	}
	for i, r := range got {
		us := int64(1000 * (i + 1))
		if r.topic != int64(11+i) || r.instance != 1101 || r.replica != "replica1" || r.token != uint64(100+i) || r.scope != 2 ||
			r.outcome != outcomes[i] || r.bytes != us {
			t.Errorf("run %d: %+v", i, r)
		}
		if r.claim != us || r.lag != 2*us || r.proc != 3*us || r.xfer != 4*us || r.pub != 5*us {
			t.Errorf("run %d phases (µs): claim %d, lag wait %d, proc %d, transfer %d, publish %d; want %d, %d, %d, %d, %d",
				i, r.claim, r.lag, r.proc, r.xfer, r.pub, us, 2*us, 3*us, 4*us, 5*us)
		}
		failed := outcomes[i] == monitor.OutcomeFailed
		if failed != r.errText.Valid || failed != r.logPath.Valid ||
			(failed && (r.errText.String != "procedure: calc failed" || r.logPath.String != "/var/log/nonqueue/12.log")) {
			t.Errorf("run %d: error %+v, log path %+v", i, r.errText, r.logPath)
		}
		if r.started.After(r.finished) {
			t.Errorf("run %d started at %v, after it finished at %v", i, r.started, r.finished)
		}
	}
	// The four runs that ended at Record, within moments of each other and
	// about 3s after they started; the early one 2s before them.
	ref := got[0].finished
	for i, r := range got {
		ran := r.finished.Sub(r.started)
		if i == early {
			if d := ref.Sub(r.finished); d < 1500*time.Millisecond || d > 2500*time.Millisecond {
				t.Errorf("run %d finished %v before the others, want 2s ± 0.5s", i, d)
			}
			if ran < 500*time.Millisecond || ran > 1500*time.Millisecond {
				t.Errorf("run %d ran %v, want 1s ± 0.5s", i, ran)
			}
			continue
		}
		if d := r.finished.Sub(ref); d < -500*time.Millisecond || d > 500*time.Millisecond {
			t.Errorf("run %d finished %v after run 0, want within 0.5s", i, d)
		}
		if ran < 2500*time.Millisecond || ran > 3500*time.Millisecond {
			t.Errorf("run %d ran %v, want 3s ± 0.5s", i, ran)
		}
	}
}

// TestRunWriterFlushesAfterDelay: with a short delay a lone run is written
// without Close.
func TestRunWriterFlushesAfterDelay(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	h := b.history(t)
	w := monitor.NewRunWriter(h, testLogger(t), 20*time.Millisecond)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	t0 := time.Now()
	w.Record(&monitor.Run{TopicID: 7, InstanceID: 1101, Outcome: monitor.OutcomeDone, StartedAt: t0.Add(-time.Second)})
	if !testdb.Poll(5*time.Second, func() bool { return b.runCount(t) == 1 }) {
		t.Fatalf("the run was not written within 5s of Record (%d rows)", b.runCount(t))
	}
	t.Logf("written %v after Record", time.Since(t0))
	var topic int64
	var outcome string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT topic_id, outcome FROM run").Scan(&topic, &outcome); err != nil || topic != 7 || outcome != monitor.OutcomeDone {
		t.Fatalf("run row: topic %d, outcome %q (%v)", topic, outcome, err)
	}
}

// TestRecordRunsMany: one statement carries more rows than a RunWriter
// batch, and RecordRun still writes one.
func TestRecordRunsMany(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	h := b.history(t)
	runs := make([]*monitor.Run, 300)
	for i := range runs {
		runs[i] = &monitor.Run{TopicID: int64(i + 1), InstanceID: 1101, Outcome: monitor.OutcomeDone, StartedAt: time.Now()}
	}
	if err := h.RecordRuns(b.ctx, runs); err != nil {
		t.Fatal(err)
	}
	if err := h.RecordRun(b.ctx, &monitor.Run{TopicID: 1000, InstanceID: 1101, Outcome: monitor.OutcomeLost, StartedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var n, topics int
	if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*), COUNT(DISTINCT topic_id) FROM run").Scan(&n, &topics); err != nil || n != 301 || topics != 301 {
		t.Fatalf("%d rows for %d topics (%v), want 301", n, topics, err)
	}
	// A failed statement names how many runs it carried.
	bad := &monitor.History{Primary: b.primary, Schema: b.name + "_missing"}
	if err := bad.RecordRuns(b.ctx, runs[:2]); err == nil || !strings.Contains(err.Error(), "record 2 runs") {
		t.Fatalf("RecordRuns into a missing schema: %v", err)
	}
}

// TestRunWriterAfterClose: a run recorded after Close (a straggler) is
// written at once instead of panicking on the closed queue.
func TestRunWriterAfterClose(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	w := monitor.NewRunWriter(b.history(t), testLogger(t), time.Minute)
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	w.Record(&monitor.Run{TopicID: 77, InstanceID: 1101, Outcome: monitor.OutcomeDone, StartedAt: time.Now()})
	if n := b.runCount(t); n != 1 {
		t.Fatalf("%d runs after a Record following Close, want 1", n)
	}
}
