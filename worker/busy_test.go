package worker_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/metrics"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

// TestBusyResultTable: a long query on the primary holds a published
// result table while the topic is recomputed. The publish retries its swap
// for longer than the lease (the heartbeat keeps the claim: nothing is
// reaped), then gives the claim back with "result table busy" and a
// back-off, leaving the old tables live and no staging table behind. Once
// the query is gone the topic is published on a later attempt.
func TestBusyResultTable(t *testing.T) {
	const lease = 2 * time.Second
	b := setup(t, lease)
	// Four tries, at 0, 2, 4 and 6 s: 7 s, over three leases; the reaper
	// looks every second (lease/2).
	b.transferTweak = func(c *transfer.Config) { c.SwapTries, c.SwapBackoff = 4, time.Second }
	b.addTopics(t, 1, 1)
	p := b.startPool(t, 0, 1, func(c *worker.Config, _ *monitor.GateConfig) { c.BackoffBase = time.Second })
	testdb.WaitFor(t, 30*time.Second, "the first publish of topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") == 1
	})
	v1 := checksum(t, b.primary, "R_1")

	// The report query: 60 s on R_1, on a connection of its own.
	holder, err := b.primary.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var holderID int64
	if err := holder.QueryRowContext(b.ctx, "SELECT CONNECTION_ID()").Scan(&holderID); err != nil {
		t.Fatal(err)
	}
	held := make(chan error, 1)
	go func() {
		var s, n int64
		held <- holder.QueryRowContext(b.ctx, "SELECT SLEEP(60), COUNT(*) FROM R_1").Scan(&s, &n)
	}()
	testdb.WaitFor(t, 10*time.Second, "the long query to hold R_1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND STATE = 'User sleep'", holderID) == 1
	})

	// New source data, and the application asks again.
	if _, err := b.primary.ExecContext(b.ctx, "UPDATE src SET v = v + 1 WHERE topic_id = 1"); err != nil {
		t.Fatal(err)
	}
	requested := time.Now()
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopeFull}); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 40*time.Second, "a run released with \"result table busy\"", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'failed' AND error LIKE '%result table busy: %R\\_1%'") == 1
	})
	// The procedure and the transfer take well under a second here: the
	// rest is the swap's tries.
	released := time.Since(requested)
	var attempts, running int
	var lastErr string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT attempts, running, last_error FROM topic WHERE id = 1").Scan(&attempts, &running, &lastErr); err != nil {
		t.Fatal(err)
	}
	t.Logf("released %v after the request: attempts %d, running %d, last error %q", released.Round(time.Millisecond), attempts, running, lastErr)
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome IN ('reaped', 'lost')"); n != 0 {
		t.Fatalf("%d runs reaped or lost while the swap retried: the claim was not kept alive", n)
	}
	if released < 3*lease {
		t.Fatalf("released %v after the request, want over three leases (%v): the swap's tries show the heartbeat holds the claim", released, 3*lease)
	}
	if attempts != 1 || !contains(lastErr, "result table busy") {
		t.Fatalf("topic after the give-up: attempts %d, last error %q; want 1 and \"result table busy\"", attempts, lastErr)
	}
	if got := checksum(t, b.primary, "R_1"); got != v1 {
		t.Fatal("R_1 changed on the primary although the publish gave up")
	}
	// The observer hears the error itself, so the metrics count the run
	// under nonqueue_publish_errors_total{reason="table_busy"}.
	reg := prometheus.NewRegistry()
	m, err := metrics.NewWorker(reg, metrics.WorkerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var busyErr error
	testdb.WaitFor(t, 5*time.Second, "the observer to hear the failed run", func() bool {
		select {
		case r := <-p.runs:
			m.ObserveRun(r)
			if r.Outcome == monitor.OutcomeFailed {
				busyErr = r.Err
				return true
			}
		default:
		}
		return false
	})
	if !errors.Is(busyErr, transfer.ErrTableBusy) {
		t.Errorf("the failed run's Err is %v, want one wrapping transfer.ErrTableBusy", busyErr)
	}
	if got := publishErrors(t, reg, metrics.ReasonTableBusy); got != 1 {
		t.Errorf("publish_errors_total{reason=table_busy} = %v after one busy publish, want 1", got)
	}
	testdb.WaitFor(t, 5*time.Second, "no staging or swapped-out table on the primary", func() bool {
		return tableCount(t, b.primary, b.db, "nqtmp\\_%") == 0 && tableCount(t, b.primary, b.db, "nqold\\_%") == 0
	})

	// The query ends; the topic is published on its next attempt.
	if _, err := b.primary.ExecContext(b.ctx, fmt.Sprintf("KILL QUERY %d", holderID)); err != nil {
		t.Fatal(err)
	}
	<-held
	testdb.WaitFor(t, 30*time.Second, "topic 1 published once R_1 is free", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") == 2
	})
	if got := checksum(t, b.primary, "R_1"); got == v1 {
		t.Fatal("R_1 on the primary is still the old version")
	}
	p.stop(t)
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running <> 0"); n != 0 {
		t.Fatal("topic 1 left running")
	}
}

// publishErrors reads nonqueue_publish_errors_total{reason} from reg.
func publishErrors(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "nonqueue_publish_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("nonqueue_publish_errors_total{reason=%q} not exported", reason)
	return 0
}
