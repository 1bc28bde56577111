package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
)

// tagCalcSQL is a procedure that tags its output per call: each call
// records itself in tagcalls on the replica (the worker's session has
// sql_log_bin=0, so the row stays there) with its connection and the claim
// token the replica's copy of the topic row holds (the worker's GTID wait
// has replicated the claim by then), and writes the row's tag into both
// result tables, R_<id> first, S_<id> after a sleep (from slow). A test
// maps the tag published on the primary back to the claim whose call made
// it, and a torn pair (tables of two calls) shows as two tags.
const tagCalcSQL = `CREATE PROCEDURE tagcalc(IN p_id BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_secs DOUBLE DEFAULT 0;
  DECLARE v_tag BIGINT;
  INSERT INTO tagcalls (topic_id, conn, token) SELECT p_id, CONNECTION_ID(), claim_token FROM topic WHERE id = p_id;
  SET v_tag = LAST_INSERT_ID();
  SELECT COALESCE(MAX(secs), 0) INTO v_secs FROM slow WHERE topic_id = p_id;
  SET @s = CONCAT('DROP TABLE IF EXISTS R_', p_id); PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE R_', p_id, ' (k INT PRIMARY KEY, tag BIGINT) ENGINE=MyISAM SELECT k, ', v_tag, ' AS tag FROM src WHERE topic_id = ', p_id);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  DO SLEEP(v_secs);
  SET @s = CONCAT('DROP TABLE IF EXISTS S_', p_id); PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE S_', p_id, ' (tag BIGINT) ENGINE=MyISAM SELECT ', v_tag, ' AS tag');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, v_tag AS tag;
END`

// setupTagged is setupWork with tagcalc installed and topic 1 requested,
// its procedure sleeping secs between its two tables; it returns a worker
// configuration for replica 1 that calls tagcalc.
func setupTagged(t *testing.T, secs float64) (*workBundle, string) {
	t.Helper()
	b := setupWork(t)
	for _, s := range []string{
		"CREATE TABLE tagcalls (tag BIGINT AUTO_INCREMENT PRIMARY KEY, topic_id BIGINT NOT NULL, conn BIGINT NOT NULL, token BIGINT) ENGINE=InnoDB",
		tagCalcSQL,
	} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, ?)", secs); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	b.replica[0] = testdb.Open(t, env.Replica(0, b.db))
	body, err := os.ReadFile(b.config(t, 0, ""))
	if err != nil {
		t.Fatal(err)
	}
	tagged := strings.Replace(string(body), b.db+".calc\"", b.db+".tagcalc\"", 1)
	if tagged == string(body) {
		t.Fatal("the test configuration names no calc procedure to replace")
	}
	path := filepath.Join(b.dir, "replica1-tagged.toml")
	if err := os.WriteFile(path, []byte(tagged), 0o600); err != nil {
		t.Fatal(err)
	}
	b.addTopics(t, 1)
	return b, path
}

// tagCalls counts replica 1's calls of tagcalc for topic 1.
func (b *workBundle) tagCalls(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.replica[0].QueryRowContext(b.ctx, "SELECT COUNT(*) FROM tagcalls WHERE topic_id = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkNewestPublished: topic 1 is done once, and what the primary
// publishes is the newest claim's own call: every row of R_1 and S_1
// carries one tag, the tag of the call replica 1 recorded for the claim
// token of the done run. Nothing is left running or on the replica.
func (b *workBundle) checkNewestPublished(t *testing.T) {
	t.Helper()
	var token uint64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT claim_token FROM run WHERE topic_id = 1 AND outcome = 'done'").Scan(&token); err != nil {
		t.Fatalf("the done run of topic 1: %v", err)
	}
	if max := b.count(t, "SELECT claim_token FROM topic WHERE id = 1"); uint64(max) != token {
		t.Errorf("the done run's claim token is %d; the topic's newest claim is %d", token, max)
	}
	var want int64
	if err := b.replica[0].QueryRowContext(b.ctx, "SELECT tag FROM tagcalls WHERE topic_id = 1 AND token = ?", token).Scan(&want); err != nil {
		t.Fatalf("replica 1's call for claim token %d: %v", token, err)
	}
	rows, err := b.primary.QueryContext(b.ctx, "SELECT tag, COUNT(*) FROM (SELECT tag FROM R_1 UNION ALL SELECT tag FROM S_1) x GROUP BY tag")
	if err != nil {
		t.Fatalf("read the published tables: %v", err)
	}
	defer rows.Close()
	tags := map[int64]int{}
	for rows.Next() {
		var tag int64
		var n int
		if err := rows.Scan(&tag, &n); err != nil {
			t.Fatal(err)
		}
		tags[tag] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(tags) != 1 || tags[want] != 11 {
		calls := map[int64]string{}
		if r, err := b.replica[0].QueryContext(b.ctx, "SELECT tag, CONCAT('connection ', conn, ', token ', COALESCE(token, 'NULL')) FROM tagcalls"); err == nil {
			for r.Next() {
				var tag int64
				var what string
				r.Scan(&tag, &what)
				calls[tag] = what
			}
			r.Close()
		}
		t.Errorf("published rows by tag %v; want all 11 (10 in R_1, 1 in S_1) from tag %d, the call for claim token %d (calls: %v)", tags, want, token, calls)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'"); n != 1 {
		t.Errorf("%d done runs of topic 1, want 1", n)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0"); n != 0 {
		t.Error("topic 1 left required or running")
	}
	var left int
	if err := b.replica[0].QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN ('R_1', 'S_1')", b.db).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d result tables of topic 1 left on replica 1", left)
	}
}

// runningHolder returns topic 1's running instance and claim token.
func (b *workBundle) runningHolder(t *testing.T) (int64, uint64) {
	t.Helper()
	var inst int64
	var token uint64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT running, claim_token FROM topic WHERE id = 1").Scan(&inst, &token); err != nil {
		t.Fatal(err)
	}
	return inst, token
}

// TestSIGSTOPSameReplicaNewerClaimWins: two worker processes on one
// replica. The one whose procedure runs for topic 1 is paused (SIGSTOP)
// past its lease; the other reaps the claim, claims topic 1 again on the
// same replica and calls the procedure; then the paused one resumes
// (SIGCONT) while that call runs. The resumed run must not drop, overwrite
// or export the newer claim's tables: the primary publishes the newer
// call's tables, whole (both tables of the one call).
func TestSIGSTOPSameReplicaNewerClaimWins(t *testing.T) {
	b, cfg := setupTagged(t, 3)
	w := map[int64]*proc{101: startWorker(t, cfg, "--instance", "1"), 102: startWorker(t, cfg, "--instance", "2")}
	var holder int64
	testdb.WaitFor(t, 30*time.Second, "a worker on replica 1 inside the procedure for topic 1", func() bool {
		holder, _ = b.runningHolder(t)
		return w[holder] != nil && b.tagCalls(t) == 1
	})
	paused := w[holder]
	if err := paused.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 40*time.Second, "the other worker to claim topic 1 again and call the procedure", func() bool {
		inst, _ := b.runningHolder(t)
		return inst != 0 && inst != holder && b.tagCalls(t) == 2
	})
	if err := paused.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 40*time.Second, "topic 1 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") >= 1
	})
	testdb.WaitFor(t, 20*time.Second, "the resumed worker to record its lost claim", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND instance_id = ? AND outcome = 'lost'", holder) == 1
	})
	for _, p := range w {
		p.cmd.Process.Signal(syscall.SIGTERM)
		if err := p.wait(t, 30*time.Second); err != nil {
			t.Errorf("worker exit: %v", err)
		}
	}
	// The paused run's session held the topic's replica lock; the newer
	// run ended it (its output is complete once it exited).
	for id, p := range w {
		if id != holder && !strings.Contains(p.out.String(), "killed an older, lost run's session") {
			t.Errorf("the newer claim's worker did not report killing the paused run's session")
		}
	}
	b.checkNewestPublished(t)
}

// TestOperatorReleaseSameReplica: an operator releases topic 1 from the
// dashboard (queue.ReleaseClaim, the dashboard's code path) while its
// procedure runs; the next claim lands on the same replica (the process's
// other instance). The released run must not touch the newer claim's
// tables there, and the primary publishes the newer call's tables, whole.
func TestOperatorReleaseSameReplica(t *testing.T) {
	b, cfg := setupTagged(t, 2)
	w := startWorker(t, cfg, "--instances", "2")
	var inst int64
	var token uint64
	testdb.WaitFor(t, 30*time.Second, "an instance on replica 1 inside the procedure for topic 1", func() bool {
		inst, token = b.runningHolder(t)
		return inst != 0 && b.tagCalls(t) == 1
	})
	if err := b.q.ReleaseClaim(b.ctx, &queue.AdminReleaseParams{TopicID: 1, InstanceID: inst, Token: token, Operator: "test"}); err != nil {
		t.Fatalf("release topic 1: %v", err)
	}
	testdb.WaitFor(t, 40*time.Second, "topic 1 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") >= 1
	})
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Errorf("worker exit: %v", err)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND claim_token = ? AND outcome = 'released'", token); n != 1 {
		t.Errorf("%d released records for the operator's release", n)
	}
	var doneToken uint64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT claim_token FROM run WHERE topic_id = 1 AND outcome = 'done'").Scan(&doneToken); err != nil {
		t.Fatal(err)
	}
	if doneToken <= token {
		t.Errorf("done by claim token %d, not a claim after the released one (%d)", doneToken, token)
	}
	b.checkNewestPublished(t)
}

// TestSweepSparesLiveRun: the worker's sweep of result tables left on a
// replica (CleanupReplica, here with no age limit, as if the run were older
// than any limit) runs while a run's procedure has created one of its two
// tables: it drops nothing of that run, which publishes whole.
func TestSweepSparesLiveRun(t *testing.T) {
	b, cfg := setupTagged(t, 3)
	sb := env.SB
	sh, err := transfer.NewShipper(transfer.Config{
		SSH:            transfer.SSHConfig{Host: sb.SSH.Host, Port: sb.SSH.Port, User: sb.SSH.User, KeyFile: sb.SSH.KeyFile, KnownHosts: sb.SSH.KnownHosts},
		PrimaryDatadir: sb.Primary.Datadir, Schema: b.db, Tables: []string{"R_{id}", "S_{id}"},
	}.WithDefaults(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	w := startWorker(t, cfg, "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "the procedure for topic 1 between its two tables", func() bool {
		var n int
		if err := b.replica[0].QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'R_1'", b.db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1 && b.tagCalls(t) == 1
	})
	swept, err := sh.CleanupReplica(b.ctx, b.replica[0], 0)
	if err != nil || len(swept) != 0 {
		t.Errorf("CleanupReplica during the run = %v, %v; want nothing dropped, no error", swept, err)
	}
	testdb.WaitFor(t, 40*time.Second, "topic 1 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") >= 1
	})
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Errorf("worker exit: %v", err)
	}
	b.checkNewestPublished(t)
}
