package sandbox

import (
	"context"
	"database/sql"
	"strconv"
	"testing"
	"time"
)

// TestUpTiersParallel: with Tiers 2 and Parallel 4 the second-tier replica
// replicates from its first-tier replica (not from the primary) with the
// primary's GTIDs preserved, so MASTER_GTID_WAIT on the primary's position
// works on it; every replica applies with 4 optimistic parallel threads,
// also after a Restart; a first tier stopped (STOP SLAVE) holds back the
// tier below it while the lower tier's own threads keep running; and bad
// shapes are refused.
func TestUpTiersParallel(t *testing.T) {
	requireBinaries(t)
	for _, bad := range []Options{{Replicas: 5, Tiers: 2}, {Replicas: 0, Tiers: 2}, {Replicas: 1, Tiers: -1}, {Replicas: 1, Parallel: -1}, {Replicas: 1, Parallel: 65}} {
		bad.Dir = t.TempDir()
		if _, err := Up(context.Background(), bad); err == nil {
			t.Errorf("Up(%+v) succeeded", bad)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := Up(ctx, Options{Dir: t.TempDir(), Replicas: 1, Tiers: 2, Parallel: 4, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := sb.Down(ctx); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
	})
	if len(sb.Replicas) != 2 {
		t.Fatalf("%d replicas, want 2 (one per tier)", len(sb.Replicas))
	}
	mid, low := sb.Replicas[0], sb.Replicas[1]
	if mid.Source != "primary" || low.Source != "replica1" || low.Name != "replica2" || low.ServerID != 1002 {
		t.Fatalf("shape: %s ← %s, %s (server_id %d) ← %s", mid.Name, mid.Source, low.Name, low.ServerID, low.Source)
	}
	midRoot, err := openRoot(mid.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer midRoot.Close()
	lowRoot, err := openRoot(low.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer lowRoot.Close()
	st, err := slaveStatus(ctx, lowRoot)
	if err != nil {
		t.Fatal(err)
	}
	if st["Master_Port"] != strconv.Itoa(mid.Port) || st["Master_Server_Id"] != "1001" || st["Using_Gtid"] != "Slave_Pos" {
		t.Fatalf("replica2 replicates from port %s server_id %s (Using_Gtid %s), want replica1's %d, 1001, Slave_Pos",
			st["Master_Port"], st["Master_Server_Id"], st["Using_Gtid"], mid.Port)
	}
	checkParallel := func(name string, db *sql.DB) {
		t.Helper()
		var threads int
		var mode string
		if err := db.QueryRowContext(ctx, "SELECT @@slave_parallel_threads, @@slave_parallel_mode").Scan(&threads, &mode); err != nil {
			t.Fatal(err)
		}
		if threads != 4 || mode != "optimistic" {
			t.Errorf("%s: slave_parallel_threads %d, mode %s; want 4, optimistic", name, threads, mode)
		}
	}
	checkParallel("replica1", midRoot)
	checkParallel("replica2", lowRoot)
	// The middle tier logs what its triggers change; the tier below takes
	// those rows and runs no trigger of its own (replicaTriggers).
	for _, c := range []struct {
		db   *sql.DB
		want string
	}{{midRoot, "LOGGING"}, {lowRoot, "NO"}} {
		var got string
		if err := c.db.QueryRowContext(ctx, "SELECT @@slave_run_triggers_for_rbr").Scan(&got); err != nil || got != c.want {
			t.Errorf("slave_run_triggers_for_rbr %q (%v), want %s", got, err, c.want)
		}
	}

	p := openDB(t, sb, sb.Primary, "")
	write := func(v int) string {
		t.Helper()
		if _, err := p.ExecContext(ctx, "INSERT INTO tiers.t VALUES (?)", v); err != nil {
			t.Fatal(err)
		}
		var pos string
		if err := p.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
			t.Fatal(err)
		}
		return pos
	}
	wait := func(db *sql.DB, pos string, secs int) int64 {
		t.Helper()
		var res sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, secs).Scan(&res); err != nil {
			t.Fatal(err)
		}
		return res.Int64
	}
	for _, q := range []string{"CREATE DATABASE tiers", "CREATE TABLE tiers.t (v INT PRIMARY KEY) ENGINE=InnoDB"} {
		if _, err := p.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// The primary's position, GTIDs preserved through the middle tier.
	if res := wait(lowRoot, write(1), 30); res != 0 {
		t.Fatalf("replica2 did not reach the primary's position (MASTER_GTID_WAIT = %d)", res)
	}

	// The middle tier stopped: replica2's own threads still run, yet the
	// primary's writes no longer reach it.
	if _, err := midRoot.ExecContext(ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	pos := write(2)
	if res := wait(lowRoot, pos, 2); res != -1 {
		t.Errorf("replica2 reached the primary's position with its source stopped (MASTER_GTID_WAIT = %d)", res)
	}
	if st, err := slaveStatus(ctx, lowRoot); err != nil || st["Slave_IO_Running"] != "Yes" || st["Slave_SQL_Running"] != "Yes" {
		t.Errorf("replica2's threads with the middle tier stopped: io %q sql %q (%v); want both running", st["Slave_IO_Running"], st["Slave_SQL_Running"], err)
	}
	if _, err := midRoot.ExecContext(ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	if res := wait(lowRoot, pos, 30); res != 0 {
		t.Fatalf("replica2 did not catch up once the middle tier restarted (MASTER_GTID_WAIT = %d)", res)
	}

	// A restarted replica keeps its parallel appliers and its source.
	if err := sb.Restart(ctx, "replica2", false); err != nil {
		t.Fatal(err)
	}
	lowRoot2, err := openRoot(low.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer lowRoot2.Close()
	checkParallel("replica2 after restart", lowRoot2)
	if res := wait(lowRoot2, write(3), 30); res != 0 {
		t.Fatalf("replica2 after restart did not reach the primary's position (MASTER_GTID_WAIT = %d)", res)
	}
}
