package worker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker"
)

// TestPrimaryCrash: the primary is killed (SIGKILL) and restarted while a
// worker process claims, computes and publishes topics. Every topic still
// ends done and nothing stays marked running (claims whose instance lost
// its step are taken back after the lease); every published result is whole
// and matches its source rows; and CleanupPrimary, which a worker runs at
// start and every 10 minutes, leaves no staging or swapped-out table or
// file behind.
func TestPrimaryCrash(t *testing.T) {
	faultMidRun(t, "primary", func(t *testing.T) { restart(t, "primary") })
}

// TestReplicaCrash: the same with the replica the worker computes on killed
// and restarted (procedures cut short, the replica's result tables left as
// they were, replication resumed by the restarted server).
func TestReplicaCrash(t *testing.T) {
	faultMidRun(t, "replica1", func(t *testing.T) { restart(t, "replica1") })
}

// TestPrimaryStall: the primary stops answering (SIGSTOP) for longer than
// the lease and then resumes, as after a long I/O stall or a VM pause:
// statements in flight hang and resume, claims may expire meanwhile; the
// same outcome is required.
func TestPrimaryStall(t *testing.T) {
	faultMidRun(t, "primary", func(t *testing.T) {
		pid := env.SB.Primary.PID
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	})
}

// restart kills server (SIGKILL) and starts it again on the same port and
// datadir.
func restart(t *testing.T, server string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.SB.Restart(ctx, server, true); err != nil {
		t.Fatalf("crash and restart the %s: %v", server, err)
	}
}

// faultMidRun runs 80 topics on one worker process of 4 instances on
// replica1 and applies fault to server (a crash and restart, a stall) once
// 20 are done.
func faultMidRun(t *testing.T, server string, fault func(*testing.T)) {
	b := setup(t, 3*time.Second)
	ids := b.addTopics(t, 1, 80)
	// A run cut short counts as a failed attempt (a topic that brings its
	// server down each time must end parked); here it is retried soon.
	p := b.startPool(t, 0, 4, func(wc *worker.Config, _ *monitor.GateConfig) { wc.BackoffBase = 200 * time.Millisecond })
	testdb.WaitFor(t, 60*time.Second, "a quarter of the topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required = 0") >= 20
	})
	inFlight := b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0")
	fault(t)
	t.Logf("fault on the %s with %d topics claimed; over", server, inFlight)
	testdb.WaitFor(t, 2*time.Minute, "every topic done (or parked) after the fault", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE (required > 0 AND parked_at IS NULL) OR running <> 0") == 0
	})
	p.stop(t)
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE parked_at IS NOT NULL"); n != 0 {
		t.Errorf("%d topics parked by the fault", n)
	}

	// Whole results: R_<id> holds the topic's 20 source rows times the
	// scope, S_<id> their count and sum.
	for _, id := range ids {
		var want, n, total, rn, rsum int64
		if err := b.primary.QueryRowContext(b.ctx, "SELECT SUM(v) FROM src WHERE topic_id = ?", id).Scan(&want); err != nil {
			t.Fatal(err)
		}
		want *= queue.ScopeFull
		q := fmt.Sprintf("SELECT (SELECT n FROM S_%d), (SELECT total FROM S_%d), (SELECT COUNT(*) FROM R_%d), (SELECT SUM(v) FROM R_%d)", id, id, id, id)
		if err := b.primary.QueryRowContext(b.ctx, q).Scan(&n, &total, &rn, &rsum); err != nil {
			t.Errorf("topic %d: read its published tables: %v", id, err)
			continue
		}
		if n != 20 || total != want || rn != 20 || rsum != want {
			t.Errorf("topic %d: S = (%d, %d), R has %d rows summing to %d; want 20 rows summing to %d", id, n, total, rn, rsum, want)
		}
	}

	staged := "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND (TABLE_NAME LIKE 'nqtmp\\_%' OR TABLE_NAME LIKE 'nqold\\_%')"
	t.Logf("%d staging or swapped-out tables left by the fault before the cleanup", b.count(t, staged, b.db))
	if err := p.shipper.CleanupPrimary(b.ctx, b.primary, 0); err != nil {
		t.Fatalf("CleanupPrimary after the fault: %v", err)
	}
	if n := b.count(t, staged, b.db); n != 0 {
		t.Errorf("%d staging or swapped-out tables left after CleanupPrimary", n)
	}
	entries, err := os.ReadDir(filepath.Join(env.SB.Primary.Datadir, b.db))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "nqtmp_") || strings.HasPrefix(e.Name(), "nqold_") {
			t.Errorf("file %s left in the primary's datadir", e.Name())
		}
	}

	// Result tables whose drop the crash cut short stay on the replica
	// until the worker's sweep (CleanupReplica, here without its age
	// limit) drops them.
	rdb := testdb.Open(t, env.Replica(0, b.db))
	results := "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND (TABLE_NAME LIKE 'R\\_%' OR TABLE_NAME LIKE 'S\\_%')"
	var left int
	if err := rdb.QueryRowContext(b.ctx, results, b.db).Scan(&left); err != nil {
		t.Fatal(err)
	}
	swept, err := p.shipper.CleanupReplica(b.ctx, rdb, 0)
	if err != nil {
		t.Fatalf("CleanupReplica: %v", err)
	}
	t.Logf("%d result tables left on the replica by the fault; the sweep dropped those of topics %v", left, swept)
	if err := rdb.QueryRowContext(b.ctx, results, b.db).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d result tables left on the replica after its cleanup", left)
	}

	// Each topic was computed at least once; again only for runs the crash
	// cut short (their claims were released or taken back and run again):
	// at most one per instance, two with a claim or release caught
	// mid-commit.
	var calls, topics int
	if err := rdb.QueryRowContext(b.ctx, "SELECT COUNT(*), COUNT(DISTINCT topic_id) FROM calls").Scan(&calls, &topics); err != nil {
		t.Fatal(err)
	}
	if topics != len(ids) {
		t.Errorf("the procedure ran for %d topics, want %d", topics, len(ids))
	}
	t.Logf("%d calls for %d topics (%d again after the fault)", calls, topics, calls-topics)
	if calls-topics > 2*4 {
		t.Errorf("%d runs repeated after the fault; 4 instances had at most %d runs to lose", calls-topics, 2*4)
	}
}
