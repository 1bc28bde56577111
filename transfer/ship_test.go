package transfer_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/transfer"
)

// Ship publishes two MyISAM tables whose checksums on the primary equal the
// replica's, calls Commit once under the lock, leaves nothing staged,
// replicates nothing, gives the pooled sessions back with binary logging as
// they were, and publishes a new version over the live tables.
func TestShipPublishes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 7
	names := b.cfg.TableNames(topic)
	b.makeResult(t, topic, 1)
	// One connection per pool: the sessions Ship pinned are the ones we
	// inspect afterwards.
	b.primary.SetMaxOpenConns(1)
	b.replica.SetMaxOpenConns(1)

	var commits atomic.Int32
	p := b.params(topic, 1)
	p.Commit = func(ctx context.Context) error {
		commits.Add(1)
		// Under the lock: a reaper's GET_LOCK(name, 0) fails.
		other := b.openPrimary(t)
		if free, err := lockFree(ctx, other, p.LockName); err != nil || free {
			t.Errorf("Commit: lock free = %v (%v), want held by the publisher", free, err)
		}
		// After the swap: the live table is the new one.
		if got, want := checksum(t, ctx, other, names[0]), checksum(t, ctx, b.local, names[0]); got != want {
			t.Errorf("Commit: live checksum %s, want %s", got, want)
		}
		return nil
	}
	ship, err := b.sh.Ship(b.ctx, p)
	if err != nil {
		t.Fatalf("Ship: %v", err)
	}
	if commits.Load() != 1 {
		t.Fatalf("Commit called %d times, want 1", commits.Load())
	}
	if ship.Bytes <= 0 || len(ship.Tables) != 2 || ship.Tables[0] != names[0] || ship.Tables[1] != names[1] {
		t.Fatalf("Shipment = %+v", ship)
	}
	t.Logf("shipped %d bytes: transfer %v, publish %v", ship.Bytes, ship.TransferTime, ship.PublishTime)
	v1 := map[string]string{}
	for _, n := range names {
		rep, prim := checksum(t, b.ctx, b.local, n), checksum(t, b.ctx, b.primary, n)
		if rep == "" || rep != prim {
			t.Fatalf("%s: primary checksum %q, replica %q", n, prim, rep)
		}
		v1[n] = prim
	}
	var sum int64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT SUM(x) FROM "+names[0]).Scan(&sum); err != nil || sum != 500500 {
		t.Fatalf("SUM(x) on the primary = %d (%v)", sum, err)
	}
	b.assertNoStaging(t)
	for _, db := range []*sql.DB{b.primary, b.replica} {
		var logBin int
		if err := db.QueryRowContext(b.ctx, "SELECT @@session.sql_log_bin").Scan(&logBin); err != nil || logBin != 1 {
			t.Fatalf("pooled session sql_log_bin = %d (%v), want 1 restored", logBin, err)
		}
	}
	// Nothing of the publish replicated: a replicated RENAME would have
	// stopped the replica (it has no staging table) and this would time out.
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatalf("replication after publish: %v", err)
	}

	// A new version over the live tables.
	b.makeResult(t, topic, 2)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 2)); err != nil {
		t.Fatalf("Ship v2: %v", err)
	}
	for _, n := range names {
		rep, prim := checksum(t, b.ctx, b.local, n), checksum(t, b.ctx, b.primary, n)
		if rep != prim || prim == v1[n] {
			t.Fatalf("%s v2: primary %s, replica %s, v1 %s", n, prim, rep, v1[n])
		}
	}
	b.assertNoStaging(t)

	// The worker drops its local copies; the primary keeps the live ones.
	if err := b.sh.DropReplicaTables(b.ctx, b.replica, topic); err != nil {
		t.Fatalf("DropReplicaTables: %v", err)
	}
	if got := checksum(t, b.ctx, b.local, names[0]); got != "" {
		t.Fatalf("replica still has %s", names[0])
	}
	if got := checksum(t, b.ctx, b.primary, names[0]); got == "" {
		t.Fatalf("primary lost %s", names[0])
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatalf("replication after drop: %v", err)
	}
}

func (b *bundle) openPrimary(t *testing.T) *sql.DB {
	t.Helper()
	return testdb.Open(t, env.Primary(b.schema))
}

// A Fence error under the lock publishes nothing, wraps ErrFenced and the
// cause, and removes the staging tables.
func TestFenceStopsPublish(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 3
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("Ship v1: %v", err)
	}
	live := checksum(t, b.ctx, b.primary, name)

	b.makeResult(t, topic, 2)
	errLost := errors.New("claim lost")
	p := b.params(topic, 2)
	p.Fence = func(context.Context) error { return errLost }
	p.Commit = func(context.Context) error { t.Error("Commit called after a failed fence"); return nil }
	_, err := b.sh.Ship(b.ctx, p)
	if !errors.Is(err, transfer.ErrFenced) || !errors.Is(err, errLost) {
		t.Fatalf("Ship = %v, want ErrFenced wrapping the fence's error", err)
	}
	t.Logf("fenced: %v", err)
	if got := checksum(t, b.ctx, b.primary, name); got != live {
		t.Fatalf("live table changed by a fenced ship: %s, was %s", got, live)
	}
	b.assertNoStaging(t)
	if free, err := lockFree(b.ctx, b.primary, p.LockName); err != nil || !free {
		t.Fatalf("lock still held after a fenced ship (%v)", err)
	}
}

// TestFenceQueryWithLock: with MultiStatementPools, the fence is
// ShipParams.FenceQuery, sent in the GET_LOCK's request: a row publishes,
// no row fences (ErrFenced, nothing published, the lock released, no
// staging left), and Fence itself is not called at the swap.
func TestFenceQueryWithLock(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *transfer.Config) { c.MultiStatementPools = true })
	mc := env.Primary(b.schema)
	mc.MultiStatements, mc.InterpolateParams = true, true
	pub := testdb.Open(t, mc)
	for _, q := range []string{"CREATE TABLE claim (id INT PRIMARY KEY)", "INSERT INTO claim VALUES (1)"} {
		if _, err := b.primary.ExecContext(b.ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const topic = 4
	name := b.cfg.TableNames(topic)[0]
	params := func(token uint64) *transfer.ShipParams {
		p := b.params(topic, token)
		p.Primary = pub
		p.Fence = func(context.Context) error { t.Error("Fence called although FenceQuery is set"); return nil }
		p.FenceQuery = "SELECT 1 FROM " + b.schema + ".claim WHERE id = 1"
		return p
	}
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, params(1)); err != nil {
		t.Fatalf("Ship with the claim held: %v", err)
	}
	live := checksum(t, b.ctx, b.primary, name)
	if _, err := b.primary.ExecContext(b.ctx, "DELETE FROM claim"); err != nil {
		t.Fatal(err)
	}
	b.makeResult(t, topic, 2)
	p := params(2)
	p.Commit = func(context.Context) error { t.Error("Commit called after a failed fence"); return nil }
	_, err := b.sh.Ship(b.ctx, p)
	if !errors.Is(err, transfer.ErrFenced) {
		t.Fatalf("Ship without the claim = %v, want ErrFenced", err)
	}
	if got := checksum(t, b.ctx, b.primary, name); got != live {
		t.Fatalf("live table changed by a fenced ship: %s, was %s", got, live)
	}
	b.assertNoStaging(t)
	if free, err := lockFree(b.ctx, b.primary, p.LockName); err != nil || !free {
		t.Fatalf("lock still held after a fenced ship (%v)", err)
	}
}

// The replica's host key is verified strictly: another key, an empty file
// and a missing file all fail with ErrHostKey, before anything is sent.
func TestHostKey(t *testing.T) {
	t.Parallel()
	if env.SB == nil {
		env.New(t) // skips with the reason
	}
	addr := net.JoinHostPort(env.SB.SSH.Host, strconv.Itoa(env.SB.SSH.Port))
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name       string
		knownHosts string
		wantErr    error
	}{
		// The sandbox's own file: connects.
		{"recorded key", env.SB.SSH.KnownHosts, nil},
		// Someone else's key for this host: a possible interception.
		{"other key", write("other", knownhosts.Line([]string{knownhosts.Normalize(addr)}, other)+"\n"), transfer.ErrHostKey},
		// No entry for the host: never trusted on first use.
		{"empty file", write("empty", ""), transfer.ErrHostKey},
		// Unreadable file: cannot verify, so no connection.
		{"missing file", filepath.Join(dir, "absent"), transfer.ErrHostKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := transfer.Config{SSH: sshConfig(), PrimaryDatadir: env.SB.Primary.Datadir, Schema: "s", Tables: []string{"T_{id}"}}
			cfg.SSH.KnownHosts = tc.knownHosts
			sh, err := transfer.NewShipper(cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer sh.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err = sh.Connect(ctx)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Connect = %v, want %v", err, tc.wantErr)
			}
			t.Logf("Connect: %v", err)
		})
	}
}

// Readers of a live table during 100 publishes of versions with the same
// sum see no error and no other sum: the swap is atomic.
func TestReadersSeeOldOrNew(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 11
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 0)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("first Ship: %v", err)
	}

	const readers, publishes, budget = 4, 100, 90 * time.Second
	ctx, cancel := context.WithTimeout(b.ctx, budget)
	defer cancel()
	stop := make(chan struct{})
	var reads, errs, wrong atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := b.primary.Conn(ctx)
			if err != nil {
				errs.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			defer conn.Close()
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				var sum int64
				if err := conn.QueryRowContext(ctx, "SELECT SUM(x) FROM "+name).Scan(&sum); err != nil {
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				reads.Add(1)
				if sum != 500500 {
					wrong.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	done := 0
	for i := range publishes {
		if ctx.Err() != nil {
			break
		}
		b.bump(t, topic)
		if _, err := b.sh.Ship(ctx, b.params(topic, uint64(i+2))); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("publish %d: %v", i, err)
		}
		done++
	}
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	t.Logf("%d publishes in %v (%.1f ms each), %d reads, %d errors, %d wrong sums", done, elapsed,
		float64(elapsed.Microseconds())/1000/float64(max(done, 1)), reads.Load(), errs.Load(), wrong.Load())
	if done != publishes {
		t.Fatalf("only %d of %d publishes within %v", done, publishes, budget)
	}
	if errs.Load() != 0 || wrong.Load() != 0 {
		t.Fatalf("readers saw %d errors (first: %v) and %d wrong sums", errs.Load(), firstErr.Load(), wrong.Load())
	}
	if reads.Load() == 0 {
		t.Fatal("readers never read")
	}
	if got, want := checksum(t, b.ctx, b.primary, name), checksum(t, b.ctx, b.local, name); got != want {
		t.Fatalf("last version not live: %s, want %s", got, want)
	}
	b.assertNoStaging(t)
}

// An InnoDB or missing result table is refused with a clear error before
// anything is shipped.
func TestRejectsBadTables(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	cases := []struct {
		name    string
		topic   int64
		prepare []string
		want    error
	}{
		// The procedure wrote InnoDB: its files are not the whole table.
		{"innodb", 21, []string{
			"CREATE TABLE Dynamics_21 (id INT PRIMARY KEY) ENGINE=InnoDB",
			"CREATE TABLE Post_21 (id INT PRIMARY KEY) ENGINE=MyISAM",
		}, transfer.ErrNotMyISAM},
		// The procedure wrote only one of the two tables.
		{"missing", 22, []string{
			"CREATE TABLE Dynamics_22 (id INT PRIMARY KEY) ENGINE=MyISAM",
		}, transfer.ErrTableMissing},
		// A view is not a table either.
		{"view", 23, []string{
			"CREATE TABLE base_23 (id INT PRIMARY KEY) ENGINE=MyISAM",
			"CREATE VIEW Dynamics_23 AS SELECT id FROM base_23",
			"CREATE TABLE Post_23 (id INT PRIMARY KEY) ENGINE=MyISAM",
		}, transfer.ErrNotMyISAM},
	}
	for _, tc := range cases {
		for _, q := range tc.prepare {
			if _, err := b.local.ExecContext(b.ctx, q); err != nil {
				t.Fatalf("%s: %s: %v", tc.name, q, err)
			}
		}
		_, err := b.sh.Ship(b.ctx, b.params(tc.topic, 1))
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: Ship = %v, want %v", tc.name, err, tc.want)
		}
		t.Logf("%s: %v", tc.name, err)
		for _, n := range b.cfg.TableNames(tc.topic) {
			if got := checksum(t, b.ctx, b.primary, n); got != "" {
				t.Fatalf("%s: %s exists on the primary", tc.name, n)
			}
		}
	}
	b.assertNoStaging(t)
}

// While another session holds the topic's lock, Ship waits LockTimeout,
// fails with ErrLockTimeout and publishes nothing; while Ship holds it, a
// reaper's GET_LOCK(name, 0) fails.
func TestPublishLock(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 5
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)

	// During the publish, the reaper is kept out.
	p := b.params(topic, 1)
	other := b.openPrimary(t)
	p.Fence = func(ctx context.Context) error {
		if free, err := lockFree(ctx, other, p.LockName); err != nil || free {
			t.Errorf("Fence: reaper could take the lock (%v)", err)
		}
		return nil
	}
	if _, err := b.sh.Ship(b.ctx, p); err != nil {
		t.Fatalf("Ship: %v", err)
	}
	live := checksum(t, b.ctx, b.primary, name)

	// Someone else holds it: Ship gives up after LockTimeout.
	holder, err := other.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	var got int
	if err := holder.QueryRowContext(b.ctx, "SELECT GET_LOCK(?, 0)", p.LockName).Scan(&got); err != nil || got != 1 {
		t.Fatalf("hold lock: %d %v", got, err)
	}
	b.makeResult(t, topic, 2)
	p = b.params(topic, 2)
	p.LockTimeout = time.Second
	p.Fence = func(context.Context) error { t.Error("Fence called without the lock"); return nil }
	start := time.Now()
	_, err = b.sh.Ship(b.ctx, p)
	waited := time.Since(start)
	if !errors.Is(err, transfer.ErrLockTimeout) {
		t.Fatalf("Ship = %v, want ErrLockTimeout", err)
	}
	if waited < time.Second {
		t.Fatalf("Ship gave up after %v, before the 1s lock timeout", waited)
	}
	if got := checksum(t, b.ctx, b.primary, name); got != live {
		t.Fatalf("live table changed without the lock")
	}
	b.assertNoStaging(t)
	if _, err := holder.ExecContext(b.ctx, "DO RELEASE_LOCK(?)", p.LockName); err != nil {
		t.Fatal(err)
	}
}

// A connection that broke between shipments is replaced: the next Ship
// works.
func TestRedialsAfterBrokenConnection(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 9
	b.makeResult(t, topic, 1)
	if err := b.sh.Connect(b.ctx); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	b.sh.BreakConnection()
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("Ship after a broken connection: %v", err)
	}
	name := b.cfg.TableNames(topic)[0]
	if got, want := checksum(t, b.ctx, b.primary, name), checksum(t, b.ctx, b.local, name); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
}

// A connection that breaks in the middle of a transfer is replaced and the
// transfer retried once; a second break fails the Ship cleanly.
func TestRetriesTransferOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 12
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)
	var attempts []int
	b.sh.SetStreamHook(func(attempt int) {
		attempts = append(attempts, attempt)
		if attempt == 0 {
			b.sh.BreakConnection()
		}
	})
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("Ship with one break: %v", err)
	}
	if len(attempts) != 2 {
		t.Fatalf("attempts %v, want [0 1]", attempts)
	}
	if got, want := checksum(t, b.ctx, b.primary, name), checksum(t, b.ctx, b.local, name); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
	live := checksum(t, b.ctx, b.primary, name)

	// Breaks on both attempts: an error, nothing published, nothing left.
	b.bump(t, topic)
	attempts = nil
	b.sh.SetStreamHook(func(attempt int) {
		attempts = append(attempts, attempt)
		b.sh.BreakConnection()
	})
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 2)); err == nil {
		t.Fatal("Ship with two breaks succeeded")
	} else {
		t.Logf("two breaks: %v", err)
	}
	if len(attempts) != 2 {
		t.Fatalf("attempts %v, want [0 1]", attempts)
	}
	if got := checksum(t, b.ctx, b.primary, name); got != live {
		t.Fatal("live table changed by a failed Ship")
	}
	b.sh.SetStreamHook(nil)
	b.assertNoStaging(t)
	b.assertWritable(t, topic)
}

// assertWritable fails if the topic's result table on the replica is still
// locked (a FLUSH … FOR EXPORT left behind).
func (b *bundle) assertWritable(t *testing.T, topic int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	conn, err := b.local.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET SESSION lock_wait_timeout = 2"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "UPDATE "+b.cfg.TableNames(topic)[0]+" SET x = x WHERE id = 1"); err != nil {
		t.Fatalf("result table on the replica not writable after Ship: %v", err)
	}
}

// A failing Commit leaves the new tables live (the swap happened) and says
// so: Ship returns its Shipment and an error wrapping ErrCommit.
func TestCommitFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 13
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)
	errDB := errors.New("primary went away")
	p := b.params(topic, 1)
	p.Commit = func(context.Context) error { return errDB }
	ship, err := b.sh.Ship(b.ctx, p)
	if !errors.Is(err, transfer.ErrCommit) || !errors.Is(err, errDB) || ship == nil {
		t.Fatalf("Ship = %+v, %v; want a Shipment and ErrCommit wrapping the cause", ship, err)
	}
	if got, want := checksum(t, b.ctx, b.primary, name), checksum(t, b.ctx, b.local, name); got != want {
		t.Fatalf("published table checksum %s, want %s", got, want)
	}
	b.assertNoStaging(t)
	if free, err := lockFree(b.ctx, b.primary, p.LockName); err != nil || !free {
		t.Fatalf("lock still held after a failed Commit (%v)", err)
	}
}

// Backups keep the newest BackupKeep copies per topic, with every file.
func TestBackup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, func(c *transfer.Config) { c.BackupDir, c.BackupKeep = dir, 2 })
	const topic = 4
	b.makeResult(t, topic, 1)
	var last string
	for i := range 3 {
		b.bump(t, topic)
		ship, err := b.sh.Ship(b.ctx, b.params(topic, uint64(i+1)))
		if err != nil {
			t.Fatalf("Ship %d: %v", i, err)
		}
		last = ship.Backup
	}
	entries, err := os.ReadDir(filepath.Join(dir, "4"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || filepath.Join(dir, "4", entries[1].Name()) != last {
		t.Fatalf("backups %v, last %s; want 2, newest last", entries, last)
	}
	files, err := os.ReadDir(last)
	if err != nil || len(files) != 6 {
		t.Fatalf("backup has %d files (%v), want 6", len(files), err)
	}
}

// CleanupPrimary removes staging tables and stray files older than the
// limit, and nothing else.
func TestCleanupPrimary(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	mc := env.Primary(b.schema)
	mc.Params = map[string]string{"sql_log_bin": "0"}
	primLocal := testdb.Open(t, mc)
	for _, q := range []string{
		"CREATE TABLE nqtmp_99_Dynamics_1 (id INT) ENGINE=MyISAM", // a crashed run's staging table
		"CREATE TABLE nqold_98_Post_1 (id INT) ENGINE=MyISAM",     // crashed between swap and drop
		"CREATE TABLE keep_me (id INT) ENGINE=MyISAM",             // not ours
	} {
		if _, err := primLocal.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	dir := filepath.Join(env.SB.Primary.Datadir, b.schema)
	if err := os.WriteFile(filepath.Join(dir, "nqtmp_97_Post_2.MYD"), []byte("half"), 0o660); err != nil { // an interrupted copy
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "db.opt" {
			os.Chtimes(filepath.Join(dir, e.Name()), old, old)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "nqtmp_96_Post_3.MYD"), []byte("fresh"), 0o660); err != nil { // a copy in progress
		t.Fatal(err)
	}
	if err := b.sh.CleanupPrimary(b.ctx, b.primary, time.Hour); err != nil {
		t.Fatalf("CleanupPrimary: %v", err)
	}
	left := map[string]bool{}
	entries, _ = os.ReadDir(dir)
	for _, e := range entries {
		left[e.Name()] = true
	}
	for _, gone := range []string{"nqtmp_99_Dynamics_1.frm", "nqtmp_99_Dynamics_1.MYD", "nqold_98_Post_1.MYI", "nqtmp_97_Post_2.MYD"} {
		if left[gone] {
			t.Errorf("%s was not removed", gone)
		}
	}
	for _, kept := range []string{"keep_me.frm", "nqtmp_96_Post_3.MYD"} {
		if !left[kept] {
			t.Errorf("%s was removed", kept)
		}
	}
	os.Remove(filepath.Join(dir, "nqtmp_96_Post_3.MYD"))
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatalf("replication after cleanup: %v", err)
	}
}

// CheckDatadir passes on the sandbox; Ship refuses parameters without a
// fence.
func TestPreflightAndParams(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if err := b.sh.CheckDatadir(b.ctx); err != nil {
		t.Fatalf("CheckDatadir: %v", err)
	}
	p := b.params(1, 1)
	p.Fence = nil
	if _, err := b.sh.Ship(b.ctx, p); !errors.Is(err, transfer.ErrParams) {
		t.Fatalf("Ship without Fence = %v, want ErrParams", err)
	}
	b.sh.Close()
	if _, err := b.sh.Ship(b.ctx, b.params(1, 1)); !errors.Is(err, transfer.ErrClosed) {
		t.Fatalf("Ship after Close = %v, want ErrClosed", err)
	}
}

// A big result streams: the Go heap stays small whatever the table size.
// NONQUEUE_TRANSFER_BIG_MB sets the table size (default 64).
func TestShipLargeTableSmallMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("ships a large table")
	}
	t.Parallel()
	mb := 64
	if v := os.Getenv("NONQUEUE_TRANSFER_BIG_MB"); v != "" {
		var err error
		if mb, err = strconv.Atoi(v); err != nil || mb < 1 {
			t.Fatalf("NONQUEUE_TRANSFER_BIG_MB=%q", v)
		}
	}
	b := setup(t, func(c *transfer.Config) { c.Tables = []string{"Big_{id}"} })
	const topic = 1
	rows := mb * 1310 // rows of about 800 bytes in the .MYD
	for _, q := range []string{
		"CREATE TABLE Big_1 (id INT PRIMARY KEY, pad CHAR(255) NOT NULL, pad2 VARCHAR(1000) NOT NULL) ENGINE=MyISAM",
		"INSERT INTO Big_1 SELECT seq, MD5(seq), REPEAT(SHA1(seq), 19) FROM seq_1_to_" + strconv.Itoa(rows),
	} {
		if _, err := b.local.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	ship, err := b.sh.Ship(b.ctx, b.params(topic, 1))
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("Ship: %v", err)
	}
	growth := int64(peak.Load()) - int64(before.HeapInuse)
	t.Logf("shipped %d MB: transfer %v (%.0f MB/s incl. export and replica checksum), publish %v; heap in use grew by at most %.1f MB",
		ship.Bytes>>20, ship.TransferTime, float64(ship.Bytes)/1e6/ship.TransferTime.Seconds(), ship.PublishTime, float64(growth)/(1<<20))
	if growth > 48<<20 {
		t.Fatalf("heap grew by %d MB while shipping %d MB: the files are being buffered", growth>>20, ship.Bytes>>20)
	}
	if got, want := checksum(t, b.ctx, b.primary, "Big_1"), checksum(t, b.ctx, b.local, "Big_1"); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
}

// TestShipVerifyBytes: with byte verification small files are read back
// and big ones compared by cksum on both hosts, or read back too where
// cksum cannot run; either way the tables go live identical (CHECKSUM
// TABLE on both sides) and no staging is left; the dropping of the
// replica's tables during the publish happens too.
func TestShipVerifyBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		rows    int
		noCksum bool
	}{{"small files read back", 1000, false}, {"big files by cksum", 20000, false}, {"big files read back without cksum", 20000, true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *transfer.Config) { c.Verify = transfer.VerifyCksum }) // the former name
			if b.cfg.Verify != transfer.VerifyBytes {
				t.Fatalf("verify %q, want %q", b.cfg.Verify, transfer.VerifyBytes)
			}
			const topic = 9
			names := b.cfg.TableNames(topic)
			b.makeResultRows(t, topic, 1, tc.rows)
			want := map[string]string{}
			for _, n := range names {
				want[n] = checksum(t, b.ctx, b.local, n)
			}
			how, err := b.sh.CheckVerify(b.ctx)
			if err != nil || !strings.Contains(how, "compared by cksum on both hosts") {
				t.Fatalf("CheckVerify: %q, %v; want cksum usable on this sandbox", how, err)
			}
			if tc.noCksum {
				b.sh.SetCksumUsable(false)
			}
			var mu sync.Mutex
			var big int
			b.sh.SetWrittenHook(func(remote string) {
				if st, err := os.Stat(remote); err == nil && st.Size() > 64<<10 {
					mu.Lock()
					big++
					mu.Unlock()
				}
			})
			p := b.params(topic, 3)
			p.DropReplica = true
			if _, err := b.sh.Ship(b.ctx, p); err != nil {
				t.Fatalf("Ship: %v", err)
			}
			if (tc.rows > 1000) != (big > 0) {
				t.Fatalf("%d files over 64 KiB shipped with %d rows: the case does not test what it says", big, tc.rows)
			}
			for _, n := range names {
				if got := checksum(t, b.ctx, b.openPrimary(t), n); got != want[n] {
					t.Errorf("%s: primary checksum %s, replica had %s", n, got, want[n])
				}
			}
			var left int
			if err := b.local.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", b.schema).Scan(&left); err != nil || left != 0 {
				t.Errorf("replica kept %d result tables (%v)", left, err)
			}
			b.assertNoStaging(t)
		})
	}
}

// TestShipDetectsCorruption: a byte changed in a shipped data file after
// it was written and before it was verified (a broken copy) is caught by
// every verification — CHECKSUM TABLE, a small file's read-back and a big
// file's cksum; nothing is published (the live tables keep the previous
// version) and no staging is left.
func TestShipDetectsCorruption(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rows    int
		noCksum bool // VerifyBytes only: big files read back
	}{{1000, false}, {20000, false}, {20000, true}} {
		name := fmt.Sprintf("%d rows", tc.rows)
		if tc.noCksum {
			name += " no cksum"
		}
		rows := tc.rows
		var modes []string // every mode
		if tc.noCksum {
			modes = []string{transfer.VerifyBytes} // the only one using cksum
		}
		eachVerify(t, name, func(t *testing.T, b *bundle) {
			if tc.noCksum {
				b.sh.SetCksumUsable(false)
			}
			const topic = 12
			names := b.cfg.TableNames(topic)
			b.makeResultRows(t, topic, 1, rows)
			if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
				t.Fatalf("first Ship: %v", err)
			}
			live := checksum(t, b.ctx, b.primary, names[1])
			b.makeResultRows(t, topic, 2, rows)
			var corrupted atomic.Bool
			target := filepath.Join(env.SB.Primary.Datadir, b.schema, "nqtmp_2_"+names[1]+".MYD")
			b.sh.SetWrittenHook(func(remote string) {
				if remote != target {
					return
				}
				// Flip one byte in the middle of the staged Post data file.
				data, err := os.ReadFile(remote)
				if err != nil || len(data) < 100 {
					t.Errorf("read staged file %s: %d bytes, %v", remote, len(data), err)
					return
				}
				data[len(data)/2] ^= 0x5a
				if err := os.WriteFile(remote, data, 0o660); err != nil {
					t.Errorf("corrupt %s: %v", remote, err)
					return
				}
				corrupted.Store(true)
			})
			_, err := b.sh.Ship(b.ctx, b.params(topic, 2))
			if !corrupted.Load() {
				t.Fatal("the staged file was not corrupted")
			}
			if !errors.Is(err, transfer.ErrChecksumMismatch) {
				t.Fatalf("Ship of a corrupted copy: %v, want ErrChecksumMismatch", err)
			}
			// Each mechanism catches it in its own words.
			want := "replica"
			switch {
			case b.cfg.Verify == transfer.VerifyBytes && (rows <= 1000 || tc.noCksum):
				want = "read back"
			case b.cfg.Verify == transfer.VerifyBytes:
				want = "the primary's host has"
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("Ship of a corrupted copy: %v, want it caught by the check that says %q", err, want)
			}
			if got := checksum(t, b.ctx, b.primary, names[1]); got != live {
				t.Errorf("live %s changed to %s after a failed verification (was %s)", names[1], got, live)
			}
			b.assertNoStaging(t)
		}, modes...)
	}
}

// TestShipEmptyTables: a procedure that found nothing publishes empty
// tables (a 0-byte data file), with both verifications.
func TestShipEmptyTables(t *testing.T) {
	t.Parallel()
	eachVerify(t, "", func(t *testing.T, b *bundle) {
		const topic = 13
		names := b.cfg.TableNames(topic)
		for _, n := range names {
			if _, err := b.local.ExecContext(b.ctx, "CREATE TABLE "+n+" (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=MyISAM"); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
			t.Fatalf("Ship: %v", err)
		}
		for _, n := range names {
			var rows int
			if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM "+n).Scan(&rows); err != nil || rows != 0 {
				t.Errorf("%s on the primary: %d rows (%v), want an empty table", n, rows, err)
			}
		}
		b.assertNoStaging(t)
	})
}

// TestShipWaitsForReplicaDrop: the drop of the result tables on the replica
// is over before Commit (the finish that can make the topic claimable
// again), so a re-requested run of the topic on this replica never has its
// fresh tables dropped under it. A session holding a read lock on one
// result table delays the drop; Commit must come after the lock's release.
func TestShipWaitsForReplicaDrop(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 14
	names := b.cfg.TableNames(topic)
	b.makeResult(t, topic, 1)
	conn, err := b.local.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var released, committed atomic.Int64
	b.sh.SetShippedHook(func() {
		lctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(lctx, "LOCK TABLES "+names[0]+" READ"); err != nil {
			t.Errorf("lock %s on the replica: %v", names[0], err)
			return
		}
		go func() {
			time.Sleep(500 * time.Millisecond)
			released.Store(time.Now().UnixNano())
			if _, err := conn.ExecContext(b.ctx, "UNLOCK TABLES"); err != nil {
				t.Errorf("unlock: %v", err)
			}
		}()
	})
	p := b.params(topic, 1)
	p.DropReplica = true
	p.Commit = func(context.Context) error {
		committed.Store(time.Now().UnixNano())
		return nil
	}
	if _, err := b.sh.Ship(b.ctx, p); err != nil {
		t.Fatalf("Ship: %v", err)
	}
	if released.Load() == 0 || committed.Load() <= released.Load() {
		t.Fatalf("Commit at %d, the replica's drop was blocked until %d: the finish came first", committed.Load(), released.Load())
	}
	var left int
	if err := b.local.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?", b.schema).Scan(&left); err != nil || left != 0 {
		t.Errorf("replica kept %d result tables (%v)", left, err)
	}
}

// eachVerify runs f in parallel subtests, one per verification mode (or
// per one of modes), each with its own bundle; name, if set, prefixes the
// subtests' names.
func eachVerify(t *testing.T, name string, f func(t *testing.T, b *bundle), modes ...string) {
	if len(modes) == 0 {
		modes = []string{transfer.VerifyChecksum, transfer.VerifyBytes}
	}
	for _, verify := range modes {
		sub := verify
		if name != "" {
			sub = name + " " + verify
		}
		t.Run(sub, func(t *testing.T) {
			t.Parallel()
			f(t, setup(t, func(c *transfer.Config) { c.Verify = verify }))
		})
	}
}

// TestCleanupReplica: result tables a run left on the replica are dropped
// once old enough; younger ones and tables that are not results stay.
func TestCleanupReplica(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, q := range []string{
		"CREATE TABLE Dynamics_5 (id INT) ENGINE=MyISAM", // left by a run cut short
		"CREATE TABLE Post_5 (id INT) ENGINE=MyISAM",
		"CREATE TABLE Post_6 (id INT) ENGINE=MyISAM",   // only one of the two was created
		"CREATE TABLE Settings (id INT) ENGINE=MyISAM", // the procedure's own data
	} {
		if _, err := b.local.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	tables := func() string { return strings.Join(b.tables(t, b.replica, "%"), ",") }
	if got, err := b.sh.CleanupReplica(b.ctx, b.replica, time.Hour); err != nil || len(got) != 0 {
		t.Fatalf("CleanupReplica(1h) = %v, %v; want nothing dropped", got, err)
	}
	if got := tables(); got != "Dynamics_5,Post_5,Post_6,Settings" {
		t.Fatalf("after CleanupReplica(1h): %s", got)
	}
	time.Sleep(1100 * time.Millisecond) // CREATE_TIME has whole seconds
	got, err := b.sh.CleanupReplica(b.ctx, b.replica, time.Second)
	if err != nil || fmt.Sprint(got) != "[5 6]" {
		t.Fatalf("CleanupReplica(1s) = %v, %v; want topics [5 6]", got, err)
	}
	if got := tables(); got != "Settings" {
		t.Fatalf("after CleanupReplica(1s): %s", got)
	}
	// Nothing reached the replica's binary log: its own events would carry
	// its own GTID domain (the sandbox gives each replica one).
	var pos string
	if err := b.replica.QueryRowContext(b.ctx, "SELECT @@global.gtid_binlog_pos").Scan(&pos); err != nil {
		t.Fatal(err)
	}
	for _, g := range strings.Split(pos, ",") {
		if g != "" && !strings.HasPrefix(g, "0-") {
			t.Errorf("the replica binlogged local events: gtid_binlog_pos %s", pos)
		}
	}
	if _, err := b.sh.CleanupReplica(b.ctx, b.replica, -time.Second); !errors.Is(err, transfer.ErrParams) {
		t.Errorf("negative age: %v, want ErrParams", err)
	}
}
