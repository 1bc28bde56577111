package main

import (
	"context"
	"database/sql"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// requireEnv skips t without a sandbox (fails in CI, as testdb does).
func requireEnv(t *testing.T) {
	t.Helper()
	if env.SB == nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no sandbox for the bench tests")
		}
		t.Skip("no sandbox (mariadbd or sshd missing)")
	}
}

// repoRoot is the repository the tests run in.
func repoRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestDefaultSeedIsInRepo: without -seed the harness runs the project's
// own rebuild of the original loop, which a clone has, and -seed still
// picks another.
func TestDefaultSeedIsInRepo(t *testing.T) {
	root := repoRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{}
	if err := b.locate(exe, "", filepath.Join(t.TempDir(), "results.json")); err != nil {
		t.Fatalf("locate with the default loop: %v", err)
	}
	want := filepath.Join(root, "bench", "seed", "seed-worker.sh")
	if b.seed != want {
		t.Fatalf("default loop is %s, want %s", b.seed, want)
	}
	if st, err := os.Stat(b.seed); err != nil || st.Mode()&0o111 == 0 {
		t.Fatalf("%s is not an executable file: %v", b.seed, err)
	}
	other := filepath.Join(t.TempDir(), "other.sh")
	if err := os.WriteFile(other, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := b.locate(exe, other, ""); err != nil || b.seed != other {
		t.Fatalf("-seed %s: got %s, %v", other, b.seed, err)
	}
}

// testBench is a harness on the package's sandbox with the bench's
// example loaded by the harness's own setup, small.
func testBench(t *testing.T, ctx context.Context, topics int) *bench {
	t.Helper()
	requireEnv(t)
	s := defaultSettings(true)
	s.SeedTopics, s.Topics, s.ScaleTopics, s.PostsMin, s.PostsMax = topics, topics, topics, 20, 40
	b := &bench{s: s, stdout: io.Discard, stderr: io.Discard, root: repoRoot(t), dir: t.TempDir(), sb: env.SB, started: time.Now(), setupS: map[string]float64{}}
	b.seed = filepath.Join(b.root, defaultSeed)
	// Each test loads the example afresh (the harness's setup expects an
	// empty server); dropping the databases on the primary drops them,
	// and the replica-only call counters with them, on the replica too.
	db, err := openDB(env.SB.MySQLConfig(env.SB.Primary), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS app"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS influencer"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS nonqueue"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.kids.StopAll(seedStopGrace); err != nil {
			t.Error(err)
		}
		b.closeDBs()
	})
	if err := b.setup(ctx); err != nil {
		t.Fatalf("harness setup: %v", err)
	}
	return b
}

// seedTrace runs one round of the loop at b.seed with the harness's
// configuration (the settings `make bench` uses) and returns the
// statements its sessions sent to the primary and to the replica, in
// order, from the general logs, and what the call counters say.
func seedTrace(t *testing.T, ctx context.Context, b *bench, run, topics, instances int) (primary, replica []string, r *runResult) {
	t.Helper()
	conf, err := b.writeSeedFiles(run)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.resetTopics(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.clearCalls(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.primary.ExecContext(ctx, `UPDATE app.TopicFilter SET influencerRecalcReqd = 2, influencerRunning = 0,
 influencerRecalcDate = NOW() - INTERVAL 1 SECOND WHERE topicFilterId BETWEEN 1 AND ?`, topics); err != nil {
		t.Fatal(err)
	}
	if err := b.waitReplicas(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	dbs := []*sql.DB{b.primaryNoBin, b.replicas[0]}
	for _, db := range dbs {
		for _, q := range []string{"SET GLOBAL log_output = 'TABLE'", "TRUNCATE TABLE mysql.general_log", "SET GLOBAL general_log = 1"} {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	r, err = b.seedRound(ctx, conf, run, topics, instances)
	for _, db := range dbs {
		if _, err := db.ExecContext(ctx, "SET GLOBAL general_log = 0"); err != nil {
			t.Fatal(err)
		}
	}
	if err != nil {
		t.Fatalf("seed round with %s: %v", b.seed, err)
	}
	var logs [2][]string
	for i, db := range dbs {
		rows, err := db.QueryContext(ctx, `SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log
 WHERE command_type = 'Query' AND user_host LIKE CONCAT(?, '[%') ORDER BY event_time, thread_id`, b.sb.User)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			logs[i] = append(logs[i], s)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return logs[0], logs[1], r
}

// TestSeedLoopEquivalent runs the reference script the loop was checked
// against and bench/seed/seed-worker.sh, one instance each, on the same
// topics with the harness's settings, and compares what they did: every
// statement each sent to the primary and to the replica, in order (the
// mark, the re-read, the lag check, the call, the flushes, the done mark,
// the drop), and the topics each computed. The reference is
// ../shared/bench/seed-worker.sh next to the repository, or
// NQ_SEED_REFERENCE. The reference is not part of the repository (the
// in-repo script replaces it), so a clone without it skips, in CI too: the
// script's own behaviour is still checked by TestSeedLoopComputesTwice.
func TestSeedLoopEquivalent(t *testing.T) {
	requireEnv(t)
	ref := os.Getenv("NQ_SEED_REFERENCE")
	if ref == "" {
		ref = filepath.Join(repoRoot(t), "..", "shared", "bench", "seed-worker.sh")
	}
	if _, err := os.Stat(ref); err != nil {
		t.Skipf("reference loop not here (%v); set NQ_SEED_REFERENCE", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const topics = 8
	b := testBench(t, ctx, topics)
	ours := b.seed

	b.seed = ref
	refP, refR, refRun := seedTrace(t, ctx, b, 1, topics, 1)
	b.seed = ours
	ourP, ourR, ourRun := seedTrace(t, ctx, b, 2, topics, 1)

	for _, r := range []*runResult{refRun, ourRun} {
		if r.Calls != topics || r.Missing+r.Duplicates+r.Unexpected+r.NotDone+r.LoopErrors != 0 {
			t.Errorf("one instance should compute each of %d topics once: %+v", topics, r)
		}
	}
	// The statements name the topics, the instance id and the settings, so
	// equal lists mean the same topics in the same order, the same claim
	// and the same publication.
	if len(refP) < topics*4 || len(refR) < topics*4 {
		t.Fatalf("general log caught too little: %d statements on the primary, %d on the replica", len(refP), len(refR))
	}
	t.Logf("each loop sent %d statements to the primary and %d to the replica", len(ourP), len(ourR))
	for _, c := range []struct {
		server    string
		ref, ours []string
	}{{"primary", refP, ourP}, {"replica", refR, ourR}} {
		if !slices.Equal(c.ref, c.ours) {
			t.Errorf("the loops sent different statements to the %s:\nreference (%d):\n  %s\nbench/seed (%d):\n  %s", c.server,
				len(c.ref), strings.Join(c.ref, "\n  "), len(c.ours), strings.Join(c.ours, "\n  "))
		}
	}
	for _, want := range []string{"update app.TopicFilter set influencerRunning=101 where topicFilterId=1",
		"select influencerRunning from app.TopicFilter where topicFilterId=1",
		"flush tables influencer.Dynamics_1, influencer.Post_1"} {
		if !slices.Contains(ourP, want) {
			t.Errorf("bench/seed sent no %q to the primary", want)
		}
	}
	for _, want := range []string{"show slave status", "call influencer.proc(1,2)"} {
		if !slices.ContainsFunc(ourR, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("bench/seed sent no %q to the replica", want)
		}
	}
}

// TestSeedLoopComputesTwice: the in-repo loop has the original's defect.
// Four instances without the short random sleep (SHORT_SLEEP=0, the
// harness's setting) mark and re-read without a compare-and-set, so some
// topic gets computed by two instances. Bounded: at most five rounds.
func TestSeedLoopComputesTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const topics = 60
	b := testBench(t, ctx, topics)
	for run := 1; run <= 5; run++ {
		_, _, r := seedTrace(t, ctx, b, run, topics, 4)
		t.Logf("round %d: %+v", run, r)
		if r.Missing+r.Unexpected+r.NotDone != 0 {
			t.Fatalf("round %d: topics lost: %+v", run, r)
		}
		if r.Duplicates > 0 {
			return
		}
	}
	t.Fatalf("no topic computed twice in 5 rounds of %d topics x 4 instances: the loop lost its defect", topics)
}
