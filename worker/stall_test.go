package worker_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// bigCalcSQL replaces calc for TestSSHStall: R_<id> is about 64 MiB (a
// fixed-length MyISAM row of 268 bytes, 250,000 rows), so its file takes a
// while to stream and the stop lands in the middle of it.
const bigCalcSQL = `CREATE PROCEDURE calc(IN p_id BIGINT, IN p_scope TINYINT)
BEGIN
  INSERT INTO calls (topic_id) VALUES (p_id);
  SET @s = CONCAT('DROP TABLE IF EXISTS R_', p_id, ', S_', p_id); PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE R_', p_id, ' (k INT PRIMARY KEY, v BIGINT, pad CHAR(255) CHARACTER SET latin1 NOT NULL) ENGINE=MyISAM SELECT seq AS k, seq * ', p_scope, ' AS v, REPEAT(''x'', 255) AS pad FROM seq_1_to_250000');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE S_', p_id, ' (n INT, total BIGINT, srv INT) ENGINE=MyISAM SELECT COUNT(*) AS n, COALESCE(SUM(v), 0) AS total, @@server_id AS srv FROM R_', p_id);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, p_id AS topic;
END`

// stallBound is how soon after the stop the claim must be released: the
// stall is detected within ssh.stall_timeout (10s by default) of the last
// progress, or keepalive_interval + keepalive_timeout (15s) of the last
// answer, then the run cleans up on the databases and releases. The rest is
// margin for the shared test machine; TCP alone would wait until the
// server resumes (a stopped peer on loopback keeps answering at the TCP
// level), or about 15 minutes for a vanished one.
const stallBound = 25 * time.Second // 15s (transfer.DefaultKeepaliveInterval + DefaultKeepaliveTimeout) + 10s

// TestSSHStall: the primary's sshd (the listener and every per-connection
// process under it, where internal-sftp runs) is stopped with SIGSTOP while
// a worker streams a 64 MiB result file over the shared connection. The
// transfer is abandoned within its bound, the claim is released with a
// failed run whose error says the transfer stalled, nothing is published;
// after SIGCONT the worker dials again and the topic completes.
func TestSSHStall(t *testing.T) {
	b := setup(t, 30*time.Second)
	for _, q := range []string{"DROP PROCEDURE calc", bigCalcSQL} {
		if _, err := b.primary.ExecContext(b.ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	b.addTopics(t, 1, 1)
	p := b.startPool(t, 0, 1, func(wc *worker.Config, _ *monitor.GateConfig) { wc.BackoffBase = 500 * time.Millisecond })

	// Stop sshd as soon as the data file's bytes start landing.
	dir := filepath.Join(env.SB.Primary.Datadir, b.db)
	deadline := time.Now().Add(90 * time.Second)
	var landing string
	for landing == "" {
		if time.Now().After(deadline) {
			t.Fatal("no staging file of R_1 appeared on the primary within 90s")
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if n := e.Name(); strings.HasPrefix(n, "nqtmp_") && strings.HasSuffix(n, "_R_1.MYD") {
				if fi, err := e.Info(); err == nil && fi.Size() > 0 {
					landing = n
				}
			}
		}
		if landing == "" {
			time.Sleep(2 * time.Millisecond)
		}
	}
	resume, err := env.SB.PauseSSH()
	t.Cleanup(resume)
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if fi, err := os.Stat(filepath.Join(dir, landing)); err == nil {
		t.Logf("sshd stopped with %s at %d bytes", landing, fi.Size())
	}

	var run *monitor.Run
	wait := time.NewTimer(stallBound)
	defer wait.Stop()
	for run == nil {
		select {
		case r := <-p.runs:
			if r.TopicID == 1 {
				run = r
			}
		case <-wait.C:
			t.Fatalf("the claim was not released within %v of stopping sshd (topic running: %d)",
				stallBound, b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0"))
		}
	}
	took := time.Since(stopped)
	t.Logf("run released %v after the stop: outcome %s, error %q", took, run.Outcome, run.Error)
	if run.Outcome != monitor.OutcomeFailed || !strings.Contains(run.Error, "stalled") {
		t.Errorf("run outcome %s, error %q; want failed with a stalled transfer", run.Outcome, run.Error)
	}
	testdb.WaitFor(t, 10*time.Second, "the failed run in the run history", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'failed' AND error LIKE '%stalled%'") == 1
	})
	if n := b.count(t, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'R_1'", b.db); n != 0 {
		t.Error("R_1 is live on the primary after the stalled transfer")
	}
	resume()

	testdb.WaitFor(t, 2*time.Minute, "topic 1 done after sshd resumed", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") == 1
	})
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0 OR required > 0"); n != 0 {
		t.Errorf("%d topics running or due after the retry", n)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM R_1"); n != 250000 {
		t.Errorf("published R_1 has %d rows, want 250000", n)
	}
}
