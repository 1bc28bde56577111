package worker_test

import (
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// TestTopicsAcrossTwoReplicas: two processes, one per replica, share 40
// topics; each topic is computed exactly once, every published table
// equals (CHECKSUM TABLE) what the procedure computes on a replica, the
// replicas keep no result tables, and readers on the primary querying a
// result table in a loop while it is republished never see an error.
func TestTopicsAcrossTwoReplicas(t *testing.T) {
	b := setup(t, 30*time.Second)
	ids := b.addTopics(t, 1, 40)
	p1 := b.startPool(t, 0, 2, nil)
	p2 := b.startPool(t, 1, 2, nil)
	testdb.WaitFor(t, 90*time.Second, "all topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})

	// Readers on topic 1's tables while it is re-requested and republished.
	var reads, readErrs atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var n, total int64
				err := b.primary.QueryRowContext(b.ctx, "SELECT n, total FROM S_1").Scan(&n, &total)
				reads.Add(1)
				if err != nil || n != 20 {
					readErrs.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("n=%d err=%v", n, err))
				}
			}
		}()
	}
	for range 5 {
		before := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'")
		if _, err := b.q.Request(b.ctx, &queueRequestFull1); err != nil {
			t.Fatal(err)
		}
		testdb.WaitFor(t, 30*time.Second, "republish of topic 1", func() bool {
			return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") > before
		})
	}
	close(stop)
	wg.Wait()
	if readErrs.Load() != 0 {
		t.Fatalf("%d of %d reads during republishes failed; first: %v", readErrs.Load(), reads.Load(), firstErr.Load())
	}
	t.Logf("%d reads during 5 republishes, no error", reads.Load())
	p1.stop(t)
	p2.stop(t)

	// Exactly once: the procedure's own call log on both replicas.
	calls := map[int64]int{}
	for r := range 2 {
		rdb := testdb.Open(t, env.Replica(r, b.db))
		rows, err := rdb.QueryContext(b.ctx, "SELECT topic_id, COUNT(*) FROM calls GROUP BY topic_id")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int64
			var n int
			rows.Scan(&id, &n)
			calls[id] += n
		}
		rows.Close()
		if n := tableCount(t, rdb, b.db, "R\\_%"); n != 0 {
			t.Errorf("replica %d kept %d result tables", r+1, n)
		}
	}
	for _, id := range ids[1:] {
		if calls[id] != 1 {
			t.Errorf("topic %d computed %d times", id, calls[id])
		}
	}
	if calls[1] != 6 {
		t.Errorf("topic 1 computed %d times, want 6 (1 + 5 re-requests)", calls[1])
	}
	byReplica := b.count(t, "SELECT COUNT(DISTINCT replica) FROM run WHERE outcome = 'done'")
	if byReplica != 2 {
		t.Errorf("runs on %d replicas, want both", byReplica)
	}

	// Published tables equal the procedure's result computed afresh, in a
	// session that does not binlog, on the replica that ran it (S_ records
	// its server id).
	conns := make([]*sql.Conn, 2)
	for r := range conns {
		c, err := testdb.Open(t, env.Replica(r, b.db)).Conn(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.ExecContext(b.ctx, "SET SESSION sql_log_bin = 0"); err != nil {
			t.Fatal(err)
		}
		conns[r] = c
	}
	for _, id := range ids {
		srv := b.count(t, fmt.Sprintf("SELECT srv FROM S_%d", id))
		r := srv - int(env.SB.Replicas[0].ServerID)
		if r < 0 || r > 1 {
			t.Fatalf("S_%d published from server %d", id, srv)
		}
		if _, err := conns[r].ExecContext(b.ctx, "CALL calc(?, 2)", id); err != nil {
			t.Fatal(err)
		}
		for _, tbl := range []string{fmt.Sprintf("R_%d", id), fmt.Sprintf("S_%d", id)} {
			want := checksum(t, conns[r], tbl)
			got := checksum(t, b.primary, tbl)
			if want != got || got == 0 {
				t.Errorf("%s: primary checksum %d, replica %d's %d", tbl, got, r+1, want)
			}
			conns[r].ExecContext(b.ctx, "DROP TABLE "+tbl)
		}
	}
	var runRow struct {
		proc, transfer, publish, bytes int64
	}
	b.primary.QueryRowContext(b.ctx, "SELECT proc_us, transfer_us, publish_us, bytes_shipped FROM run WHERE outcome = 'done' LIMIT 1").
		Scan(&runRow.proc, &runRow.transfer, &runRow.publish, &runRow.bytes)
	if runRow.proc == 0 || runRow.transfer == 0 || runRow.publish == 0 || runRow.bytes == 0 {
		t.Errorf("run history misses phase times or bytes: %+v", runRow)
	}
}

type queryer interface {
	QueryRowContext(ctx contextT, query string, args ...any) *sql.Row
}

func checksum(t *testing.T, db queryer, table string) int64 {
	t.Helper()
	var name string
	var sum sql.NullInt64
	if err := db.QueryRowContext(bg, "CHECKSUM TABLE "+table).Scan(&name, &sum); err != nil {
		t.Fatalf("checksum %s: %v", table, err)
	}
	return sum.Int64
}

func tableCount(t *testing.T, db *sql.DB, schema, like string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(bg, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name LIKE ?", schema, like).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStoppedReplicaClaimsNothing: with its SQL thread stopped a replica's
// instances claim nothing; they resume when it restarts.
func TestStoppedReplicaClaimsNothing(t *testing.T) {
	b := setup(t, 30*time.Second)
	root := rootDB(t, 1)
	if _, err := root.ExecContext(b.ctx, "STOP SLAVE SQL_THREAD"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.ExecContext(bg, "START SLAVE SQL_THREAD") })
	b.addTopics(t, 1, 5)
	p := b.startPool(t, 1, 2, nil)
	// The gate reports stopped: the instances say so in the registry.
	testdb.WaitFor(t, 10*time.Second, "instances in state replica stopped", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = ?", monitor.StateStopped) == 2
	})
	time.Sleep(time.Second) // and they keep claiming nothing for a while
	if n := b.count(t, "SELECT COUNT(*) FROM run"); n != 0 {
		t.Fatalf("%d runs while the SQL thread was stopped", n)
	}
	if _, err := root.ExecContext(b.ctx, "START SLAVE SQL_THREAD"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "topics done after restart", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	p.stop(t)
}

// TestCausalWait: data committed on the primary together with the request
// is visible to the procedure, even on a replica that applies events 2 s
// late.
func TestCausalWait(t *testing.T) {
	b := setup(t, 30*time.Second)
	root := rootDB(t, 0)
	for _, s := range []string{"STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 2", "START SLAVE"} {
		if _, err := root.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, s := range []string{"STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE"} {
			root.ExecContext(bg, s)
		}
	})
	p := b.startPool(t, 0, 1, func(w *worker.Config, g *monitor.GateConfig) { g.MaxLag = 10 * time.Second })
	// Source rows and the request in one transaction.
	tx, err := b.primary.BeginTx(b.ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.ExecContext(b.ctx, "INSERT INTO topic (id, required, due) VALUES (7, 2, NOW(6))")
	for k := 1; k <= 20; k++ {
		tx.ExecContext(b.ctx, "INSERT INTO src VALUES (7, ?, ?)", k, k)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "topic 7 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 7 AND outcome = 'done'") == 1
	})
	if n := b.count(t, "SELECT n FROM S_7"); n != 20 {
		t.Fatalf("the procedure saw %d of the 20 rows committed with the request", n)
	}
	if w := b.count(t, "SELECT lag_wait_us FROM run WHERE topic_id = 7"); w < 500000 {
		t.Errorf("lag wait %dµs: the replica was 2 s behind, the wait should show it", w)
	}
	p.stop(t)
}

// TestFailingProcedureBacksOff: a failing procedure is recorded with its
// error, the topic released with a back-off and its attempt counted; its
// result tables do not linger on the replica.
func TestFailingProcedureBacksOff(t *testing.T) {
	b := setup(t, 30*time.Second)
	b.primary.ExecContext(b.ctx, "INSERT INTO fail VALUES (3)")
	b.addTopics(t, 1, 4)
	p := b.startPool(t, 0, 2, nil)
	testdb.WaitFor(t, 30*time.Second, "three topics done and one failed", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") == 3 &&
			b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'failed'") == 1
	})
	p.stop(t)
	var errText string
	var attempts, dueLater, running int
	b.primary.QueryRowContext(b.ctx, "SELECT error FROM run WHERE outcome = 'failed'").Scan(&errText)
	b.primary.QueryRowContext(b.ctx, "SELECT attempts, due > NOW(6) + INTERVAL 30 MINUTE, running FROM topic WHERE id = 3").Scan(&attempts, &dueLater, &running)
	if attempts != 1 || dueLater != 1 || running != 0 {
		t.Fatalf("failed topic: attempts %d, backed off %d, running %d", attempts, dueLater, running)
	}
	if !contains(errText, "calc failed on purpose") {
		t.Fatalf("recorded error %q", errText)
	}
}

// TestStopReleasesNothingRunning: stopping while a slow procedure runs
// past the grace period cancels it, kills the query, and releases the
// claim: nothing stays running.
func TestStopReleasesNothingRunning(t *testing.T) {
	b := setup(t, 30*time.Second)
	b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, 60)")
	b.addTopics(t, 1, 1)
	p := b.startPool(t, 0, 1, func(w *worker.Config, _ *monitor.GateConfig) { w.GracePeriod = time.Second })
	testdb.WaitFor(t, 20*time.Second, "topic 1 running", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") == 1
	})
	start := time.Now()
	p.soft()
	time.AfterFunc(time.Second, p.hard) // the grace period, as cmd does it
	p.stop(t)
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("stop took %v", d)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0"); n != 0 {
		t.Fatal("a topic stayed running after stop")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND required = 2 AND attempts = 0"); n != 1 {
		t.Fatal("shutdown release changed the request or counted an attempt")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'released'"); n != 1 {
		t.Fatal("shutdown release not recorded")
	}
}
