package transfer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/transfer"
)

// maxReadStall is the goal: with a long query holding a result
// table, a short read of it never takes longer than this while a publish
// waits to swap it. The default lock wait is 1s, so a loaded machine has a
// second of margin; the code before the bound stalled reads for as long as
// the long query ran (18.9s in the report).
const maxReadStall = 2 * time.Second

// longRead is a query holding a table's metadata lock, as an
// application's report query would.
type longRead struct {
	id   int64 // its connection id, for KILL QUERY
	done chan longReadEnd
}

type longReadEnd struct {
	at  time.Time
	err error
}

// holdTable starts SELECT SLEEP(d), COUNT(*) FROM table on a connection of
// its own: the statement holds the table's metadata lock for d. It returns
// once the server is sleeping in it, so the lock is held.
func (b *bundle) holdTable(t *testing.T, table string, d time.Duration) *longRead {
	t.Helper()
	db := b.openPrimary(t)
	conn, err := db.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	lr := &longRead{done: make(chan longReadEnd, 1)}
	if err := conn.QueryRowContext(b.ctx, "SELECT CONNECTION_ID()").Scan(&lr.id); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer conn.Close()
		var slept, n int64
		err := conn.QueryRowContext(b.ctx, fmt.Sprintf("SELECT SLEEP(%.3f), COUNT(*) FROM %s", d.Seconds(), table)).Scan(&slept, &n)
		lr.done <- longReadEnd{time.Now(), err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND STATE = 'User sleep'", lr.id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return lr
		}
		if time.Now().After(deadline) {
			t.Fatalf("the long read of %s did not start within 10s", table)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readLoad is the application: n sessions reading a result table with a
// short SELECT COUNT(*) in a loop.
type readLoad struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	reads atomic.Int64
	mu    sync.Mutex
	max   time.Duration
	errs  []string
}

func (b *bundle) startReaders(t *testing.T, table string, n int) *readLoad {
	t.Helper()
	db := b.openPrimary(t)
	r := &readLoad{stop: make(chan struct{})}
	for range n {
		conn, err := db.Conn(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer conn.Close()
			// Bounded by the test's context and by stop.
			for b.ctx.Err() == nil {
				select {
				case <-r.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				t0 := time.Now()
				var c int64
				err := conn.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM "+table).Scan(&c)
				took := time.Since(t0)
				r.mu.Lock()
				r.max = max(r.max, took)
				if err != nil {
					r.errs = append(r.errs, err.Error())
				}
				r.mu.Unlock()
				r.reads.Add(1)
			}
		}()
	}
	return r
}

// finish stops the readers and returns the slowest read and the errors.
func (r *readLoad) finish() (time.Duration, []string) {
	close(r.stop)
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.max, r.errs
}

// The case, with its figures: a 20 s query reads Dynamics_5 when
// topic 5 is published again. Three sessions of the application read the
// table meanwhile: none of their reads takes more than 2 s or fails, and
// the new version goes live soon after the long query ends. Before the
// bound, the RENAME queued for the metadata lock for the whole 20 s and
// every read queued behind it.
func TestPublishDoesNotStallReaders(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 5
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("first publish: %v", err)
	}
	b.makeResult(t, topic, 2)
	want := checksum(t, b.ctx, b.local, name)

	const longQuery = 20 * time.Second
	hold := b.holdTable(t, name, longQuery)
	readers := b.startReaders(t, name, 3)
	start := time.Now()
	ship, err := b.sh.Ship(b.ctx, b.params(topic, 2))
	published := time.Now()
	end := <-hold.done
	// Reads go on a little after the publish: the new table serves them.
	time.Sleep(300 * time.Millisecond)
	slowest, errs := readers.finish()
	t.Logf("long query ran %v; publish returned %v after it started (%v after the long query ended); %d short reads, slowest %v, %d errors",
		end.at.Sub(start).Round(time.Millisecond), published.Sub(start).Round(time.Millisecond),
		published.Sub(end.at).Round(time.Millisecond), readers.reads.Load(), slowest.Round(time.Millisecond), len(errs))
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if end.err != nil {
		t.Fatalf("the long query failed: %v", end.err)
	}
	if len(errs) > 0 {
		t.Fatalf("readers of the old table saw %d errors, first: %s", len(errs), errs[0])
	}
	if slowest > maxReadStall {
		t.Fatalf("a short read of %s took %v while the publish waited for the long query, want at most %v", name, slowest, maxReadStall)
	}
	if n := readers.reads.Load(); n < 100 {
		t.Fatalf("only %d short reads in %v: the readers did not read through the long query", n, longQuery)
	}
	// Published soon after the long query ended: the last pause (4s by
	// default) and a swap, with a second for a loaded machine.
	if lag := published.Sub(end.at); lag > b.cfg.SwapBackoff+b.cfg.LockWait+time.Second {
		t.Fatalf("published %v after the long query ended, want within %v", lag, b.cfg.SwapBackoff+b.cfg.LockWait+time.Second)
	}
	if got := checksum(t, b.ctx, b.primary, name); got != want {
		t.Fatalf("live %s has checksum %s, want the new version's %s", name, got, want)
	}
	if ship.PublishTime < longQuery/2 {
		t.Errorf("PublishTime %v does not count the waits", ship.PublishTime)
	}
	b.assertNoStaging(t)
}

// When the long query outlasts every try, the publish gives up with
// ErrTableBusy ("result table busy: …"): the old tables stay live, no
// staging table or file is left, the readers never fail nor wait more than
// 2 s, and the topic lock is free between the tries (the reaper and an
// operator's release are not kept out by the waits). Once the query is
// gone, the next publish goes through at once.
func TestPublishGivesUpOnBusyTable(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *transfer.Config) {
		c.SwapTries = 3
		c.SwapBackoff = time.Second
	})
	const topic = 6
	name := b.cfg.TableNames(topic)[0]
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("first publish: %v", err)
	}
	v1 := checksum(t, b.ctx, b.primary, name)
	b.makeResult(t, topic, 2)

	hold := b.holdTable(t, name, 25*time.Second)
	readers := b.startReaders(t, name, 3)
	// Watch the topic lock as the reaper would, every 100 ms.
	var free, held atomic.Int64
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	watcher := b.openPrimary(t)
	go func() {
		defer close(watched)
		for {
			select {
			case <-stopWatch:
				return
			case <-time.After(100 * time.Millisecond):
			}
			ok, err := lockFree(b.ctx, watcher, b.lockName(topic))
			switch {
			case err != nil:
				return
			case ok:
				free.Add(1)
			default:
				held.Add(1)
			}
		}
	}()
	start := time.Now()
	_, err := b.sh.Ship(b.ctx, b.params(topic, 2))
	took := time.Since(start)
	close(stopWatch)
	<-watched
	slowest, errs := readers.finish()
	t.Logf("publish returned after %v: %v; lock seen free %d times, held %d; %d short reads, slowest %v",
		took.Round(time.Millisecond), err, free.Load(), held.Load(), readers.reads.Load(), slowest.Round(time.Millisecond))

	if !errors.Is(err, transfer.ErrTableBusy) || !strings.Contains(err.Error(), "result table busy: "+b.schema+"."+name) {
		t.Fatalf("publish = %v, want ErrTableBusy naming %s.%s", err, b.schema, name)
	}
	// Tries at 0, 2 and 4 s, a second each: about 5 s.
	if took < 4*time.Second || took > 12*time.Second {
		t.Fatalf("gave up after %v, want about 5s (3 tries of 1s with pauses of 1s)", took)
	}
	if len(errs) > 0 {
		t.Fatalf("readers of the old table saw %d errors, first: %s", len(errs), errs[0])
	}
	if slowest > maxReadStall {
		t.Fatalf("a short read took %v, want at most %v", slowest, maxReadStall)
	}
	if free.Load() == 0 || held.Load() == 0 {
		t.Fatalf("topic lock seen free %d and held %d times during the tries: want both (held during a try, free in the pauses)", free.Load(), held.Load())
	}
	if got := checksum(t, b.ctx, b.primary, name); got != v1 {
		t.Fatalf("the live table changed although the publish gave up")
	}
	b.assertNoStaging(t)

	// The long query ends (killed here to save time): the next publish
	// goes through with one try.
	if _, err := b.primary.ExecContext(b.ctx, fmt.Sprintf("KILL QUERY %d", hold.id)); err != nil {
		t.Fatalf("kill the long query: %v", err)
	}
	<-hold.done
	start = time.Now()
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 3)); err != nil {
		t.Fatalf("publish once the table is free: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("publish of a free table took %v", took)
	}
	if got, want := checksum(t, b.ctx, b.primary, name), checksum(t, b.ctx, b.local, name); got != want {
		t.Fatalf("live %s is not the new version", name)
	}
	b.assertNoStaging(t)
}

// A DROP on the primary of a table someone holds gives up too: the
// dropper's Close leaves a held swapped-out table to CleanupPrimary after
// bounded tries (one when handed over, one more at Close) instead of
// waiting for the holder, and CleanupPrimary
// makes one bounded try per sweep. Before the bound both waited for the
// holder to finish (here 15 s).
func TestDropsOnPrimaryAreBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	mc := env.Primary(b.schema)
	mc.Params = map[string]string{"sql_log_bin": "0"}
	primLocal := testdb.Open(t, mc)
	const table = "nqold_77_Dynamics_1" // as a swapped-out table is named
	if _, err := primLocal.ExecContext(b.ctx, "CREATE TABLE "+table+" (id INT) ENGINE=MyISAM"); err != nil {
		t.Fatal(err)
	}
	// A backup's LOCK TABLES, say.
	hold := b.holdTable(t, table, 15*time.Second)
	exists := func() bool {
		_, err := os.Stat(filepath.Join(env.SB.Primary.Datadir, b.schema, table+".frm"))
		return err == nil
	}

	d := b.sh.NewDropper(b.primary)
	start := time.Now()
	d.Add(table)
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("dropper close: %v", err)
	}
	took := time.Since(start)
	t.Logf("the dropper gave up on the held table after %v", took.Round(time.Millisecond))
	// A try of 1 s when handed over, one more at Close: about 2 s.
	if took > 9*time.Second {
		t.Fatalf("the dropper waited %v for a held table, want its bounded tries (about 2s)", took)
	}
	if !exists() {
		t.Fatal("the held table was dropped before its holder finished")
	}

	start = time.Now()
	err := b.sh.CleanupPrimary(b.ctx, b.primary, 0)
	took = time.Since(start)
	t.Logf("CleanupPrimary returned after %v: %v", took.Round(time.Millisecond), err)
	if err == nil || took > 3*time.Second {
		t.Fatalf("CleanupPrimary of a held table = %v after %v, want a lock wait error within one bounded try", err, took)
	}

	if _, err := b.primary.ExecContext(b.ctx, fmt.Sprintf("KILL QUERY %d", hold.id)); err != nil {
		t.Fatalf("kill the holder: %v", err)
	}
	<-hold.done
	if err := b.sh.CleanupPrimary(b.ctx, b.primary, 0); err != nil {
		t.Fatalf("CleanupPrimary once free: %v", err)
	}
	if exists() {
		t.Fatal("CleanupPrimary left the table once it was free")
	}
	b.assertNoStaging(t)
}
