package procs_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/procs"
)

// binlogState reads the replica's binlog position and the GTIDs it wrote
// itself (entries of @@gtid_binlog_state with its own server id).
func binlogState(t *testing.T, b *bundle) (pos, own string) {
	t.Helper()
	var state string
	var serverID uint32
	if err := b.replica.QueryRowContext(b.ctx, "SELECT @@GLOBAL.gtid_binlog_pos, @@GLOBAL.gtid_binlog_state, @@server_id").Scan(&pos, &state, &serverID); err != nil {
		t.Fatal(err)
	}
	var mine []string
	for _, g := range strings.Split(state, ",") {
		if parts := strings.Split(g, "-"); len(parts) == 3 && parts[1] == strconv.FormatUint(uint64(serverID), 10) {
			mine = append(mine, g)
		}
	}
	return pos, strings.Join(mine, ",")
}

// replicationRunning reads both thread states on the replica by column name.
func replicationRunning(t *testing.T, b *bundle) bool {
	t.Helper()
	rows, err := b.replica.QueryContext(b.ctx, "SHOW SLAVE STATUS")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	if !rows.Next() {
		t.Fatal("replica has no replication configured")
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		t.Fatal(err)
	}
	running := 0
	for i, c := range cols {
		if (c == "Slave_IO_Running" || c == "Slave_SQL_Running") && vals[i].String == "Yes" {
			running++
		}
	}
	return running == 2
}

// TestRunSuccess: the procedure builds a MyISAM result table on the
// replica and returns two result sets, the last with SUMMARY: success, the
// log has both sets, and nothing reached the replica's binary log
// (sql_log_bin=0), so replication keeps running. Not parallel: it compares
// the replica's binlog position before and after, which other tests'
// writes on the primary would move.
func TestRunSuccess(t *testing.T) {
	b := setup(t)
	posBefore, ownBefore := binlogState(t, b)

	r := b.runner(t, "calc", nil)
	res, err := r.Run(b.ctx, &procs.RunParams{TopicID: 42, Scope: 2, LogPath: "runs/42.log"})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.ResultSets != 2 || res.Rows != 4 || res.Duration <= 0 {
		t.Fatalf("result %+v, want 2 result sets and 4 rows", res)
	}
	if want := filepath.Join(b.logDir, "runs", "42.log"); res.LogPath != want {
		t.Fatalf("log path %q, want %q", res.LogPath, want)
	}

	posAfter, ownAfter := binlogState(t, b)
	if posAfter != posBefore || ownAfter != ownBefore {
		t.Fatalf("replica binlog moved: pos %q -> %q, own GTIDs %q -> %q", posBefore, posAfter, ownBefore, ownAfter)
	}
	var n int
	var engine string
	if err := b.replica.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM result_42").Scan(&n); err != nil || n != 3 {
		t.Fatalf("result table on the replica: %d rows, %v", n, err)
	}
	if err := b.replica.QueryRowContext(b.ctx, "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'result_42'", b.name).Scan(&engine); err != nil || engine != "MyISAM" {
		t.Fatalf("result table engine %q, %v", engine, err)
	}
	// Replication still applies new primary writes.
	if _, err := b.primary.ExecContext(b.ctx, "CREATE TABLE after_run (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	if !replicationRunning(t, b) {
		t.Fatal("replication stopped after the run")
	}

	// The run's session (sql_log_bin=0) never went back to the pool.
	// Three sessions held open at once (deferred Close), so the pool must
	// hand out every idle one.
	for range 3 {
		c, err := b.replica.Conn(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var logBin int
		if err := c.QueryRowContext(b.ctx, "SELECT @@SESSION.sql_log_bin").Scan(&logBin); err != nil || logBin != 1 {
			t.Fatalf("pooled session has sql_log_bin=%d (%v)", logBin, err)
		}
	}

	data, err := os.ReadFile(res.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	log := string(data)
	t.Logf("log:\n%s", log)
	for _, want := range []string{
		"# result set 1\nid\tscore\tnote\n1\t0.5\ta\\tb\n2\t1.5\tNULL\n3\t2.5\tc\n",
		"# result set 2\nstatus\ttopic_id\tscope\nSUMMARY topic 42\t42\t2\n",
		"sql_log_bin=0",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	lines := strings.Split(strings.TrimSuffix(log, "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "# outcome: success") {
		t.Errorf("last log line %q, want the outcome", last)
	}
	fi, err := os.Stat(res.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&^0o640 != 0 {
		t.Errorf("log mode %v, want at most 0640", perm)
	}
}

// TestRunMarkerMissing: SUMMARY in an earlier result set does not count:
// only the last one decides.
func TestRunMarkerMissing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res, err := b.runner(t, "nomark", nil).Run(b.ctx, &procs.RunParams{TopicID: 1, Scope: 1, LogPath: ""})
	if !errors.Is(err, procs.ErrFailed) {
		t.Fatalf("Run = %v, want ErrFailed", err)
	}
	if res == nil || res.ResultSets != 2 || !strings.HasPrefix(filepath.Base(res.LogPath), "topic_1_") {
		t.Fatalf("result %+v", res)
	}
	assertOutcome(t, res.LogPath, "# outcome: failed")

	// Without a marker, finishing without a SQL error is success, even
	// with no result set at all.
	res, err = b.runner(t, "quiet", func(c *procs.Config) { c.Marker = "" }).Run(b.ctx, &procs.RunParams{TopicID: 1, Scope: 1, LogPath: ""})
	if err != nil || res.ResultSets != 0 {
		t.Fatalf("quiet without marker: %+v, %v", res, err)
	}
	// With a marker, no result set is a failure.
	if _, err := b.runner(t, "quiet", nil).Run(b.ctx, &procs.RunParams{TopicID: 1, Scope: 1, LogPath: ""}); !errors.Is(err, procs.ErrFailed) {
		t.Fatalf("quiet with marker: %v, want ErrFailed", err)
	}
}

// TestRunSignal: a procedure that SIGNALs fails with its SQL error
// reachable, and the log keeps what came before plus the outcome.
func TestRunSignal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	res, err := b.runner(t, "boom", nil).Run(b.ctx, &procs.RunParams{TopicID: 5, Scope: 1, LogPath: "boom.log"})
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1644 || !strings.Contains(me.Message, "no data for topic") {
		t.Fatalf("Run = %v, want the procedure's MySQL error 1644", err)
	}
	if errors.Is(err, procs.ErrFailed) || errors.Is(err, procs.ErrTimeout) {
		t.Fatalf("SQL error also reads as %v", err)
	}
	data, rerr := os.ReadFile(res.LogPath)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if !strings.Contains(string(data), "starting") {
		t.Errorf("log lost the first result set:\n%s", data)
	}
	assertOutcome(t, res.LogPath, "# outcome: failed")
}

// TestRunTimeout: a run past Config.Timeout returns ErrTimeout within
// about the timeout, and the statement is really gone from the server.
func TestRunTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.runner(t, "sleepy", func(c *procs.Config) { c.Timeout = 500 * time.Millisecond })
	start := time.Now()
	res, err := r.Run(b.ctx, &procs.RunParams{TopicID: 9, Scope: 1, LogPath: ""})
	took := time.Since(start)
	if !errors.Is(err, procs.ErrTimeout) {
		t.Fatalf("Run = %v, want ErrTimeout", err)
	}
	if took > 2*time.Second {
		t.Fatalf("Run returned after %v, want about 500ms", took)
	}
	t.Logf("after %v: %v", took, err)
	assertOutcome(t, res.LogPath, "# outcome: failed")
	assertNotRunning(t, b, b.name+"`.`sleepy")
}

// TestRunStubborn: a procedure that outlives KILL QUERY (a loop of
// sleeps) is stopped by killing its connection after the grace period.
func TestRunStubborn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.runner(t, "stubborn", func(c *procs.Config) { c.Timeout = 300 * time.Millisecond })
	start := time.Now()
	_, err := r.Run(b.ctx, &procs.RunParams{TopicID: 11, Scope: 1, LogPath: ""})
	took := time.Since(start)
	// KILL QUERY usually only ends one SLEEP of the loop and the
	// connection has to be killed; when it lands between statements it
	// ends the procedure by itself. Either way: ErrTimeout, and stopped.
	if !errors.Is(err, procs.ErrTimeout) {
		t.Fatalf("Run = %v, want ErrTimeout", err)
	}
	if took > 6*time.Second {
		t.Fatalf("Run returned after %v", took)
	}
	t.Logf("after %v: %v", took, err)
	assertNotRunning(t, b, b.name+"`.`stubborn")
}

// TestRunCancelled: cancelling ctx stops the statement too, and the error
// is the context's, not ErrTimeout.
func TestRunCancelled(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(b.ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.runner(t, "sleepy", nil).Run(ctx, &procs.RunParams{TopicID: 10, Scope: 1, LogPath: ""})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, procs.ErrTimeout) {
		t.Fatalf("Run = %v, want the context's error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Run returned after %v", took)
	}
	assertNotRunning(t, b, b.name+"`.`sleepy")
}

// assertNotRunning polls the replica's processlist until no statement
// mentions SLEEP(30) or the procedure call, failing after 5s.
func assertNotRunning(t *testing.T, b *bundle, proc string) {
	t.Helper()
	const q = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND (INFO LIKE '%SLEEP(30)%' OR INFO LIKE CONCAT('%', ?, '%'))"
	var n int
	if !testdb.Poll(5*time.Second, func() bool {
		if err := b.replica.QueryRowContext(b.ctx, q, proc).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	}) {
		t.Fatalf("%d statements still running on the replica", n)
	}
}

func assertOutcome(t *testing.T, path, prefix string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, prefix) {
		t.Errorf("last log line %q, want %q…", last, prefix)
	}
}

// TestExists: an existing procedure is found, a missing one is
// ErrNoProcedure, a malformed name a ConfigError.
func TestExists(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.runner(t, "calc", nil).Exists(b.ctx); err != nil {
		t.Fatalf("calc: %v", err)
	}
	if err := b.runner(t, "missing", nil).Exists(b.ctx); !errors.Is(err, procs.ErrNoProcedure) {
		t.Fatalf("missing: %v, want ErrNoProcedure", err)
	}
	r := &procs.Runner{DB: b.replica, Config: procs.Config{Procedure: "x.y`; DROP DATABASE z"}}
	if err := r.Exists(b.ctx); !errors.Is(err, procs.ErrConfig) {
		t.Fatalf("injection: %v, want ErrConfig", err)
	}
}

// TestRunBadLogPath: a relative log path that leaves LogDir is refused
// before anything runs, and the result still names the path.
func TestRunBadLogPath(t *testing.T) {
	t.Parallel()
	r := &procs.Runner{DB: &sql.DB{}, Config: procs.Config{Procedure: "a.b", LogDir: t.TempDir()}}
	res, err := r.Run(context.Background(), &procs.RunParams{TopicID: 1, Scope: 1, LogPath: "../escape.log"})
	if err == nil || res == nil || res.LogPath != "../escape.log" {
		t.Fatalf("Run = %+v, %v; want a refusal naming the path", res, err)
	}
}

// TestRunLogPerTopic: a topic's log is one file rewritten by each run
// (same inode, only the last run's lines, its label in the first line); a
// failed run's log moves to <name>.failed.log and outlives the next
// successful run; a log another run holds (flock) is left alone and the
// run writes beside it.
func TestRunLogPerTopic(t *testing.T) {
	t.Parallel()
	b := setup(t)
	calc := b.runner(t, "calc", nil)
	path := filepath.Join(b.logDir, "42.log")

	res, err := calc.Run(b.ctx, &procs.RunParams{TopicID: 61, Scope: 1, LogPath: "42.log", Label: "claim token 1"})
	if err != nil || res.LogPath != path {
		t.Fatalf("first run: %+v, %v; want its log at %s", res, err, path)
	}
	first, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	res, err = calc.Run(b.ctx, &procs.RunParams{TopicID: 62, Scope: 1, LogPath: "42.log", Label: "claim token 2"})
	if err != nil || res.LogPath != path {
		t.Fatalf("second run: %+v, %v; want its log at %s", res, err, path)
	}
	second, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(first, second) {
		t.Error("the second run created a new file instead of rewriting the topic's log")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "# nonqueue: CALL"); n != 1 || !strings.Contains(strings.SplitN(string(data), "\n", 2)[0], "claim token 2") {
		t.Fatalf("log after two runs has %d headers, first line %q; want only the second run's", n, strings.SplitN(string(data), "\n", 2)[0])
	}
	assertOutcome(t, path, "# outcome: success")

	// (Each run has its own topic id: calc creates result_<id> without
	// dropping it. The log path is what the test is about.)
	// A failure is kept beside the topic's log, past the next success.
	boom := b.runner(t, "boom", nil)
	res, err = boom.Run(b.ctx, &procs.RunParams{TopicID: 63, Scope: 1, LogPath: "42.log"})
	failed := filepath.Join(b.logDir, "42.failed.log")
	if err == nil || res.LogPath != failed {
		t.Fatalf("failing run: %+v, %v; want an error and its log at %s", res, err, failed)
	}
	if _, err := calc.Run(b.ctx, &procs.RunParams{TopicID: 64, Scope: 1, LogPath: "42.log"}); err != nil {
		t.Fatal(err)
	}
	assertOutcome(t, failed, "# outcome: failed")
	assertOutcome(t, path, "# outcome: success")

	// A log held by another run: this run writes beside it.
	held, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := syscall.Flock(int(held.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	res, err = calc.Run(b.ctx, &procs.RunParams{TopicID: 65, Scope: 1, LogPath: "42.log"})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(res.LogPath) != b.logDir || !strings.HasPrefix(filepath.Base(res.LogPath), "42.") || res.LogPath == path || res.LogPath == failed {
		t.Fatalf("run beside a held log wrote %q", res.LogPath)
	}
	assertOutcome(t, res.LogPath, "# outcome: success")
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("the held log was changed")
	}
}

// TestRunOnGivenConn: with RunParams.Conn the call runs on the caller's
// session (the worker's run session, which holds the topic's replica
// lock): the log names that connection, and the session stays open and the
// caller's afterwards. Cancelling the run's context (the worker's claim
// found lost) still stops the statement on the server.
func TestRunOnGivenConn(t *testing.T) {
	t.Parallel()
	b := setup(t)
	conn, err := b.replica.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var id uint64
	if err := conn.QueryRowContext(b.ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(b.ctx, "SET @mine = 7"); err != nil {
		t.Fatal(err)
	}
	res, err := b.runner(t, "calc", nil).Run(b.ctx, &procs.RunParams{TopicID: 43, Scope: 2, LogPath: "runs/43.log", Conn: conn})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	data, err := os.ReadFile(res.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "# connection "+strconv.FormatUint(id, 10)+",") {
		t.Errorf("the log does not name connection %d:\n%s", id, data)
	}
	var mine int
	var after uint64
	if err := conn.QueryRowContext(b.ctx, "SELECT @mine, CONNECTION_ID()").Scan(&mine, &after); err != nil || mine != 7 || after != id {
		t.Fatalf("the caller's session after Run: @mine %d, connection %d, %v; want 7 on %d", mine, after, err, id)
	}

	ctx, cancel := context.WithTimeout(b.ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := b.runner(t, "sleepy", nil).Run(ctx, &procs.RunParams{TopicID: 44, Scope: 1, Conn: conn}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run cancelled = %v, want the context's error", err)
	}
	assertNotRunning(t, b, b.name+"`.`sleepy")
}
