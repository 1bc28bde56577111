package transfer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/transfer"
)

// dropsRunning counts the dropper's DROP statements naming table that are
// running on the primary (waiting for a lock, mostly), other than this
// query.
func (b *bundle) dropsRunning(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE CONCAT('%DROP /* nonqueue */ TABLE%', ?, '%')", table).Scan(&n); err != nil {
		t.Fatalf("look for DROPs in the processlist: %v", err)
	}
	return n
}

// awaitFailedDrop waits until a DROP of table has started on the primary
// and ended: with the table held, it ended with a lock wait timeout.
func (b *bundle) awaitFailedDrop(t *testing.T, table string) {
	t.Helper()
	testdb.WaitFor(t, 20*time.Second, "the dropper's DROP of "+table+" waiting for its lock", func() bool { return b.dropsRunning(t, table) > 0 })
	testdb.WaitFor(t, 20*time.Second, "the dropper's DROP of "+table+" giving up", func() bool { return b.dropsRunning(t, table) == 0 })
}

// republishHeld ships topic twice, the second time with a Dropper whose
// single connection the test holds until hold returns: the swapped-out
// tables are there, and their DROP waits for the connection while the
// test locks them. It returns the dropper, the swapped-out tables and a
// function that lets the dropper's DROP go.
func (b *bundle) republishHeld(t *testing.T, topic int64) (d *transfer.Dropper, old []string, let func()) {
	t.Helper()
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("Ship v1: %v", err)
	}
	dropPool := testdb.Open(t, env.Primary(b.schema))
	dropPool.SetMaxOpenConns(1)
	hold, err := dropPool.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	d = b.sh.NewDropper(dropPool)
	t.Cleanup(func() {
		hold.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	b.makeResult(t, topic, 2)
	p := b.params(topic, 2)
	p.Dropper = d
	if _, err := b.sh.Ship(b.ctx, p); err != nil {
		t.Fatalf("Ship v2: %v", err)
	}
	b.assertLive(t, topic, 2)
	for _, n := range b.cfg.TableNames(topic) {
		old = append(old, "nqold_2_"+n)
	}
	return d, old, func() { hold.Close() }
}

// The chaos soak's case: a DROP of swapped-out tables fails (here a
// LOCK TABLES … READ of one of them, as a backup's per-table lock, outlasts
// the dropper's bounded try) and the lock goes away. The dropper tries
// again in the background and the tables are gone within seconds, with no
// CleanupPrimary. SwapTries 1 makes the dropper's first bounded tries end
// with the first lock wait, as any series ends under a longer lock. Before
// the retries the dropper logged a warning and forgot the tables, leaving
// them to CleanupPrimary's hourly window.
func TestDropperRetriesFailedDrop(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *transfer.Config) { c.SwapTries = 1 })
	const topic = 31
	d, old, let := b.republishHeld(t, topic)

	locker, err := b.openPrimary(t).Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	if _, err := locker.ExecContext(b.ctx, "LOCK TABLES "+old[0]+" READ"); err != nil {
		t.Fatalf("lock %s: %v", old[0], err)
	}
	let()
	b.awaitFailedDrop(t, old[0])
	if got := b.oldTables(t, b.primary); len(got) != len(old) {
		t.Fatalf("swapped-out tables while one is locked: %v, want all of %v (one DROP names them all)", got, old)
	}
	unlocked := time.Now()
	if _, err := locker.ExecContext(b.ctx, "UNLOCK TABLES"); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	b.awaitRetriedDrop(t, d, unlocked, "the lock went")
	b.assertLive(t, topic, 2)
}

// awaitRetriedDrop waits up to 15 s for the swapped-out tables to be gone
// after what blocked their DROP went (at since), then closes the dropper
// and checks nothing is left.
func (b *bundle) awaitRetriedDrop(t *testing.T, d *transfer.Dropper, since time.Time, what string) {
	t.Helper()
	if !testdb.Poll(15*time.Second, func() bool { return len(b.oldTables(t, b.primary)) == 0 }) {
		t.Fatalf("swapped-out tables still there 15s after %s: %v (the failed DROP was not retried)", what, b.oldTables(t, b.primary))
	}
	t.Logf("swapped-out tables dropped %v after %s", time.Since(since).Round(time.Millisecond), what)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Dropper.Close: %v", err)
	}
	b.assertNoStaging(t)
}

// The same with a backup's DDL block (BACKUP STAGE BLOCK_DDL, as
// mariabackup takes it), which every DROP on the server waits for: the
// dropper's DROP gives up, and once the backup ends the swapped-out tables
// are dropped within seconds, with no CleanupPrimary. Not parallel: the
// block holds up every DDL on the primary, other tests' too.
func TestDropperRetriesAfterBackupBlock(t *testing.T) {
	b := setup(t, func(c *transfer.Config) { c.SwapTries = 1 })
	const topic = 32
	d, old, let := b.republishHeld(t, topic)

	backup, err := b.openPrimary(t).Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer backup.Close()
	ended := false
	endBackup := func() {
		if !ended {
			ended = true
			if _, err := backup.ExecContext(context.WithoutCancel(b.ctx), "BACKUP STAGE END"); err != nil {
				t.Errorf("BACKUP STAGE END: %v", err)
			}
		}
	}
	defer endBackup()
	for _, q := range []string{"BACKUP STAGE START", "BACKUP STAGE BLOCK_DDL"} {
		if _, err := backup.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	let()
	b.awaitFailedDrop(t, old[0])
	if got := b.oldTables(t, b.primary); len(got) != len(old) {
		t.Fatalf("swapped-out tables during the backup: %v, want all of %v", got, old)
	}
	endBackup()
	b.awaitRetriedDrop(t, d, time.Now(), "the backup ended")
}

// Close tries the tables waiting for a retry once more: a DROP that failed
// while a table was locked, the lock gone right before the process stops,
// and the table is dropped by Close, not left to CleanupPrimary. Before
// the retries Close had forgotten it.
func TestDropperCloseRetriesPending(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *transfer.Config) { c.SwapTries = 1 })
	mc := env.Primary(b.schema)
	mc.Params = map[string]string{"sql_log_bin": "0"}
	const table = "nqold_78_Dynamics_1" // as a swapped-out table is named
	if _, err := testdb.Open(t, mc).ExecContext(b.ctx, "CREATE TABLE "+table+" (id INT) ENGINE=MyISAM"); err != nil {
		t.Fatal(err)
	}
	locker, err := b.openPrimary(t).Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	if _, err := locker.ExecContext(b.ctx, "LOCK TABLES "+table+" READ"); err != nil {
		t.Fatalf("lock %s: %v", table, err)
	}
	d := b.sh.NewDropper(b.primary)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	d.Add(table)
	b.awaitFailedDrop(t, table)
	if _, err := locker.ExecContext(b.ctx, "UNLOCK TABLES"); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Dropper.Close: %v", err)
	}
	if got := b.oldTables(t, b.primary); len(got) != 0 {
		t.Fatalf("swapped-out tables after Dropper.Close: %v (the failed DROP was not tried again)", got)
	}
	b.assertNoStaging(t)
}

// A Ship fenced out under the lock removes its staging tables; when their
// DROP fails (one is locked), they go to the dropper's retries, and the
// retry drops them once the lock is gone. (Ship also removes their files
// over SFTP right away, so here the retry finds them gone from disk: it
// is what drops them when SSH is down as well.)
func TestFailedShipRetriesStagingDrop(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *transfer.Config) { c.SwapTries = 1 })
	const topic = 33
	b.makeResult(t, topic, 1)
	d := b.sh.NewDropper(b.primary)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	locker, err := b.openPrimary(t).Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	staging := transfer.StagingName("nqtmp_", 1, b.cfg.TableNames(topic)[0])
	errLost := errors.New("claim lost")
	p := b.params(topic, 1)
	p.Dropper = d
	p.Fence = func(ctx context.Context) error {
		if _, err := locker.ExecContext(ctx, "LOCK TABLES "+staging+" READ"); err != nil {
			t.Errorf("lock %s: %v", staging, err)
		}
		return errLost
	}
	if _, err := b.sh.Ship(b.ctx, p); !errors.Is(err, transfer.ErrFenced) {
		t.Fatalf("Ship = %v, want ErrFenced", err)
	}
	if n := b.sh.PendingDrops(); n != len(b.cfg.TableNames(topic)) {
		t.Fatalf("%d tables wait for a retry of their DROP, want the %d staging tables", n, len(b.cfg.TableNames(topic)))
	}
	if _, err := locker.ExecContext(b.ctx, "UNLOCK TABLES"); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	testdb.WaitFor(t, 15*time.Second, "the retry of the staging tables' DROP", func() bool { return b.sh.PendingDrops() == 0 })
	b.assertNoStaging(t)
}

// One held table does not keep the others of its DROP waiting: the
// retries split a group that fails on a lock, so while LOCK TABLES holds
// one swapped-out table, the other three of its batch are dropped (within
// about 20 s: the halves are tried at the growing pauses), and the held one
// waits, and goes at Close once its lock is gone.
func TestDropperRetriesIsolateHeldTable(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	topics := []int64{34, 35}
	for _, topic := range topics {
		b.makeResult(t, topic, 1)
		if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
			t.Fatalf("Ship %d v1: %v", topic, err)
		}
	}
	dropPool := testdb.Open(t, env.Primary(b.schema))
	dropPool.SetMaxOpenConns(1)
	hold, err := dropPool.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := b.sh.NewDropper(dropPool)
	t.Cleanup(func() {
		hold.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	var old []string
	for _, topic := range topics {
		b.makeResult(t, topic, 2)
		p := b.params(topic, 2)
		p.Dropper = d
		if _, err := b.sh.Ship(b.ctx, p); err != nil {
			t.Fatalf("Ship %d v2: %v", topic, err)
		}
		for _, n := range b.cfg.TableNames(topic) {
			old = append(old, "nqold_2_"+n)
		}
	}
	locker, err := b.openPrimary(t).Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close()
	held := old[0]
	if _, err := locker.ExecContext(b.ctx, "LOCK TABLES "+held+" READ"); err != nil {
		t.Fatalf("lock %s: %v", held, err)
	}
	start := time.Now()
	hold.Close()
	testdb.WaitFor(t, 60*time.Second, "the swapped-out tables but the held one dropped", func() bool {
		got := b.oldTables(t, b.primary)
		return len(got) == 1 && got[0] == held
	})
	t.Logf("the other %d swapped-out tables dropped %v after the first DROP, while %s is held", len(old)-1, time.Since(start).Round(time.Millisecond), held)
	// The count is brought up to date when a round of retries ends.
	testdb.WaitFor(t, 5*time.Second, "the held table alone waiting for a retry", func() bool { return b.sh.PendingDrops() == 1 })
	if _, err := locker.ExecContext(b.ctx, "UNLOCK TABLES"); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Dropper.Close: %v", err)
	}
	if n := b.sh.PendingDrops(); n != 0 {
		t.Fatalf("%d tables wait for a retry after Close", n)
	}
	b.assertNoStaging(t)
}
