package worker_test

import (
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// TestGTIDTimeoutBacksOffReplica: replica 1's SQL thread is blocked (a
// local transaction holds a row lock the next replicated update needs), so
// its lag gate, with a generous lag limit, stays open while a claim's GTID
// wait times out. The claim is released; then no instance of replica 1's
// process claims again during the back-off (counted in the run history),
// while the topic stays due and replica 2's worker takes and finishes it.
func TestGTIDTimeoutBacksOffReplica(t *testing.T) {
	b := setup(t, 3*time.Second)
	if _, err := b.primary.ExecContext(b.ctx, "CREATE TABLE gate_block (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO gate_block VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	const backoff = 40 * time.Second
	tweak := func(wc *worker.Config, gc *monitor.GateConfig) {
		wc.GTIDWait = time.Second
		wc.GTIDBackoff = backoff
		gc.MaxLag = time.Minute // the heartbeat gate stays open: only the GTID wait sees the replica stuck
	}
	p1 := b.startPool(t, 0, 2, tweak)
	// Its gate open (its heartbeat read back on the replica) before the
	// replica gets stuck.
	testdb.WaitFor(t, 30*time.Second, "replica 1's instances idle", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE id IN (101, 102) AND state = ?", monitor.StateIdle) == 2
	})

	// Block replica 1's SQL thread on a row lock.
	rdb := testdb.Open(t, env.Replica(0, b.db))
	blocker, err := rdb.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	unblock := func() {
		blocker.ExecContext(bg, "ROLLBACK")
		blocker.Close()
	}
	defer unblock()
	if _, err := blocker.ExecContext(b.ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := blocker.ExecContext(b.ctx, "SELECT v FROM gate_block WHERE id = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.primary.ExecContext(b.ctx, "UPDATE gate_block SET v = v + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	b.addTopics(t, 1, 1)

	claims := func() int {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND replica = 'replica1'")
	}
	var first *monitor.Run
	testdb.WaitFor(t, 30*time.Second, "replica 1 to claim topic 1 and release it after its GTID wait", func() bool {
		select {
		case r := <-p1.runs:
			if r.TopicID == 1 {
				first = r
			}
		default:
		}
		return first != nil
	})
	if first.Outcome != monitor.OutcomeReleased || !contains(first.Error, monitor.ErrGTIDTimeout.Error()) {
		t.Fatalf("replica 1's run: outcome %s, error %q; want released after a GTID wait timeout", first.Outcome, first.Error)
	}
	released := time.Now()

	// Long enough for several more claims without the back-off (a
	// claim, a 1s wait and a release each).
	time.Sleep(4 * time.Second)
	p2 := b.startPool(t, 1, 1, tweak)
	testdb.WaitFor(t, 30*time.Second, "replica 2 to finish topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done' AND replica = 'replica2'") == 1
	})
	within := time.Since(released)
	p1.stop(t) // its run history is written
	p2.stop(t)
	if within >= backoff {
		t.Fatalf("the check took %v, longer than the back-off %v: it proves nothing (machine too slow?)", within, backoff)
	}
	if n := claims(); n != 1 {
		t.Errorf("replica 1 claimed topic 1 %d times within %v of its first GTID timeout; want 1 (backed off for %v)", n, within.Round(time.Millisecond), backoff)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0 OR parked_at IS NOT NULL"); n != 0 {
		t.Errorf("topic 1 left required, running or parked")
	}
	unblock()
}
