package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

// Periodic refresh (issue 14, part 3), run as an operator runs it: worker
// processes (this test binary as `nonqueue work`) on both replicas of the
// sandbox, configured with [topics] refresh_interval.

// TestRefreshConfigKeys: [topics] refresh_interval is off at "0s" (an
// explicit zero means itself here) and at least a second otherwise;
// refresh_scope is partial or full; [topics.columns] refresh_interval maps
// the column. Each error names its key.
func TestRefreshConfigKeys(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n[topics]\n"
	for _, tc := range []struct {
		body, key string // key "" = valid
		every     time.Duration
		scope     string
	}{
		{"", "", 0, "partial"},
		{"refresh_interval = \"0s\"\n", "", 0, "partial"},
		{"refresh_interval = \"2s\"\nrefresh_scope = \"full\"\n", "", 2 * time.Second, "full"},
		{"refresh_interval = \"1h\"\n[topics.columns]\nrefresh_interval = \"influencerRefreshSecs\"\n", "", time.Hour, "partial"},
		{"refresh_interval = \"500ms\"\n", "topics.refresh_interval", 0, ""},
		{"refresh_interval = \"-1s\"\n", "topics.refresh_interval", 0, ""},
		{"refresh_scope = \"hourly\"\n", "topics.refresh_scope", 0, ""},
		{"[topics.columns]\nrefresh_interval = \"bad name\"\n", "topics.columns.refresh_interval", 0, ""},
	} {
		c, err := LoadConfig(writeFile(t, base+tc.body))
		if tc.key == "" {
			if err != nil || c.Topics.RefreshInterval != tc.every || c.Topics.RefreshScope != tc.scope {
				t.Errorf("%q: %v; want refresh every %v, scope %s", tc.body, err, tc.every, tc.scope)
			}
			continue
		}
		var ce *ConfigError
		var qe *queue.ConfigError
		switch {
		case errors.As(err, &ce) && ce.Key == tc.key:
		case errors.As(err, &qe) && "topics."+qe.Field == tc.key:
		default:
			t.Errorf("%q: %v, want an error on %s", tc.body, err, tc.key)
		}
		if err != nil && !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: %q does not name %s", tc.body, err, tc.key)
		}
	}
}

// refreshConfig writes b.config for replica i with [topics]
// refresh_interval = every and the worker's back-off base set.
func (b *workBundle) refreshConfig(t *testing.T, i int, every, backoff string) string {
	t.Helper()
	path := b.config(t, i, "")
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(body), "[topics]\n", "[topics]\nrefresh_interval = \""+every+"\"\n", 1)
	s = strings.Replace(s, "backoff_base = \"1h\"", "backoff_base = \""+backoff+"\"", 1)
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// histRun is one row of the run history, its times in microseconds after
// the test's origin on the primary's clock.
type histRun struct {
	topic            int64
	outcome, replica string
	scope            int
	token            uint64
	start, finish    int64 // µs after the origin; start is -1 when the row has none (reaped)
	claim            int64 // µs the claim took
}

// history reads the run history of topics from..to, oldest start first per
// topic, times relative to origin (a DATETIME(6) string of the primary).
func (b *workBundle) history(t *testing.T, origin string, from, to int64) []histRun {
	t.Helper()
	rows, err := b.primary.QueryContext(b.ctx, `SELECT topic_id, outcome, replica, scope, claim_token,
 COALESCE(TIMESTAMPDIFF(MICROSECOND, ?, started_at), -1), TIMESTAMPDIFF(MICROSECOND, ?, finished_at), claim_us
 FROM run WHERE topic_id BETWEEN ? AND ? ORDER BY topic_id, COALESCE(started_at, finished_at), id`, origin, origin, from, to)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []histRun
	for rows.Next() {
		var r histRun
		if err := rows.Scan(&r.topic, &r.outcome, &r.replica, &r.scope, &r.token, &r.start, &r.finish, &r.claim); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (b *workBundle) now(t *testing.T) string {
	t.Helper()
	var s string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT CAST(NOW(6) AS CHAR)").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// checkNoOverlap fails if two runs of a topic overlap: every run that has a
// start began after the previous one of its topic finished, with a newer
// claim token. It returns the runs grouped by topic.
func checkNoOverlap(t *testing.T, runs []histRun) map[int64][]histRun {
	t.Helper()
	by := map[int64][]histRun{}
	for _, r := range runs {
		if r.start < 0 {
			continue // a reap's record: no run of its own
		}
		if prev := by[r.topic]; len(prev) > 0 {
			p := prev[len(prev)-1]
			if r.start < p.finish {
				t.Errorf("topic %d: a run (token %d) started %.3fs before the previous one (token %d) finished",
					r.topic, r.token, float64(p.finish-r.start)/1e6, p.token)
			}
			if r.token <= p.token {
				t.Errorf("topic %d: claim token %d after %d", r.topic, r.token, p.token)
			}
		}
		by[r.topic] = append(by[r.topic], r)
	}
	return by
}

// TestPeriodicRefresh: 20 topics with a 2 s refresh interval, requested
// once, for 30 s on two replicas (one worker process of four instances
// each). Every topic runs again and again on its own: the number of runs
// of each is within ±1 of 30 s ÷ (2 s + its mean run time), the first run
// has the request's full scope and the refreshes the configured partial
// one, no two runs of a topic overlap, none starts earlier than the
// interval after the previous one's finish (nothing fires twice), and the
// procedure ran exactly once per recorded run. `nonqueue status` shows
// the setting.
func TestPeriodicRefresh(t *testing.T) {
	const (
		topics   = 20
		interval = 2 * time.Second
		window   = 30 * time.Second
	)
	b := setupWork(t)
	var vals []string
	ids := make([]int64, topics)
	for i := range ids {
		ids[i] = int64(i + 1)
		for k := 1; k <= 10; k++ {
			vals = append(vals, fmt.Sprintf("(%d, %d, %d)", ids[i], k, k))
		}
	}
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO src VALUES "+strings.Join(vals, ", ")); err != nil {
		t.Fatal(err)
	}
	workers := []*proc{
		startWorker(t, b.refreshConfig(t, 0, "2s", "1h"), "--instances", "4"),
		startWorker(t, b.refreshConfig(t, 1, "2s", "1h"), "--instances", "4"),
	}
	testdb.WaitFor(t, 60*time.Second, "8 instances idle", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'idle'") == 8
	})
	origin := b.now(t)
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull, Create: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(window)
	for _, w := range workers {
		w.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, w := range workers {
		if err := w.wait(t, 30*time.Second); err != nil {
			t.Fatalf("worker exit after SIGTERM: %v\n%s", err, w.out)
		}
	}

	runs := b.history(t, origin, 1, topics)
	by := checkNoOverlap(t, runs)
	outcomes := map[string]int{}
	replicas := map[string]int{}
	for _, r := range runs {
		outcomes[r.outcome]++
		replicas[r.replica]++
	}
	t.Logf("%d runs: %v, by replica %v", len(runs), outcomes, replicas)
	if len(replicas) != 2 {
		t.Errorf("runs on %d replicas, want both", len(replicas))
	}
	var minGap int64 = math.MaxInt64
	for _, id := range ids {
		rs := by[id]
		var n int
		var busy int64
		for i, r := range rs {
			if r.outcome != "done" {
				continue
			}
			if i == 0 && r.scope != queue.ScopeFull || i > 0 && r.scope != queue.ScopePartial {
				t.Errorf("topic %d, run %d: scope %d, want full for the requested run, partial for the refreshes", id, i+1, r.scope)
			}
			if i > 0 && rs[i-1].outcome == "done" {
				gap := r.start - rs[i-1].finish
				minGap = min(minGap, gap)
				// The next run is due interval after the finish, which
				// commits shortly before the run's record ends.
				if gap < (interval - time.Second).Microseconds() {
					t.Errorf("topic %d: run %d started %.3fs after the previous one finished, want about %v", id, i+1, float64(gap)/1e6, interval)
				}
			}
			// Claimed within the window after the request (nothing can
			// be claimed before it: the topics did not exist; the half
			// second only absorbs how the run history maps the worker's
			// clock onto the primary's).
			if claimed := r.start + r.claim; claimed >= -500_000 && claimed < window.Microseconds() {
				n++
				busy += r.finish - r.start
			}
		}
		if len(rs) > 0 {
			t.Logf("topic %d: first run started %.3fs after the request, claimed %.3fs after, finished %.3fs after", id,
				float64(rs[0].start)/1e6, float64(rs[0].start+rs[0].claim)/1e6, float64(rs[0].finish)/1e6)
		}
		if n == 0 {
			t.Errorf("topic %d never ran", id)
			continue
		}
		mean := time.Duration(busy/int64(n)) * time.Microsecond
		want := window.Seconds() / (interval + mean).Seconds()
		if math.Abs(float64(n)-want) > 1 {
			t.Errorf("topic %d: %d runs claimed in %v, want %.1f ± 1 (mean run %v)", id, n, window, want, mean)
		} else {
			t.Logf("topic %d: %d runs in %v, expected %.1f (mean run %v)", id, n, window, want, mean.Round(time.Millisecond))
		}
		calls := b.calls(t, 0, id) + b.calls(t, 1, id)
		if outcomes["done"] == len(runs) && calls != len(rs) {
			t.Errorf("topic %d: the procedure ran %d times for %d recorded runs", id, calls, len(rs))
		}
	}
	t.Logf("shortest pause between two runs of a topic: %.3fs", float64(minGap)/1e6)

	// Each topic waits for its next refresh, at the refresh scope.
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE required = 1 AND running = 0 AND attempts = 0 AND parked_at IS NULL"); n != topics {
		t.Errorf("%d of %d topics scheduled for their next refresh after the workers stopped", n, topics)
	}
	out, err := run(t, "status", "--config", b.refreshConfig(t, 0, "2s", "1h"))
	if err != nil || !strings.Contains(out, "periodic refresh: every 2s after each successful run, scope partial;") {
		t.Errorf("status does not show the refresh setting (%v):\n%s", err, out)
	}
}

// TestRefreshAfterSIGKILL: a worker killed (SIGKILL) in the middle of a
// refresh run. Its claim is reaped after the lease, counting an attempt;
// the topic runs again on the other replica right after the reap (nothing
// fires while the dead claim holds it), and the reap's attempt is kept:
// that run, failing on purpose, backs off 2 × backoff_base (the second
// attempt in a row) rather than the refresh interval. The successful run
// after it resets the attempts and the refresh goes on every interval.
// `nonqueue check` validates and shows the setting.
func TestRefreshAfterSIGKILL(t *testing.T) {
	const (
		interval = 2 * time.Second
		backoff  = 2 * time.Second // backoff_base: the second attempt in a row waits 4s
		lease    = 3 * time.Second // b.config's
	)
	b := setupWork(t)
	cfgA := b.refreshConfig(t, 0, "2s", "2s")
	out, err := run(t, "check", "--config", cfgA)
	if err != nil || !strings.Contains(out, "ok    periodic refresh: every 2s after each successful run, scope partial;") {
		t.Fatalf("check with a refresh interval: %v\n%s", err, out)
	}
	origin := b.now(t)
	b.addTopics(t, 1)
	a := startWorker(t, cfgA, "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "two refresh runs of topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") >= 3
	})
	// The next run sits in the procedure; kill its worker there. A run
	// claimed after the slow row sees it (GTID wait) and sleeps a minute.
	called := b.calls(t, 0, 1)
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, 60)"); err != nil {
		t.Fatal(err)
	}
	slowAt := b.now(t)
	testdb.WaitFor(t, 30*time.Second, "replica 1's worker a second into a slow refresh run of topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running BETWEEN 100 AND 199 AND claimed_at > ? AND claimed_at < NOW(6) - INTERVAL 1 SECOND", slowAt) == 1
	})
	if b.calls(t, 0, 1) <= called {
		t.Fatal("the slow run has not called the procedure after a second")
	}
	killed := b.now(t)
	a.cmd.Process.Kill()
	a.wait(t, 10*time.Second)
	for _, s := range []string{"DELETE FROM slow", "INSERT INTO fail VALUES (1)"} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	startWorker(t, b.refreshConfig(t, 1, "2s", "2s"), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "the run after the reap failing on purpose", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'failed'") == 1
	})
	if _, err := b.primary.ExecContext(b.ctx, "DELETE FROM fail"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "three refresh runs after the failure", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done' AND id > (SELECT MAX(id) FROM run WHERE topic_id = 1 AND outcome = 'failed')") >= 3
	})

	runs := b.history(t, origin, 1, 1)
	checkNoOverlap(t, runs)
	var killedAt int64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT TIMESTAMPDIFF(MICROSECOND, ?, ?)", origin, killed).Scan(&killedAt); err != nil {
		t.Fatal(err)
	}
	var seq []string
	reap, failed := -1, -1
	for i, r := range runs {
		seq = append(seq, r.outcome)
		switch r.outcome {
		case "reaped":
			if reap >= 0 {
				t.Errorf("a second reap at run %d", i)
			}
			reap = i
		case "failed":
			failed = i
		}
	}
	t.Logf("topic 1's runs: %v", seq)
	if reap < 0 || failed != reap+1 || len(runs) < failed+4 {
		t.Fatalf("runs %v: want done runs, one reaped, one failed, then done runs", seq)
	}
	for i, r := range runs {
		if i != reap && i != failed && r.outcome != "done" {
			t.Errorf("run %d: %s, want done", i+1, r.outcome)
		}
	}
	ms := func(us int64) string { return fmt.Sprintf("%.3fs", float64(us)/1e6) }
	t.Logf("killed at %s; reaped %s after; the next run claimed %s after the reap, failed, the run after it began %s later; then pauses of %s, %s",
		ms(killedAt), ms(runs[reap].finish-killedAt), ms(runs[failed].start+runs[failed].claim-runs[reap].finish),
		ms(runs[failed+1].start-runs[failed].finish), ms(runs[failed+2].start-runs[failed+1].finish), ms(runs[failed+3].start-runs[failed+2].finish))
	// The reaper took the claim back only after the lease ran out (the
	// last heartbeat renewed it at most heartbeat_interval before the
	// kill).
	if d := runs[reap].finish - killedAt; d < (lease - 700*time.Millisecond).Microseconds() {
		t.Errorf("reaped %s after the kill, before the lease (%v) could run out", ms(d), lease)
	}
	// Nothing ran while the dead claim held the topic; it ran again once
	// reaped (due at once: the lease was its wait).
	f := runs[failed]
	if f.start+f.claim < runs[reap].finish-100_000 {
		t.Errorf("the run after the kill was claimed %s before the reap", ms(runs[reap].finish-f.start-f.claim))
	}
	if f.start > runs[reap].finish+(5*time.Second).Microseconds() {
		t.Errorf("the run after the kill started %s after the reap, want soon after", ms(f.start-runs[reap].finish))
	}
	// The failure is the second attempt in a row (the reap counted one):
	// back-off 2 × backoff_base, not backoff_base, nor the interval.
	next := runs[failed+1]
	if gap := next.start - f.finish; gap < (2*backoff - 500*time.Millisecond).Microseconds() {
		t.Errorf("the run after the failure started %s after it, want the second attempt's back-off %v", ms(gap), 2*backoff)
	}
	// Then the refresh goes on every interval.
	for i := failed + 2; i < len(runs); i++ {
		gap := runs[i].start - runs[i-1].finish
		if gap < (interval-time.Second).Microseconds() || gap > (interval+5*time.Second).Microseconds() {
			t.Errorf("run %d started %s after the previous one finished, want about %v", i+1, ms(gap), interval)
		}
		if runs[i].scope != queue.ScopePartial {
			t.Errorf("run %d: scope %d, want partial", i+1, runs[i].scope)
		}
	}
	// Once per recorded run on replica 2: nothing fired twice.
	var onB int
	for _, r := range runs {
		if r.replica == fmt.Sprintf("127.0.0.1:%d", env.SB.Replicas[1].Port) {
			onB++
		}
	}
	if calls := b.calls(t, 1, 1); calls != onB {
		t.Errorf("replica 2 ran the procedure %d times for %d recorded runs", calls, onB)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND required = 1 AND attempts = 0 AND parked_at IS NULL"); n != 1 {
		t.Errorf("topic 1 is not scheduled for its next refresh with its attempts reset")
	}
}

// TestSchemaApplyLeavesRefreshColumnOut: `nonqueue schema apply` on a
// mapped table set up before periodic refresh (claimable VIRTUAL and
// indexed, no refresh column), to which MariaDB adds no column online:
// it succeeds, says what it left out and how to add it, and changes
// nothing on the table; `schema apply --allow-blocking` adds the column.
func TestSchemaApplyLeavesRefreshColumnOut(t *testing.T) {
	t.Parallel()
	_, db, path := fullTextTopicFilter(t, 0)
	ctx := context.Background()
	// The same table made without the full-text index (a table that has
	// or had one gets no column online): every change can go online.
	for _, s := range []string{"DROP TABLE TopicFilter", `CREATE TABLE TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1) ENGINE=InnoDB`,
		"INSERT INTO TopicFilter SELECT seq, CONCAT('topic ', seq), 2, NOW(), 0, 0, 1 FROM seq_1_to_100"} {
		if _, err := db.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if out, err := run(t, "schema", "apply", "--config", path); err != nil {
		t.Fatalf("first schema apply: %v\n%s", err, out)
	}
	// What the previous version left: everything but the refresh column.
	if _, err := db.ExecContext(ctx, "ALTER TABLE TopicFilter DROP COLUMN refresh_interval"); err != nil {
		t.Fatal(err)
	}
	before := columnCount(t, db, "TopicFilter")
	out, err := run(t, "schema", "apply", "--config", path)
	if err != nil {
		t.Fatalf("schema apply on an older mapped table: %v\n%s", err, out)
	}
	for _, want := range []string{"left out, with no online path on this table: the refresh_interval column",
		"every topic takes [topics] refresh_interval", "--allow-blocking", "left out 1. (optional; ALGORITHM=INSTANT refused: "} {
		if !strings.Contains(out, want) {
			t.Errorf("schema apply output lacks %q:\n%s", want, out)
		}
	}
	if n := columnCount(t, db, "TopicFilter"); n != before {
		t.Errorf("%d columns after the apply, want %d (nothing added)", n, before)
	}
	if out, err := run(t, "schema", "apply", "--config", path, "--allow-blocking"); err != nil || !strings.Contains(out, "ran without an online path") {
		t.Fatalf("schema apply --allow-blocking: %v\n%s", err, out)
	}
	if n := columnCount(t, db, "TopicFilter"); n != before+1 {
		t.Errorf("%d columns after apply --allow-blocking, want %d", n, before+1)
	}
}
