package worker_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker"
)

// The tiered topology of TestTiersAndParallelAppliers: replica1 replicates
// from the primary, replica2 from replica1; both apply with 4 optimistic
// parallel threads.
const (
	midTier   = 0 // replica1, index in Sandbox.Replicas
	lowTier   = 1 // replica2
	noiseBase = 900
)

// TestTiersAndParallelAppliers runs the seeds' replication shapes (`sandbox
// up --tiers 2 --parallel 4`) end to end; its subtests share one sandbox.
func TestTiersAndParallelAppliers(t *testing.T) {
	tenv := testdb.Start(t, "workertiers", sandbox.Options{Replicas: 1, Tiers: 2, Parallel: 4})
	if got := tenv.SB.Replicas[lowTier].Source; got != tenv.SB.Replicas[midTier].Name {
		t.Fatalf("replica2 replicates from %q, want replica1", got)
	}
	t.Run("LagGate", func(t *testing.T) { testTierLagGate(t, tenv) })
	t.Run("SecondTierUnderWriteLoad", func(t *testing.T) { testSecondTierUnderWriteLoad(t, tenv) })
	t.Run("StoppedMiddleTierStopsClaims", func(t *testing.T) { testStoppedMiddleTier(t, tenv) })
}

// testTierLagGate: with parallel appliers under a write load, the lag both
// tiers' gates measure is known and small (median under 1.5 s on a loaded
// 2-core machine) and the gates stay open nearly always; STOP
// SLAVE on a replica closes its own gate (stopped); STOP SLAVE on the
// middle tier closes the second tier's gate (behind: the primary's
// heartbeat no longer arrives) although the second tier's own threads run
// and its Seconds_Behind_Master reads 0.
func testTierLagGate(t *testing.T, e *testdb.Env) {
	b := setupOn(t, e, 30*time.Second)
	stopLoad := b.writeLoad(t, 2)
	defer stopLoad()
	hb := &monitor.Heartbeat{Primary: b.primary, Schema: b.db, WriterID: 4242, Interval: 100 * time.Millisecond}
	if err := hb.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hb.Stop(bg) })
	gc := monitor.GateConfig{MaxLag: 3 * time.Second, SampleInterval: 100 * time.Millisecond,
		StoppedBackoff: 200 * time.Millisecond, BehindBackoff: 200 * time.Millisecond}
	gates := make([]*monitor.Gate, 2)
	for i := range gates {
		rdb := testdb.Open(t, e.Replica(i, b.db))
		f, err := flavor.Detect(b.ctx, rdb)
		if err != nil {
			t.Fatal(err)
		}
		gates[i] = &monitor.Gate{Replica: rdb, Flavor: f, Schema: b.db, WriterID: 4242, Config: gc}
		if err := gates[i].Start(b.ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gates[i].Stop(bg) })
	}
	open := func() bool {
		_, e0 := gates[0].Check()
		_, e1 := gates[1].Check()
		return e0 == nil && e1 == nil
	}
	testdb.WaitFor(t, 30*time.Second, "both tiers' gates open", open)

	// Sane lag under load: known on every sample, well under a second
	// typically, and the gates open nearly always.
	var lags [2][]time.Duration
	closed := 0
	for range 30 {
		for i, g := range gates {
			st := g.Status()
			if !st.LagKnown {
				t.Fatalf("tier %d: lag unknown under load: %+v", i+1, st)
			}
			lags[i] = append(lags[i], st.Lag)
		}
		if !open() {
			closed++
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := range lags {
		sort.Slice(lags[i], func(a, c int) bool { return lags[i][a] < lags[i][c] })
		med, top := lags[i][len(lags[i])/2], lags[i][len(lags[i])-1]
		t.Logf("tier %d under load: median lag %v, max %v", i+1, med, top)
		if med > 1500*time.Millisecond || med < 0 {
			t.Errorf("tier %d: median lag %v under a light load with parallel appliers", i+1, med)
		}
	}
	if closed > 10 {
		t.Errorf("gates closed on %d of 30 samples under a light load", closed)
	}
	t.Logf("%d writes so far", stopLoad())

	// STOP SLAVE on the middle tier.
	mid := tierRoot(t, e, midTier)
	low := tierRoot(t, e, lowTier)
	if _, err := mid.ExecContext(b.ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mid.ExecContext(bg, "START SLAVE") })
	testdb.WaitFor(t, 10*time.Second, "the middle tier's gate closed as stopped", func() bool {
		_, err := gates[0].Check()
		return errors.Is(err, monitor.ErrReplicaStopped)
	})
	testdb.WaitFor(t, 30*time.Second, "the second tier's gate closed as behind", func() bool {
		_, err := gates[1].Check()
		return errors.Is(err, monitor.ErrReplicaBehind)
	})
	st := gates[1].Status()
	if !st.IORunning || !st.SQLRunning || !st.SecondsBehind.Valid || st.SecondsBehind.Int64 != 0 || st.Lag <= gc.MaxLag {
		t.Fatalf("second tier while the middle is stopped: %+v; want its threads running, Seconds_Behind_Master 0 and a measured lag over %v", st, gc.MaxLag)
	}
	t.Logf("second tier with the middle stopped: Seconds_Behind_Master %d, measured lag %v: gate closed", st.SecondsBehind.Int64, st.Lag)
	if _, err := mid.ExecContext(b.ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "both gates open again", open)

	// STOP SLAVE on the second tier (parallel appliers) closes its gate.
	if _, err := low.ExecContext(b.ctx, "STOP SLAVE"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { low.ExecContext(bg, "START SLAVE") })
	testdb.WaitFor(t, 10*time.Second, "the second tier's gate closed as stopped", func() bool {
		_, err := gates[1].Check()
		return errors.Is(err, monitor.ErrReplicaStopped)
	})
	if _, err := low.ExecContext(b.ctx, "START SLAVE"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "both gates open again", open)
}

// testSecondTierUnderWriteLoad: workers on the second tier claim on the
// primary, wait for the primary's GTID position (through the middle tier,
// applied by parallel appliers), run the procedure, ship and publish, while
// writers update source rows on the primary without pause and re-request
// the topics they change. Every published result equals a recompute from
// the primary's final source rows: the last run of each topic was claimed
// after its last write, so a run that missed a write committed before its
// claim would show (the middle tier applies with a 1 s delay to make sure
// it would).
func testSecondTierUnderWriteLoad(t *testing.T, e *testdb.Env) {
	b := setupOn(t, e, 30*time.Second)
	// The middle tier applies 1 s late, so the second tier is at least
	// that far behind: a run that did not wait for the primary's position
	// would read source rows older than its claim.
	mid := tierRoot(t, e, midTier)
	delay := func(secs int) {
		for _, s := range []string{"STOP SLAVE", fmt.Sprintf("CHANGE MASTER TO MASTER_DELAY = %d", secs), "START SLAVE"} {
			if _, err := mid.ExecContext(bg, s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	delay(1)
	t.Cleanup(func() { delay(0) })
	ids := b.addTopics(t, 1, 30)
	p := b.startPool(t, lowTier, 3, nil)
	stopLoad := b.writeLoad(t, 2)
	defer stopLoad()

	// The causal writer: change a topic's source rows, then request it.
	var changes int
	rng := rand.New(rand.NewPCG(7, 7))
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end) && changes < 2000; changes++ {
		id := ids[rng.IntN(len(ids))]
		if _, err := b.primary.ExecContext(b.ctx, "UPDATE src SET v = v + ? WHERE topic_id = ?", 1+rng.IntN(9), id); err != nil {
			t.Fatal(err)
		}
		if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{id}, Scope: queue.ScopeFull}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
	}
	writes := stopLoad()
	testdb.WaitFor(t, 2*time.Minute, "all topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	p.stop(t)
	t.Logf("%d changes with re-requests and %d background writes; %d runs done", changes, writes,
		b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'"))
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome NOT IN ('done', 'released')"); n != 0 {
		t.Errorf("%d runs neither done nor released", n)
	}
	if w := b.count(t, "SELECT MAX(lag_wait_us) FROM run WHERE outcome = 'done'"); w < 500000 {
		t.Errorf("longest GTID wait %dµs: the second tier was 1 s behind, the waits should show it", w)
	}
	lowID := int(e.SB.Replicas[lowTier].ServerID)
	// The instances recorded where their replica replicates from: the
	// middle tier, which the dashboard's tree draws.
	if src := b.count(t, "SELECT source_id FROM replica_source WHERE id = ?", lowID); src != int(e.SB.Replicas[midTier].ServerID) {
		t.Errorf("the second tier's instances recorded source %d, want the middle tier's server_id %d", src, e.SB.Replicas[midTier].ServerID)
	}
	for _, id := range ids {
		var n, srv int
		var total int64
		if err := b.primary.QueryRowContext(b.ctx, fmt.Sprintf("SELECT n, total, srv FROM S_%d", id)).Scan(&n, &total, &srv); err != nil {
			t.Fatalf("published S_%d: %v", id, err)
		}
		var wantN int
		var wantTotal int64
		if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*), SUM(v) * 2 FROM src WHERE topic_id = ?", id).Scan(&wantN, &wantTotal); err != nil {
			t.Fatal(err)
		}
		if srv != lowID || n != wantN || total != wantTotal {
			t.Errorf("topic %d: published n=%d total=%d from server %d; the primary's source gives n=%d total=%d (want server %d)",
				id, n, total, srv, wantN, wantTotal, lowID)
		}
		bad := b.count(t, fmt.Sprintf("SELECT COUNT(*) FROM src s LEFT JOIN R_%d r ON r.k = s.k WHERE s.topic_id = ? AND (r.v IS NULL OR r.v <> s.v * 2)", id), id)
		if bad != 0 {
			t.Errorf("topic %d: %d published rows differ from the primary's source", id, bad)
		}
	}
}

// testStoppedMiddleTier: workers on the second tier stop claiming when the
// middle tier stops replicating (STOP SLAVE) or stops altogether (its
// mariadbd SIGSTOPped), and finish the work once it resumes.
func testStoppedMiddleTier(t *testing.T, e *testdb.Env) {
	b := setupOn(t, e, 30*time.Second)
	p := b.startPool(t, lowTier, 2, func(_ *worker.Config, g *monitor.GateConfig) { g.MaxLag = 2 * time.Second })
	testdb.WaitFor(t, 30*time.Second, "instances idle", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = ?", monitor.StateIdle) == 2
	})
	mid := tierRoot(t, e, midTier)
	midPID := e.SB.Replicas[midTier].PID
	faults := []struct {
		name        string
		stop, start func() error
	}{
		{"STOP SLAVE on the middle tier",
			func() error { _, err := mid.ExecContext(b.ctx, "STOP SLAVE"); return err },
			func() error { _, err := mid.ExecContext(b.ctx, "START SLAVE"); return err }},
		{"middle tier's mariadbd SIGSTOPped",
			func() error { return syscall.Kill(midPID, syscall.SIGSTOP) },
			func() error { return syscall.Kill(midPID, syscall.SIGCONT) }},
	}
	for i, f := range faults {
		if err := f.stop(); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		t.Cleanup(func() { f.start() })
		testdb.WaitFor(t, 30*time.Second, "instances waiting for lag ("+f.name+")", func() bool {
			return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = ?", monitor.StateLagWait) == 2
		})
		runs := b.count(t, "SELECT COUNT(*) FROM run")
		b.addTopics(t, 1+5*i, 5)
		if testdb.Poll(2*time.Second, func() bool {
			return b.count(t, "SELECT COUNT(*) FROM run") > runs || b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") > 0
		}) {
			t.Fatalf("%s: a topic was claimed below it", f.name)
		}
		if err := f.start(); err != nil {
			t.Fatalf("%s: resume: %v", f.name, err)
		}
		testdb.WaitFor(t, time.Minute, "topics done after "+f.name+" ended", func() bool {
			return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
		})
	}
	p.stop(t)
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'"); n != 10 {
		t.Errorf("%d runs done, want 10 (each topic once)", n)
	}
}

// writeLoad starts n writers updating source rows of topics the tests
// never request (noiseBase…) on the primary, each row change its own
// transaction, until the returned stop is called; stop returns the number
// of writes and may be called more than once.
func (b *bundle) writeLoad(t *testing.T, n int) (stop func() int64) {
	t.Helper()
	for id := noiseBase; id < noiseBase+10; id++ {
		for k := 1; k <= 20; k++ {
			if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO src VALUES (?, ?, 0)", id, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	var writes atomic.Int64
	for w := range n {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := 0; i < 1_000_000 && ctx.Err() == nil; i++ {
				_, err := b.primary.ExecContext(ctx, "UPDATE src SET v = v + 1 WHERE topic_id = ? AND k = ?", noiseBase+rng.IntN(10), 1+rng.IntN(20))
				if err == nil {
					writes.Add(1)
				}
			}
		})
	}
	var once sync.Once
	stop = func() int64 {
		once.Do(func() { cancel(); wg.Wait() })
		return writes.Load()
	}
	t.Cleanup(func() { stop() })
	return stop
}

// tierRoot opens replica i of e as root over its socket, for replication
// control.
func tierRoot(t *testing.T, e *testdb.Env, i int) *sql.DB {
	t.Helper()
	mc := e.SB.MySQLConfig(e.SB.Replicas[i])
	mc.Net, mc.Addr, mc.User, mc.Passwd = "unix", e.SB.Replicas[i].Socket, "root", ""
	return testdb.Open(t, mc)
}
