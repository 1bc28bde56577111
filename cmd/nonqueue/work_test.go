package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

type workBundle struct {
	db      string
	primary *sql.DB
	q       *queue.Queue
	ctx     context.Context
	dir     string
	replica [2]*sql.DB
}

func setupWork(t *testing.T) *workBundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name, Lease: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	p := testdb.Open(t, env.Primary(name))
	if err := testdb.InstallCalc(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	return &workBundle{db: name, primary: p, q: q, ctx: ctx, dir: t.TempDir()}
}

// config writes a worker configuration for replica i (lease 3s, so lease
// expiry tests are quick) and returns its path.
func (b *workBundle) config(t *testing.T, i int, knownHosts string) string {
	t.Helper()
	sb := env.SB
	if knownHosts == "" {
		knownHosts = sb.SSH.KnownHosts
	}
	body := serversTOML(i, b.db) + fmt.Sprintf(`lease = "3s"
[procedure]
name = "%s.calc"
marker = "SUMMARY"
[results]
schema = %q
tables = ["R_{id}", "S_{id}"]
[worker]
log_dir = %q
idle_wait = "50ms"
heartbeat_interval = "500ms"
gtid_wait = "2s"
grace_period = "2s"
reap_interval = "500ms"
backoff_base = "1h"
[lag]
max_lag = "5s"
stopped_backoff = "500ms"
sample_interval = "100ms"
[ssh]
host = %q
port = %d
user = %q
key_file = %q
known_hosts = %q
datadir = %q
`, b.db, b.db,
		filepath.Join(b.dir, "runs"), sb.SSH.Host, sb.SSH.Port, sb.SSH.User, sb.SSH.KeyFile, knownHosts, sb.Primary.Datadir)
	path := filepath.Join(b.dir, fmt.Sprintf("replica%d.toml", i+1))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (b *workBundle) addTopics(t *testing.T, ids ...int64) {
	t.Helper()
	for _, id := range ids {
		for k := 1; k <= 10; k++ {
			if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO src VALUES (?, ?, ?)", id, k, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull, Create: true}); err != nil {
		t.Fatal(err)
	}
}

// proc is a worker process: this test binary running `nonqueue work`.
type proc struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

func startWorker(t *testing.T, cfg string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"work", "--config", cfg}, args...)...)
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	p := &proc{cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("worker output:\n%s", p.out.String())
		}
		p.done <- nil
	})
	return p
}

// wait returns the process's exit error, or fails after d.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(d):
		t.Fatalf("worker did not exit within %v", d)
		return nil
	}
}

func (b *workBundle) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n sql.NullInt64
	if err := b.primary.QueryRowContext(b.ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return int(n.Int64)
}

func (b *workBundle) calls(t *testing.T, replica int, topic int64) int {
	t.Helper()
	var n int
	if b.replica[replica] == nil {
		b.replica[replica] = testdb.Open(t, env.Replica(replica, b.db))
	}
	if err := b.replica[replica].QueryRowContext(b.ctx, "SELECT COUNT(*) FROM calls WHERE topic_id = ?", topic).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSIGKILLMidProcedure: a worker killed with SIGKILL while its
// procedure runs leaves a claim that another replica's worker reaps after
// the lease and finishes exactly once.
func TestSIGKILLMidProcedure(t *testing.T) {
	b := setupWork(t)
	b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, 2)")
	b.addTopics(t, 1)
	a := startWorker(t, b.config(t, 0, ""), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "replica 1's worker inside the procedure for topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running BETWEEN 100 AND 199") == 1 &&
			b.calls(t, 0, 1) == 1
	})
	a.cmd.Process.Kill()
	a.wait(t, 10*time.Second)
	// The other replica's worker may claim it only after the lease.
	b.primary.ExecContext(b.ctx, "DELETE FROM slow")
	startWorker(t, b.config(t, 1, ""), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "topic 1 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") == 1
	})
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'reaped'"); n != 1 {
		t.Errorf("%d reaps recorded, want 1", n)
	}
	if n := b.calls(t, 1, 1); n != 1 {
		t.Errorf("replica 2 computed topic 1 %d times", n)
	}
	if srv := b.count(t, "SELECT srv FROM S_1"); srv != int(env.SB.Replicas[1].ServerID) {
		t.Errorf("published result from server %d, want replica 2", srv)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0"); n != 0 {
		t.Error("topic left required or running")
	}
}

// TestSIGSTOPPastLeasePublishesNothing: a worker paused past its lease,
// whose topic another worker took over and published, publishes nothing
// when it resumes.
func TestSIGSTOPPastLeasePublishesNothing(t *testing.T) {
	b := setupWork(t)
	b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, 1)")
	b.addTopics(t, 1)
	a := startWorker(t, b.config(t, 0, ""), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "replica 1's worker inside the procedure for topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running BETWEEN 100 AND 199") == 1 &&
			b.calls(t, 0, 1) == 1
	})
	a.cmd.Process.Signal(syscall.SIGSTOP)
	bw := startWorker(t, b.config(t, 1, ""), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "topic 1 done by replica 2", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'") == 1
	})
	bw.cmd.Process.Signal(syscall.SIGTERM)
	if err := bw.wait(t, 30*time.Second); err != nil {
		t.Fatalf("worker 2: %v", err)
	}
	a.cmd.Process.Signal(syscall.SIGCONT)
	testdb.WaitFor(t, 30*time.Second, "the resumed worker to record its lost claim", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'lost'") == 1
	})
	if srv := b.count(t, "SELECT srv FROM S_1"); srv != int(env.SB.Replicas[1].ServerID) {
		t.Errorf("published result is from server %d: the paused worker overwrote replica 2's", srv)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done'"); n != 1 {
		t.Errorf("%d done runs", n)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.wait(t, 30*time.Second); err != nil {
		t.Fatalf("worker 1 after resume: %v", err)
	}
}

// TestSIGTERMLeavesNothingRunning: SIGTERM while topics run: the process
// exits 0 within the grace period and no topic stays running.
func TestSIGTERMLeavesNothingRunning(t *testing.T) {
	b := setupWork(t)
	for id := 1; id <= 6; id++ {
		b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (?, 5)", id)
	}
	b.addTopics(t, 1, 2, 3, 4, 5, 6)
	w := startWorker(t, b.config(t, 0, ""), "--instances", "2")
	testdb.WaitFor(t, 30*time.Second, "two topics running", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") == 2
	})
	start := time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, w.out)
	}
	t.Logf("stopped in %v", time.Since(start))
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0"); n != 0 {
		t.Fatalf("%d topics still running after SIGTERM", n)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM instance WHERE state <> 'exited'"); n != 0 {
		t.Errorf("%d instances not marked exited", n)
	}
	// [worker] max_procs defaults to 1 unless GOMAXPROCS is set.
	want := "max_procs=1"
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		want = "max_procs=" + v
	}
	if !strings.Contains(w.out.String(), want) {
		t.Errorf("worker log does not say %s:\n%s", want, w.out)
	}
}

// TestWrongHostKeyRefused: a known_hosts with another key for the
// primary's host: the worker refuses to start and says why; check says so.
func TestWrongHostKeyRefused(t *testing.T) {
	b := setupWork(t)
	kh := filepath.Join(b.dir, "known_hosts")
	// A valid line for the right host with someone else's key.
	line := fmt.Sprintf("[127.0.0.1]:%d ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n", env.SB.SSH.Port)
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := b.config(t, 0, kh)
	w := startWorker(t, cfg, "--instances", "1")
	err := w.wait(t, 30*time.Second)
	if err == nil || !strings.Contains(strings.ToLower(w.out.String()), "host key") {
		t.Fatalf("worker with a wrong host key: %v\n%s", err, w.out)
	}
	out, err := run(t, "check", "--config", cfg)
	if err == nil || !strings.Contains(out, "FAIL") || !strings.Contains(strings.ToLower(out), "host key") {
		t.Fatalf("check with a wrong host key: %v\n%s", err, out)
	}
}

// TestCheck: everything a worker needs, on a good configuration.
func TestCheck(t *testing.T) {
	b := setupWork(t)
	out, err := run(t, "check", "--config", b.config(t, 0, ""))
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("check: %v\n%s", err, out)
	}
	// The default verification, with cksum runnable on both hosts here.
	if !strings.Contains(out, "verify = bytes: files up to 64 KiB read back over SFTP, bigger ones compared by cksum on both hosts") {
		t.Errorf("check does not say how copies are verified:\n%s", out)
	}
	// The sandbox's replicas keep their own binary log writes out of the
	// primary's GTID domain.
	if !strings.Contains(out, "ok    replica's GTID domain: the replica's own binary log writes go to GTID domain 1001, the primary's stream is domain 0") {
		t.Errorf("check does not report the replica's GTID domain:\n%s", out)
	}
	t.Log(out)

	// A replica in the primary's domain, under gtid_strict_mode: a warning
	// with the remedy, not a failure.
	r := testdb.Open(t, env.Replica(0, ""))
	if _, err := r.ExecContext(b.ctx, "SET GLOBAL gtid_domain_id = 0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := r.ExecContext(context.Background(), "SET GLOBAL gtid_domain_id = 1001"); err != nil {
			t.Errorf("restore the replica's GTID domain: %v", err)
		}
	})
	out, err = run(t, "check", "--config", b.config(t, 0, ""))
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("check with a shared GTID domain: %v\n%s", err, out)
	}
	for _, want := range []string{"WARN  replica's GTID domain: replica shares the primary's GTID domain", "gtid_strict_mode its replication would stop (error 1950)", "SET GLOBAL gtid_domain_id"} {
		if !strings.Contains(out, want) {
			t.Errorf("check with a shared GTID domain lacks %q:\n%s", want, out)
		}
	}
}

// TestDemo runs `nonqueue demo` small, as a user would: the binary (this
// test executable acting as nonqueue) started in an empty directory
// outside the repository, so the example SQL must come from the binary.
// The example loads (Blackhole and trigger, FederatedX, the influencer
// procedure), worker processes on two replicas do every topic, and the
// summary reports them.
func TestDemo(t *testing.T) {
	requireSandbox(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "demo", "--dir", t.TempDir(), "--topics", "40", "--instances", "2", "--timeout", "2m")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1") // the demo and its worker processes are this binary
	cmd.WaitDelay = 10 * time.Second
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("demo from %s: %v\n%s", cmd.Dir, err, out)
	}
	for _, want := range []string{"40 topics, ", "done   40  running  0  pending    0", "40 topics in", "0 parked as failed", "sandbox stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "did "); n != 2 {
		t.Errorf("expected both replicas to do topics:\n%s", out)
	}
	// The follower re-requested the topics of the posts added during the
	// run, and they ran again.
	if m := regexp.MustCompile(`follower: (\d+) new blog posts on (\d+) topics while the workers ran; it read (\d+) row changes and made (\d+) requests; (\d+) runs`).FindStringSubmatch(out); m == nil {
		t.Errorf("demo output lacks the follower's line:\n%s", out)
	} else if m[1] != m[3] || m[4] == "0" || m[5] == "0" {
		t.Errorf("follower: posts %s on %s topics, read %s, requests %s, runs %s: want every post read, requests for those topics, runs", m[1], m[2], m[3], m[4], m[5])
	}
}

// TestDemoTiers runs the demo on the seeds' replication shapes: a replica
// of a replica with parallel appliers. The Blackhole trick's rows reach the
// second tier through the middle one, and workers on both tiers do topics.
func TestDemoTiers(t *testing.T) {
	requireSandbox(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "demo", "--dir", t.TempDir(), "--replicas", "1", "--tiers", "2", "--parallel", "2",
		"--topics", "30", "--instances", "2", "--timeout", "2m")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	cmd.WaitDelay = 10 * time.Second
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("demo --tiers 2: %v\n%s", err, out)
	}
	for _, want := range []string{"replica2 ", "← replica1 (2 parallel appliers)", "done   30  running  0  pending    0", "0 parked as failed", "sandbox stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "did "); n != 2 {
		t.Errorf("expected both tiers to do topics:\n%s", out)
	}
}

// serversTOML is the [primary], [replica] (replica i) and the start of
// the [topics] section of a test configuration on the package's sandbox,
// with topics and nonqueue's tables in database db.
func serversTOML(i int, db string) string {
	sb := env.SB
	return fmt.Sprintf(`[primary]
host = "127.0.0.1"
port = %d
user = %q
password = %q
[replica]
host = "127.0.0.1"
port = %d
user = %q
password = %q
[topics]
schema = %q
meta_schema = %q
`, sb.Primary.Port, sb.User, sb.Password, sb.Replicas[i].Port, sb.User, sb.Password, db, db)
}
