package worker_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

// TestAppRequestDuringRun (issue 12, item 1): the original application
// requests a recalc with a plain UPDATE, not through nonqueue. Issued on
// the primary while topic 7's procedure runs (2 s), it must survive the
// run's finish: the topic runs a second time, and required ends 0 only
// after that second run. On the mapped TopicFilter with the original's
// statement, and on nonqueue's own table with the same statement in its
// column names. The replicas (which run triggers for row events) end with
// the same request version as the primary, replicating.
func TestAppRequestDuringRun(t *testing.T) {
	for _, tc := range []struct {
		kind, request string
	}{
		{"mapped", "UPDATE TopicFilter SET influencerRecalcReqd = 2, influencerRecalcDate = NOW() WHERE topicFilterId = 7"},
		{"own", "UPDATE topic SET required = 2, due = NOW() WHERE id = 7"},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			b := setupKind(t, tc.kind)
			cols := b.q.Config().Columns
			table := b.q.Config().Table
			if tc.kind == "mapped" {
				b.exec(t, "INSERT INTO TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate) VALUES (7, 'Apples', 0, NOW() - INTERVAL 1 DAY)")
			} else {
				b.exec(t, "INSERT INTO topic (id, required, due) VALUES (7, 0, NOW() - INTERVAL 1 DAY)")
			}
			for k := 1; k <= 20; k++ {
				b.exec(t, fmt.Sprintf("INSERT INTO src VALUES (7, %d, %d)", k, 7000+k))
			}
			b.exec(t, "INSERT INTO slow VALUES (7, 2)") // the procedure takes 2 s
			if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
				t.Fatal(err)
			}
			// The first request, the application's way.
			b.exec(t, tc.request)
			p := b.startPool(t, 0, 1, nil)

			// The procedure is running: its call is logged on the replica.
			rdb := testdb.Open(t, env.Replica(0, b.db))
			testdb.WaitFor(t, 30*time.Second, "topic 7's procedure running", func() bool {
				var n int
				rdb.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM calls WHERE topic_id = 7").Scan(&n)
				return n == 1
			})
			if n := b.count(t, fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE `%s` = 7 AND `%s` <> 0", table, cols.ID, cols.Running)); n != 1 {
				t.Fatal("topic 7 not marked running while its procedure runs")
			}
			if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 7"); n != 0 {
				t.Fatalf("%d runs recorded before the first one ended", n)
			}

			// The application's re-request, while the procedure runs.
			b.exec(t, tc.request)

			// From now on required must not read 0 before the procedure's
			// second call (the finish clears it just before the run is
			// recorded, so the call log on the replica is the witness: read
			// after required, it only grows). Polled until the second run is
			// recorded; bounded.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var early atomic.Value
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20000; i++ {
					select {
					case <-stop:
						return
					case <-time.After(10 * time.Millisecond):
					}
					var required, calls int
					err := b.primary.QueryRowContext(b.ctx, fmt.Sprintf("SELECT `%s` FROM %s WHERE `%s` = 7",
						cols.Required, table, cols.ID)).Scan(&required)
					if err != nil || required != 0 {
						continue
					}
					if err := rdb.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM calls WHERE topic_id = 7").Scan(&calls); err == nil && calls < 2 {
						early.Store(fmt.Sprintf("required 0 after %d call(s) of the procedure", calls))
						return
					}
				}
			}()
			testdb.WaitFor(t, 60*time.Second, "topic 7's second run (the application's re-request kept)", func() bool {
				return early.Load() != nil || b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 7 AND outcome = 'done'") >= 2
			})
			close(stop)
			wg.Wait()
			if e := early.Load(); e != nil {
				t.Fatalf("the request was cleared before the second run: %s", e)
			}
			testdb.WaitFor(t, 10*time.Second, "topic 7 not running", func() bool {
				return b.count(t, fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE `%s` = 7 AND `%s` = 0", table, cols.ID, cols.Running)) == 1
			})
			p.stop(t)
			if r := b.count(t, fmt.Sprintf("SELECT `%s` FROM %s WHERE `%s` = 7", cols.Required, table, cols.ID)); r != 0 {
				t.Fatalf("required %d after the second run, want 0", r)
			}
			if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 7"); n != 2 {
				t.Fatalf("%d runs of topic 7, want 2", n)
			}
			var calls int
			rdb.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM calls WHERE topic_id = 7").Scan(&calls)
			if calls != 2 {
				t.Fatalf("the procedure ran %d times, want 2", calls)
			}

			// Replication: both replicas run triggers for row events; they must
			// hold the primary's request version (no second bump) and keep
			// replicating.
			if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
				t.Fatal(err)
			}
			verStmt := fmt.Sprintf("SELECT `%s` FROM %s WHERE `%s` = 7", cols.RequestVersion, table, cols.ID)
			want := b.count(t, verStmt)
			for i := range 2 {
				root := rootDB(t, i)
				var trig string
				root.QueryRowContext(b.ctx, "SELECT @@slave_run_triggers_for_rbr").Scan(&trig)
				var got int
				if err := testdb.Open(t, env.Replica(i, b.db)).QueryRowContext(b.ctx, verStmt).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("replica %d (slave_run_triggers_for_rbr=%s): request version %d, primary %d", i+1, trig, got, want)
				}
				assertReplicating(t, root, i)
			}
		})
	}
}

// setupKind is setup with a topic table of the given kind: nonqueue's own,
// or the original TopicFilter mapped.
func setupKind(t *testing.T, kind string) *bundle {
	t.Helper()
	if kind == "own" {
		return setup(t, 30*time.Second)
	}
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	p := testdb.Open(t, env.Primary(name))
	if _, err := p.ExecContext(ctx, `CREATE TABLE TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1) ENGINE=InnoDB`); err != nil {
		t.Fatal(err)
	}
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{
		Schema: name, Table: "TopicFilter", Mapped: true, MetaSchema: name, Lease: 30 * time.Second,
		ActiveValues: []int64{1, 2},
		Columns: queue.Columns{
			ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
			Priority: "influencerPriority", Running: "influencerRunning", Active: "active",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	if err := testdb.InstallCalc(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	return &bundle{env: env, db: name, primary: p, q: q, ctx: ctx, logDir: t.TempDir()}
}

func (b *bundle) exec(t *testing.T, stmt string) {
	t.Helper()
	if _, err := b.primary.ExecContext(b.ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// assertReplicating fails t unless replica i's IO and SQL threads run with
// no error.
func assertReplicating(t *testing.T, root *sql.DB, i int) {
	t.Helper()
	rows, err := root.Query("SHOW SLAVE STATUS")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		t.Fatalf("replica %d: no slave status", i+1)
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for j := range vals {
		ptrs[j] = &vals[j]
	}
	if err := rows.Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for j, c := range cols {
		st[c] = vals[j].String
	}
	if st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes" || st["Last_SQL_Error"] != "" {
		t.Errorf("replica %d: IO %s, SQL %s, last SQL error %q", i+1, st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_SQL_Error"])
	}
}
