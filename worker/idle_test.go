package worker_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker"
)

// primaryStatus reads the primary's global statement counters.
func primaryStatus(t *testing.T, b *bundle) map[string]int64 {
	t.Helper()
	rows, err := b.primary.QueryContext(b.ctx, "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions','Com_select','Com_update','Com_insert','Com_replace','Com_delete','Com_insert_select','Com_update_multi','Com_delete_multi','Com_begin','Com_commit','Com_set_option')")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[string]int64{}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		m[k] = v
	}
	return m
}

// generalLog, when NQ_IDLE_BREAKDOWN is set, logs the primary's general
// log into its table for the window and returns a function that stops it
// and logs the statements per second, by kind (command and the start of
// its text). It is a diagnostic: the general log is global, so it also
// counts the statements of tests running beside this one.
func generalLog(t *testing.T, b *bundle) func(time.Duration) {
	t.Helper()
	if os.Getenv("NQ_IDLE_BREAKDOWN") == "" {
		return func(time.Duration) {}
	}
	for _, s := range []string{"SET GLOBAL log_output = 'TABLE'", "TRUNCATE mysql.general_log", "SET GLOBAL general_log = 1"} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	return func(window time.Duration) {
		if _, err := b.primary.ExecContext(b.ctx, "SET GLOBAL general_log = 0"); err != nil {
			t.Fatal(err)
		}
		rows, err := b.primary.QueryContext(b.ctx, `SELECT command_type, LEFT(REGEXP_REPLACE(CONVERT(argument USING utf8mb4), '\\s+', ' '), 60) AS k, COUNT(*)
 FROM mysql.general_log WHERE command_type NOT IN ('Connect', 'Quit') GROUP BY command_type, k ORDER BY COUNT(*) DESC`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var cmd, k string
			var n int
			if err := rows.Scan(&cmd, &k, &n); err != nil {
				t.Fatal(err)
			}
			t.Logf("%6.2f/s  %-8s %s", float64(n)/window.Seconds(), cmd, k)
		}
	}
}

// TestIdleProcessCost measures what an idle worker process (nothing due,
// production intervals: idle_wait 750ms, pause watch and lag heartbeat
// 250ms, registry refresh 5s, reaper 5s) costs the primary, as the delta of
// the primary's Questions (statements sent by clients; replication threads
// are not counted) over the window, less this test's own two SHOW STATUS
// reads; and that a topic requested while the process idles is picked up
// within a second. NQ_IDLE_BREAKDOWN=1 logs the statements by kind.
func TestIdleProcessCost(t *testing.T) {
	for _, c := range []struct {
		n        int
		throttle bool // [throttle] max_threads_running set: the probe reads Threads_running too
	}{{4, false}, {32, false}, {4, true}} {
		n := c.n
		name := fmt.Sprint(n)
		if c.throttle {
			name += "_throttle"
		}
		t.Run(name, func(t *testing.T) {
			b := setup(t, 8*time.Second)
			b.heartbeat = monitor.DefaultHeartbeatInterval
			if c.throttle {
				b.depsTweak = func(d *worker.Deps) {
					d.Throttle = &monitor.Throttle{Primary: d.Primary, Config: monitor.ThrottleConfig{MaxThreadsRunning: 1000}}
				}
			}
			p := b.startPool(t, 0, n, func(c *worker.Config, g *monitor.GateConfig) {
				c.IdleWait = worker.DefaultIdleWait
				g.SampleInterval = monitor.DefaultSampleInterval
			})
			// Let the start (registration, first claims, sweep) settle.
			time.Sleep(3 * time.Second)
			const window = 10 * time.Second
			stopLog := generalLog(t, b)
			before := primaryStatus(t, b)
			time.Sleep(window)
			after := primaryStatus(t, b)
			stopLog(window)
			var parts []string
			for k, v := range after {
				if d := v - before[k]; d > 0 && k != "Questions" {
					parts = append(parts, fmt.Sprintf("%s=%.1f/s", k, float64(d)/window.Seconds()))
				}
			}
			qps := float64(after["Questions"]-before["Questions"]-1) / window.Seconds()
			t.Logf("idle_queries_per_s_per_process instances=%d throttle=%v: %.2f (%s)", n, c.throttle, qps, strings.Join(parts, " "))
			// Per process, whatever the instance count: one probe per
			// idle_wait (1.33/s; it carries the pause read, the look for
			// expired leases and the position that proves the lag, so the
			// pause watch, the lag heartbeat and the reaper rest) and the
			// batched registry refresh (0.2/s). Before the probe it was
			// 10.5/s (claims 2/s, pause reads and heartbeats 4/s each);
			// before the idle park and the batched refresh 18/s with 4
			// instances and 74/s with 32. With the throttle's
			// Threads_running check on, the probe reads that too (the
			// throttle's own read was one more query per second).
			const limit = 2.0
			if qps > limit {
				t.Errorf("idle process with %d instances sent %.1f queries/s to the primary, want <= %.1f whatever the instance count", n, qps, limit)
			}

			// Idle rows stay fresh in the registry (the pool refreshes them
			// together), well inside the lease that marks them silent.
			if stale := b.count(t, "SELECT COUNT(*) FROM instance WHERE heartbeat_at < NOW(6) - INTERVAL 7 SECOND"); stale != 0 {
				t.Errorf("%d of %d idle instances not refreshed in the registry for 7s", stale, n)
			}

			// A newly due topic is picked up within a second.
			for k := 1; k <= 20; k++ {
				if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO src VALUES (1, ?, ?)", k, 1000+k); err != nil {
					t.Fatal(err)
				}
			}
			asked := time.Now()
			if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopeFull, Create: true}); err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-p.runs:
				if d := r.StartedAt.Add(r.Claim).Sub(asked); d > time.Second+500*time.Millisecond {
					t.Errorf("topic claimed %v after its request, want within 1s (+0.5s margin)", d)
				} else {
					t.Logf("topic claimed %v after its request", d)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("topic 1 not run in 60s")
			}
		})
	}
}

// TestPauseReachesAnIdleProcess: while a process idles, its pause watch
// does not read (the probe reads the pauses instead); a pause added then
// still stops its claims, within one idle_wait, and its resume lets the
// topic run. A probe that did not carry the pauses would claim the topic.
func TestPauseReachesAnIdleProcess(t *testing.T) {
	b := setup(t, 30*time.Second)
	p := b.startPool(t, 0, 4, func(c *worker.Config, g *monitor.GateConfig) {
		c.IdleWait = worker.DefaultIdleWait
		g.SampleInterval = monitor.DefaultSampleInterval
	})
	testdb.WaitFor(t, 30*time.Second, "every instance idle", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = ?", monitor.StateIdle) == 4
	})
	time.Sleep(2 * worker.DefaultIdleWait) // the pool probes now
	ps := &monitor.Pauses{Primary: b.primary, Schema: b.db}
	if _, err := ps.Add(b.ctx, &monitor.PauseParams{By: "test@host"}); err != nil {
		t.Fatal(err)
	}
	// One idle_wait and a margin for the probe in flight.
	time.Sleep(worker.DefaultIdleWait + 500*time.Millisecond)
	b.addTopics(t, 1, 1)
	if testdb.Poll(3*time.Second, func() bool { return b.count(t, "SELECT SUM(claim_token) FROM topic") > 0 }) {
		t.Fatal("an idle process claimed a topic under a pause added while it idled")
	}
	if _, err := ps.Resume(b.ctx, &monitor.ResumeParams{All: true, By: "test@host"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-p.runs:
		if r.Outcome != monitor.OutcomeDone {
			t.Fatalf("run after the resume: %s (%s)", r.Outcome, r.Error)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("topic not run in 60s after the resume")
	}
}
