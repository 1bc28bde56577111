package monitor_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

func (b *bundle) heartbeat(t *testing.T, interval time.Duration) *monitor.Heartbeat {
	t.Helper()
	hb := &monitor.Heartbeat{Primary: b.primary, Schema: b.name, WriterID: b.writerID, Interval: interval, Logger: testLogger(t)}
	if err := hb.Start(b.ctx); err != nil {
		t.Fatalf("start heartbeat: %v", err)
	}
	t.Cleanup(func() { hb.Stop(b.ctx) })
	return hb
}

func (b *bundle) gate(t *testing.T, cfg monitor.GateConfig) *monitor.Gate {
	return &monitor.Gate{Replica: b.replica, Flavor: b.flavor, Schema: b.name, WriterID: b.writerID, Config: cfg, Logger: testLogger(t)}
}

// sampleUntil drives g with RunOnce until Check's error satisfies ok, or
// 15s pass; it returns the last backoff and error.
func sampleUntil(t *testing.T, b *bundle, g *monitor.Gate, ok func(error) bool) (time.Duration, error) {
	t.Helper()
	var backoff time.Duration
	var err error
	testdb.Poll(15*time.Second, func() bool {
		if rerr := g.RunOnce(b.ctx); rerr != nil {
			t.Logf("sample: %v", rerr)
		}
		backoff, err = g.Check()
		return ok(err)
	})
	return backoff, err
}

func isNil(err error) bool { return err == nil }

// TestGateOpensWithSmallLag: the heartbeat written on the primary is read
// back on the replica, and with a healthy replica the collector opens the
// gate with a measured lag well under MaxLag.
func TestGateOpensWithSmallLag(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	b.heartbeat(t, 50*time.Millisecond)

	var ts int64
	if err := b.primary.QueryRowContext(b.ctx, "SELECT ts_us FROM heartbeat WHERE id = ?", b.writerID).Scan(&ts); err != nil {
		t.Fatalf("heartbeat row on the primary: %v", err)
	}
	if d := time.Since(time.UnixMicro(ts)); d < 0 || d > 5*time.Second {
		t.Fatalf("heartbeat on the primary is %v old, want this process's clock", d)
	}

	cfg := monitor.GateConfig{MaxLag: time.Second, SampleInterval: 50 * time.Millisecond}
	g := b.gate(t, cfg)
	if err := g.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Stop(b.ctx) })
	var err error
	if !testdb.Poll(10*time.Second, func() bool { _, err = g.Check(); return err == nil }) {
		t.Fatalf("gate never opened: %v (status %+v)", err, g.Status())
	}
	st := g.Status()
	if !st.IORunning || !st.SQLRunning || !st.LagKnown || !st.Configured {
		t.Fatalf("status %+v, want running threads and a known lag", st)
	}
	if st.Lag >= cfg.MaxLag {
		t.Fatalf("lag %v, want under %v", st.Lag, cfg.MaxLag)
	}
	if time.Since(st.SampledAt) > 5*time.Second {
		t.Fatalf("sample taken at %v, not recent", st.SampledAt)
	}
	t.Logf("lag %v, Seconds_Behind_Master %v", st.Lag, st.SecondsBehind)
	if err := g.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Stop(b.ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestGateHeartbeatMissing: without a heartbeat row the lag is unknown,
// so the gate stays closed although replication runs.
func TestGateHeartbeatMissing(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	g := b.gate(t, monitor.GateConfig{BehindBackoff: 3 * time.Second})
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	backoff, err := g.Check()
	if !errors.Is(err, monitor.ErrReplicaBehind) || backoff != 3*time.Second {
		t.Fatalf("Check = %v, %v; want ErrReplicaBehind after 3s", backoff, err)
	}
	if st := g.Status(); st.LagKnown || !st.SQLRunning {
		t.Fatalf("status %+v, want running threads and unknown lag", st)
	}
}

// TestGateNotAReplica: pointed at a server that replicates from nobody,
// the gate reports a stopped replica and says replication is not
// configured.
func TestGateNotAReplica(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	b.heartbeat(t, 50*time.Millisecond)
	g := &monitor.Gate{Replica: b.primary, Flavor: b.flavor, Schema: b.name, WriterID: b.writerID, Logger: testLogger(t)}
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	backoff, err := g.Check()
	if !errors.Is(err, monitor.ErrReplicaStopped) || backoff != monitor.DefaultStoppedBackoff {
		t.Fatalf("Check = %v, %v; want ErrReplicaStopped after the default backoff", backoff, err)
	}
	if !strings.Contains(err.Error(), "not configured") {
		t.Errorf("error %q does not say replication is not configured", err)
	}
}

// TestReplicationDisrupted groups the tests that stop or delay the shared
// replica; each holds the replica exclusively.
func TestReplicationDisrupted(t *testing.T) {
	t.Parallel()

	// Stopping the SQL thread closes the gate at the next sample with the
	// long back-off; starting it again reopens it.
	t.Run("SQLThreadStopped", func(t *testing.T) {
		b := setup(t, true)
		root := rootReplica(t)
		b.heartbeat(t, 50*time.Millisecond)
		cfg := monitor.GateConfig{StoppedBackoff: 7 * time.Second, SampleInterval: 50 * time.Millisecond}
		g := b.gate(t, cfg)
		if _, err := sampleUntil(t, b, g, isNil); err != nil {
			t.Fatalf("gate never opened: %v", err)
		}

		b.restore(t, root, "START SLAVE SQL_THREAD")
		admin(t, b.ctx, root, "STOP SLAVE SQL_THREAD")
		if err := g.RunOnce(b.ctx); err != nil {
			t.Fatal(err)
		}
		backoff, err := g.Check()
		if !errors.Is(err, monitor.ErrReplicaStopped) || backoff != cfg.StoppedBackoff {
			t.Fatalf("Check = %v, %v; want ErrReplicaStopped after %v", backoff, err, cfg.StoppedBackoff)
		}
		if st := g.Status(); st.SQLRunning || !st.IORunning {
			t.Fatalf("status %+v, want only the SQL thread stopped", st)
		}
		t.Logf("closed: %v", err)

		admin(t, b.ctx, root, "START SLAVE SQL_THREAD")
		if _, err := sampleUntil(t, b, g, isNil); err != nil {
			t.Fatalf("gate did not reopen: %v", err)
		}
	})

	// A real delay (MASTER_DELAY=3) with the heartbeat running makes the
	// read-back lag exceed a 1s limit while both threads run: the case
	// Seconds_Behind_Master gets wrong.
	t.Run("RealLag", func(t *testing.T) {
		b := setup(t, true)
		root := rootReplica(t)
		b.heartbeat(t, 100*time.Millisecond)
		if err := env.WaitReplicas(b.ctx, b.primary); err != nil { // the row exists on the replica
			t.Fatal(err)
		}
		cfg := monitor.GateConfig{MaxLag: time.Second, BehindBackoff: 4 * time.Second, SampleInterval: 100 * time.Millisecond}
		g := b.gate(t, cfg)
		if err := g.Start(b.ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { g.Stop(b.ctx) })

		b.restore(t, root, "STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY=0", "START SLAVE")
		admin(t, b.ctx, root, "STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY=3", "START SLAVE")
		var backoff time.Duration
		var err error
		if !testdb.Poll(15*time.Second, func() bool {
			backoff, err = g.Check()
			return errors.Is(err, monitor.ErrReplicaBehind)
		}) {
			t.Fatalf("gate never reported the lag: %v (status %+v)", err, g.Status())
		}
		st := g.Status()
		if backoff != cfg.BehindBackoff || !st.LagKnown || st.Lag <= cfg.MaxLag || !st.IORunning || !st.SQLRunning {
			t.Fatalf("Check backoff %v, status %+v; want %v, known lag over %v, threads running", backoff, st, cfg.BehindBackoff, cfg.MaxLag)
		}
		t.Logf("closed: %v (Seconds_Behind_Master %v)", err, st.SecondsBehind)

		admin(t, b.ctx, root, "STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY=0", "START SLAVE")
		if !testdb.Poll(15*time.Second, func() bool { _, err = g.Check(); return err == nil }) {
			t.Fatalf("gate did not reopen without the delay: %v", err)
		}
	})

	// With the SQL thread stopped a new primary write is never applied:
	// the wait times out close to its timeout, wrapping ErrGTIDTimeout.
	t.Run("WaitForPrimaryTimeout", func(t *testing.T) {
		b := setup(t, true)
		root := rootReplica(t)
		if _, err := b.primary.ExecContext(b.ctx, "CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		b.restore(t, root, "START SLAVE SQL_THREAD")
		admin(t, b.ctx, root, "STOP SLAVE SQL_THREAD")
		if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO t VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		pos, err := monitor.WaitForPrimary(b.ctx, b.flavor, b.primary, b.replica, 300*time.Millisecond)
		took := time.Since(start)
		if !errors.Is(err, monitor.ErrGTIDTimeout) {
			t.Fatalf("WaitForPrimary = %q, %v; want ErrGTIDTimeout", pos, err)
		}
		if took < 250*time.Millisecond || took > 2*time.Second {
			t.Fatalf("timed out after %v, want about 300ms", took)
		}
		if pos == "" || !strings.Contains(err.Error(), pos) {
			t.Errorf("error %q does not name the position %q", err, pos)
		}
		t.Logf("after %v: %v", took, err)

		admin(t, b.ctx, root, "START SLAVE SQL_THREAD")
		if _, err := monitor.WaitForPrimary(b.ctx, b.flavor, b.primary, b.replica, 10*time.Second); err != nil {
			t.Fatalf("after restart: %v", err)
		}
	})
}

// TestWaitForPrimary: after each primary write, the replica has the row
// when the wait returns, and its applied position contains the one
// returned.
func TestWaitForPrimary(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	if _, err := b.primary.ExecContext(b.ctx, "CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO t VALUES (?)", i); err != nil {
			t.Fatal(err)
		}
		pos, err := monitor.WaitForPrimary(b.ctx, b.flavor, b.primary, b.replica, 10*time.Second)
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		var n int
		if err := b.replica.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM t WHERE id = ?", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Fatalf("write %d: replica lacks the row after waiting for %q", i, pos)
		}
		var have string
		if err := b.replica.QueryRowContext(b.ctx, b.flavor.ReplicaPosQuery()).Scan(&have); err != nil {
			t.Fatal(err)
		}
		if ok, err := flavor.Contains(b.flavor, have, pos); err != nil || !ok {
			t.Fatalf("replica position %q does not contain %q (%v)", have, pos, err)
		}
	}
	if _, err := monitor.WaitForPrimary(b.ctx, b.flavor, b.primary, b.replica, 0); !errors.Is(err, monitor.ErrConfig) {
		t.Fatalf("zero timeout: %v, want ErrConfig", err)
	}
	// A position go-mysql cannot parse never reaches the server.
	if err := monitor.WaitForPosition(b.ctx, b.flavor, b.replica, "0-1000-x", time.Second); err == nil || errors.Is(err, monitor.ErrGTIDTimeout) {
		t.Fatalf("garbage position: %v", err)
	}
}
