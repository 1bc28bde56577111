package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

// pauseMargin is how late after a pause's creation a claim may still
// start: the worker config's sample interval (100ms, see
// workBundle.config), the read itself and a claim already past its pause
// check, with room for a loaded machine.
const pauseMargin = 100*time.Millisecond + 900*time.Millisecond

// seedPaused adds topics 1..n with 10 source rows each, a procedure sleep
// of secs, and priority prio(id), and requests them all.
func (b *workBundle) seedPaused(t *testing.T, n int, secs float64, prio func(id int64) int64) {
	t.Helper()
	var src, slow []string
	byPrio := map[int64][]int64{}
	for id := int64(1); id <= int64(n); id++ {
		for k := 1; k <= 10; k++ {
			src = append(src, fmt.Sprintf("(%d,%d,%d)", id, k, k))
		}
		slow = append(slow, fmt.Sprintf("(%d,%g)", id, secs))
		byPrio[prio(id)] = append(byPrio[prio(id)], id)
	}
	for _, s := range []string{"INSERT INTO src VALUES " + strings.Join(src, ","), "INSERT INTO slow VALUES " + strings.Join(slow, ",")} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	for p, ids := range byPrio {
		if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull, Create: true, Priority: &p}); err != nil {
			t.Fatal(err)
		}
	}
}

// lastPause returns the newest pause's id.
func (b *workBundle) lastPause(t *testing.T) int {
	t.Helper()
	return b.count(t, "SELECT MAX(id) FROM pause")
}

// lateClaims counts runs (reaps aside) that started more than pauseMargin
// after pause id was created and before it ended, whose topic matches
// cond (a condition on topic t and run r).
func (b *workBundle) lateClaims(t *testing.T, id int, cond string) int {
	t.Helper()
	return b.count(t, `SELECT COUNT(*) FROM run r JOIN topic t ON t.id = r.topic_id JOIN pause p ON p.id = ?
 WHERE r.outcome <> 'reaped' AND r.started_at > p.created_at + INTERVAL ? MICROSECOND
   AND (p.expires_at IS NULL OR r.started_at < p.expires_at) AND `+cond, id, pauseMargin.Microseconds())
}

// lastClaimAfter is the latest start of a run (matching cond) after pause
// id was created, in ms after it (0 when none), for the logs.
func (b *workBundle) lastClaimAfter(t *testing.T, id int, cond string) int {
	t.Helper()
	return b.count(t, `SELECT TIMESTAMPDIFF(MICROSECOND, p.created_at, MAX(r.started_at)) DIV 1000 FROM run r JOIN topic t ON t.id = r.topic_id JOIN pause p ON p.id = ?
 WHERE r.outcome <> 'reaped' AND r.started_at > p.created_at AND (p.expires_at IS NULL OR r.started_at < p.expires_at) AND `+cond, id)
}

// historyCaughtUp waits until the run history (written in batches) has
// a done run for every finished topic.
func (b *workBundle) historyCaughtUp(t *testing.T) {
	t.Helper()
	testdb.WaitFor(t, 10*time.Second, "the run history to catch up", func() bool {
		return b.count(t, "SELECT COUNT(DISTINCT topic_id) FROM run WHERE outcome = 'done'") == b.count(t, "SELECT COUNT(*) FROM topic WHERE required = 0")
	})
}

// replicaCond selects runs of replica i's instances.
func replicaCond(i int) string {
	return fmt.Sprintf("r.instance_id DIV 100 = %d", env.SB.Replicas[i].ServerID-1000)
}

// syncedWorker starts `nonqueue work` as a process whose output can be
// read while it runs; it is killed when t ends.
func syncedWorker(t *testing.T, cfg string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"work", "--config", cfg}, args...)...)
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("worker output:\n%s", out.String())
		}
	})
	return out
}

// pausedGauge scrapes a worker's nonqueue_paused{scope}.
func pausedGauge(t *testing.T, addr, scope string) float64 {
	t.Helper()
	_, fams := scrape(t, "http://"+addr+"/metrics")
	f := fams["nonqueue_paused"]
	if f == nil {
		t.Fatal("no nonqueue_paused metric")
	}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "scope" && l.GetValue() == scope {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no nonqueue_paused{scope=%q}", scope)
	return 0
}

// TestPauseDrains: 2 replicas × 4 instances work through 300 topics. After
// `nonqueue pause`, no claim starts later than one sample interval (plus
// a claim in flight) after the pause was created, the runs in flight
// finish (done, none released), the fleet reads as paused (instance
// states, status, nonqueue_paused), and it stays still; after `nonqueue
// resume` every topic is done.
func TestPauseDrains(t *testing.T) {
	b := setupWork(t)
	const topics = 300
	b.seedPaused(t, topics, 0.15, func(int64) int64 { return 0 })
	cfg0, cfg1 := b.config(t, 0, ""), b.config(t, 1, "")
	logs := syncedWorker(t, cfg0, "--instances", "4", "--metrics-listen", "127.0.0.1:0")
	startWorker(t, cfg1, "--instances", "4")
	var addr string
	testdb.WaitFor(t, 60*time.Second, "the metrics address", func() bool {
		if m := listenRe.FindStringSubmatch(logs.String()); m != nil {
			addr = m[1]
		}
		return addr != ""
	})
	testdb.WaitFor(t, 90*time.Second, "40 topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") >= 40
	})

	out, err := run(t, "pause", "--config", cfg0, "--reason", "incident 14: primary overloaded")
	if err != nil || !strings.Contains(out, "paused: pause") || !strings.Contains(out, "every topic on every replica") {
		t.Fatalf("pause: %v\n%s", err, out)
	}
	id := b.lastPause(t)
	testdb.WaitFor(t, 30*time.Second, "the runs in flight to finish", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") == 0
	})
	testdb.WaitFor(t, 10*time.Second, "all 8 instances paused", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'paused'") == 8
	})
	b.historyCaughtUp(t)
	if n := b.lateClaims(t, id, "1"); n != 0 {
		t.Errorf("%d claims started more than %v after the pause", n, pauseMargin)
	}
	t.Logf("last claim started %d ms after the pause was created", b.lastClaimAfter(t, id, "1"))
	finished := b.count(t, `SELECT COUNT(*) FROM run r JOIN pause p ON p.id = ? WHERE r.started_at <= p.created_at AND r.finished_at > p.created_at AND r.outcome = 'done'`, id)
	if finished == 0 {
		t.Error("no run was in flight at the pause and finished after it: the test did not pause a busy fleet")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome <> 'done'"); n != 0 {
		t.Errorf("%d runs did not end done: a pause must let runs in flight finish", n)
	}
	done := b.count(t, "SELECT COUNT(*) FROM topic WHERE required = 0")
	if done >= topics {
		t.Fatalf("all %d topics were done before the pause took effect", done)
	}
	t.Logf("%d runs in flight finished after the pause; %d of %d topics done while paused", finished, done, topics)
	// Every claim bumps its topic's claim token, given back or not.
	claims := b.count(t, "SELECT SUM(claim_token) FROM topic")
	if testdb.Poll(2*time.Second, func() bool { return b.count(t, "SELECT SUM(claim_token) FROM topic") != claims }) {
		t.Fatalf("a paused fleet claimed: %d topics claimed after the pause was created, the last %d ms after",
			b.count(t, "SELECT COUNT(*) FROM topic t JOIN pause p ON p.id = ? WHERE t.claimed_at > p.created_at", id),
			b.count(t, "SELECT TIMESTAMPDIFF(MICROSECOND, p.created_at, MAX(t.claimed_at)) DIV 1000 FROM topic t JOIN pause p ON p.id = ?", id))
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic t JOIN pause p ON p.id = ? WHERE t.claimed_at > p.created_at + INTERVAL ? MICROSECOND", id, pauseMargin.Microseconds()); n != 0 {
		t.Errorf("%d topics claimed (given back or not) more than %v after the pause", n, pauseMargin)
	}
	st, err := run(t, "status", "--config", cfg1)
	if err != nil || !strings.Contains(st, "PAUSED") || !strings.Contains(st, "incident 14: primary overloaded") || !strings.Contains(st, "until resumed") || !strings.Contains(st, "@") {
		t.Errorf("status does not read as paused: %v\n%s", err, st)
	}
	if g := pausedGauge(t, addr, "all"); g != 1 {
		t.Errorf("nonqueue_paused{scope=all} = %v while paused", g)
	}

	out, err = run(t, "resume", "--config", cfg1)
	if err != nil || !strings.Contains(out, "resumed: pause") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	testdb.WaitFor(t, 3*time.Minute, "every topic done after the resume", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	b.historyCaughtUp(t)
	if g := pausedGauge(t, addr, "all"); g != 0 {
		t.Errorf("nonqueue_paused{scope=all} = %v after the resume", g)
	}
}

// TestPauseForExpires: a pause given --for ends by itself: no claim
// starts while it is in force (past the margin), and once it expires the
// fleet finishes every topic with nobody resuming it.
func TestPauseForExpires(t *testing.T) {
	b := setupWork(t)
	const topics = 300
	b.seedPaused(t, topics, 0.05, func(int64) int64 { return 0 })
	cfg0, cfg1 := b.config(t, 0, ""), b.config(t, 1, "")
	startWorker(t, cfg0, "--instances", "4")
	startWorker(t, cfg1, "--instances", "4")
	testdb.WaitFor(t, 90*time.Second, "30 topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") >= 30
	})
	out, err := run(t, "pause", "--config", cfg0, "--for", "4s")
	if err != nil || !strings.Contains(out, "left)") {
		t.Fatalf("pause --for: %v\n%s", err, out)
	}
	id := b.lastPause(t)
	testdb.WaitFor(t, 3*time.Minute, "every topic done after the expiry", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	b.historyCaughtUp(t)
	if n := b.lateClaims(t, id, "1"); n != 0 {
		t.Errorf("%d claims started during the pause, past the margin", n)
	}
	after := b.count(t, "SELECT COUNT(*) FROM run r JOIN pause p ON p.id = ? WHERE r.started_at >= p.expires_at", id)
	if after == 0 {
		t.Error("no claim after the expiry: the pause did not stop the fleet mid-way")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE resumed_by IS NOT NULL"); n != 0 {
		t.Errorf("%d pauses resumed by someone: the expiry alone must end it", n)
	}
	t.Logf("last claim during the pause started %d ms after it; %d runs after the expiry", b.lastClaimAfter(t, id, "1"), after)
}

// TestPauseScoped: a pause of one replica stops only that replica's
// instances (the other keeps claiming); a pause below a priority stops
// only the lower topics (the higher are all done meanwhile); resuming
// each scope lets the rest finish.
func TestPauseScoped(t *testing.T) {
	b := setupWork(t)
	const topics = 300
	b.seedPaused(t, topics, 0.05, func(id int64) int64 { return map[bool]int64{true: 9, false: 1}[id%2 == 0] })
	cfg0, cfg1 := b.config(t, 0, ""), b.config(t, 1, "")
	startWorker(t, cfg0, "--instances", "4")
	startWorker(t, cfg1, "--instances", "4")
	testdb.WaitFor(t, 90*time.Second, "20 topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") >= 20
	})

	// One replica.
	sid := env.SB.Replicas[0].ServerID
	out, err := run(t, "pause", "--config", cfg1, "--replica", fmt.Sprint(sid), "--reason", "replica 1 maintenance")
	if err != nil || !strings.Contains(out, fmt.Sprintf("on replica %d", sid)) {
		t.Fatalf("pause --replica: %v\n%s", err, out)
	}
	id := b.lastPause(t)
	testdb.WaitFor(t, 30*time.Second, "replica 1's instances paused and replica 2's still claiming", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'paused' AND replica_server_id = ?", sid) == 4 &&
			b.count(t, "SELECT COUNT(*) FROM run r JOIN pause p ON p.id = ? WHERE r.started_at > p.created_at + INTERVAL 1 SECOND AND "+replicaCond(1), id) >= 10
	})
	b.historyCaughtUp(t)
	if n := b.lateClaims(t, id, replicaCond(0)); n != 0 {
		t.Errorf("replica 1 started %d claims during its pause", n)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'paused' AND replica_server_id <> ?", sid); n != 0 {
		t.Errorf("%d instances of the other replica paused", n)
	}
	// A resume of another scope ends nothing and says what is still in force.
	out, err = run(t, "resume", "--config", cfg1)
	if err != nil || !strings.Contains(out, "nothing to resume") || !strings.Contains(out, "still in force") {
		t.Fatalf("resume of another scope: %v\n%s", err, out)
	}
	if out, err = run(t, "resume", "--config", cfg1, "--replica", fmt.Sprint(sid)); err != nil || !strings.Contains(out, "resumed: pause") {
		t.Fatalf("resume --replica: %v\n%s", err, out)
	}

	// Below a priority: topics at 1 wait, topics at 9 go on.
	if out, err = run(t, "pause", "--config", cfg0, "--below-priority", "5"); err != nil {
		t.Fatalf("pause --below-priority: %v\n%s", err, out)
	}
	id = b.lastPause(t)
	testdb.WaitFor(t, 3*time.Minute, "every priority-9 topic done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE priority = 9 AND (required > 0 OR running <> 0)") == 0
	})
	testdb.WaitFor(t, 30*time.Second, "the low topics in flight to finish", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") == 0
	})
	// Low topics are not claimed again before the resume: their last
	// claim time says whether the pause let one through.
	if n := b.count(t, "SELECT COUNT(*) FROM topic t JOIN pause p ON p.id = ? WHERE t.priority < 5 AND t.claimed_at > p.created_at + INTERVAL ? MICROSECOND", id, pauseMargin.Microseconds()); n != 0 {
		t.Errorf("%d topics below priority 5 claimed during the pause", n)
	}
	waiting := b.count(t, "SELECT COUNT(*) FROM topic WHERE priority = 1 AND required > 0")
	if waiting == 0 {
		t.Fatal("no low topic left to hold back: the test proved nothing")
	}
	t.Logf("%d low topics held back while every high one was done", waiting)
	if out, err = run(t, "resume", "--config", cfg0, "--below-priority", "5"); err != nil || !strings.Contains(out, "resumed: pause") {
		t.Fatalf("resume --below-priority: %v\n%s", err, out)
	}
	testdb.WaitFor(t, 3*time.Minute, "every topic done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
}

// TestPauseFlags: the pause and resume flags are checked before anything
// is opened, each with an error naming the flag.
func TestPauseFlags(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"pause"}, "needs --config"},
		{[]string{"pause", "--config", "x.toml", "--for", "0s"}, "--for 0s: want a positive duration"},
		{[]string{"pause", "--config", "x.toml", "--for", "-5m"}, "--for -5m0s: want a positive duration"},
		{[]string{"pause", "--config", "x.toml", "--for", "soon"}, "want a duration such as 30m"},
		{[]string{"pause", "--config", "x.toml", "--for", "9000h"}, "at most"},
		{[]string{"pause", "--config", "x.toml", "--replica", "0"}, "--replica \"0\": want a replica's @@server_id"},
		{[]string{"pause", "--config", "x.toml", "--replica", "r1"}, "--replica \"r1\""},
		{[]string{"pause", "--config", "x.toml", "--below-priority", "high"}, "--below-priority \"high\": want an integer"},
		{[]string{"pause", "--config", "x.toml", "--below-priority", "99999999999"}, "--below-priority"},
		{[]string{"pause", "--config", "x.toml", "--reason", strings.Repeat("r", 501)}, "at most 500"},
		{[]string{"pause", "--config", "x.toml", "incident"}, "takes no arguments"},
		{[]string{"resume", "--config", "x.toml", "--all", "--id", "3"}, "give one of"},
		{[]string{"resume", "--config", "x.toml", "--all", "--replica", "1002"}, "give one of"},
		{[]string{"resume", "--config", "x.toml", "--id", "-1"}, "--id \"-1\""},
	}
	for _, c := range cases {
		out, err := run(t, c.args...)
		if err == nil || !strings.Contains(err.Error()+out, c.want) {
			t.Errorf("%v: %v (%s), want an error with %q", c.args, err, out, c.want)
		}
	}
}

// TestPauseTableUpgrade: an install from before pauses (no pause table)
// is told to run schema apply by pause; schema print shows the table;
// schema apply adds it to the existing schema, and pause then works.
func TestPauseTableUpgrade(t *testing.T) {
	b := setupWork(t)
	cfg := b.config(t, 0, "")
	if _, err := b.primary.ExecContext(b.ctx, "DROP TABLE pause"); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "pause", "--config", cfg)
	if err == nil || !strings.Contains(err.Error(), "schema apply") {
		t.Fatalf("pause without the table: %v\n%s", err, out)
	}
	out, err = run(t, "schema", "print", "--config", cfg)
	if err != nil || !strings.Contains(out, fmt.Sprintf("CREATE TABLE IF NOT EXISTS `%s`.`pause`", b.db)) {
		t.Fatalf("schema print shows no pause table: %v\n%s", err, out)
	}
	if out, err := run(t, "schema", "apply", "--config", cfg); err != nil {
		t.Fatalf("schema apply: %v\n%s", err, out)
	}
	if out, err := run(t, "pause", "--config", cfg, "--below-priority", "3", "--reason", "after the upgrade"); err != nil || !strings.Contains(out, "priority below 3") {
		t.Fatalf("pause after schema apply: %v\n%s", err, out)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE below_priority = 3 AND expires_at IS NULL"); n != 1 {
		t.Fatalf("%d pause rows", n)
	}
}
