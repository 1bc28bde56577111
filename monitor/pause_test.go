package monitor_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// TestPausesOnThePrimary: pauses are rows on the primary: added, listed
// while in force, ended by resume (exact scope, by id, all), and a timed
// one ends by itself; the pause watch of a replica sees only what covers
// it, applies a priority bound, and lifts on resume.
func TestPausesOnThePrimary(t *testing.T) {
	b := setup(t, false)
	ps := &monitor.Pauses{Primary: b.primary, Schema: b.name}
	prio := int64(5)
	all, err := ps.Add(b.ctx, &monitor.PauseParams{By: "ops@h", Reason: "incident"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ps.Add(b.ctx, &monitor.PauseParams{By: "ops@h", Scope: monitor.PauseScope{ReplicaServerID: 99}})
	if err != nil {
		t.Fatal(err)
	}
	low, err := ps.Add(b.ctx, &monitor.PauseParams{By: "ops@h", Scope: monitor.PauseScope{ReplicaServerID: 7, BelowPriority: &prio}, For: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !all.ExpiresAt.IsZero() || low.ExpiresAt.IsZero() || low.Left <= 0 || low.Left > 2*time.Second {
		t.Fatalf("expiry: %+v %+v", all, low)
	}
	active, err := ps.Active(b.ctx)
	if err != nil || len(active) != 3 {
		t.Fatalf("active: %v %v", active, err)
	}

	w := &monitor.PauseWatch{Pauses: ps, ServerID: 7, Config: monitor.GateConfig{SampleInterval: 50 * time.Millisecond}}
	if _, _, err := w.Check(0); !errors.Is(err, monitor.ErrPauseUnknown) {
		t.Fatalf("before the first read: %v, want closed", err)
	}
	if err := w.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Check(0); !errors.Is(err, monitor.ErrPaused) {
		t.Fatalf("pause of everything: %v", err)
	}
	if in, fresh := w.InForce(); len(in) != 2 || !fresh {
		t.Fatalf("in force for server 7: %v %v (want the pause of all and its own, not replica 99's)", in, fresh)
	}
	// Resume by exact scope: the pause of everything only.
	ended, err := ps.Resume(b.ctx, &monitor.ResumeParams{By: "ops@h"})
	if err != nil || len(ended) != 1 || ended[0].ID != all.ID {
		t.Fatalf("resume everything: %v %v", ended, err)
	}
	if err := w.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if m, _, err := w.Check(1); err != nil || m != 5 {
		t.Fatalf("below-priority pause: min %d, %v; want 5", m, err)
	}
	if !w.Covers(4) || w.Covers(5) {
		t.Fatal("Covers must hold for priority 4 and not for 5")
	}
	// The timed pause ends by itself, between reads too (local clock from
	// the primary's time left).
	testdb.WaitFor(t, 10*time.Second, "the timed pause to end", func() bool {
		m, _, err := w.Check(1)
		return err == nil && m == 1
	})
	if err := w.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if m, _, err := w.Check(1); err != nil || m != 1 {
		t.Fatalf("after expiry: %d %v", m, err)
	}
	// By id, then nothing left.
	if ended, err := ps.Resume(b.ctx, &monitor.ResumeParams{ID: other.ID, By: "x@y"}); err != nil || len(ended) != 1 {
		t.Fatalf("resume by id: %v %v", ended, err)
	}
	if active, err := ps.Active(b.ctx); err != nil || len(active) != 0 {
		t.Fatalf("left in force: %v %v", active, err)
	}
	var resumedBy string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT resumed_by FROM pause WHERE id = ?", other.ID).Scan(&resumedBy); err != nil || resumedBy != "x@y" {
		t.Fatalf("resumed_by %q %v", resumedBy, err)
	}
}

// TestPauseWatchFailsClosed: a watch whose reads fail keeps the last
// known state until the stale bound, then claims nothing; a missing pause
// table means no pause.
func TestPauseWatchFailsClosed(t *testing.T) {
	b := setup(t, false)
	ps := &monitor.Pauses{Primary: b.primary, Schema: b.name}
	w := &monitor.PauseWatch{Pauses: ps, ServerID: 7, Config: monitor.GateConfig{SampleInterval: 50 * time.Millisecond, MaxLag: 200 * time.Millisecond}}
	if err := w.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Check(0); err != nil {
		t.Fatalf("no pause: %v", err)
	}
	if _, err := b.primary.ExecContext(b.ctx, "RENAME TABLE pause TO pause_gone"); err != nil {
		t.Fatal(err)
	}
	// A missing table is "nobody paused", not an error.
	if err := w.RunOnce(b.ctx); err != nil {
		t.Fatalf("missing table: %v", err)
	}
	if _, _, err := w.Check(0); err != nil {
		t.Fatalf("missing table closed the watch: %v", err)
	}
	// An unreadable primary: the last state holds, then fails closed.
	bad := &monitor.PauseWatch{Pauses: &monitor.Pauses{Primary: b.primary, Schema: b.name}, ServerID: 7, Config: w.Config}
	if _, err := b.primary.ExecContext(b.ctx, "RENAME TABLE pause_gone TO pause"); err != nil {
		t.Fatal(err)
	}
	if err := bad.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	broken := testdb.Open(t, env.Primary(b.name))
	broken.Close() // every read on it fails
	bad.Pauses.Primary = broken
	if err := bad.RunOnce(b.ctx); err == nil {
		t.Fatal("a read on a closed pool succeeded")
	}
	if _, _, err := bad.Check(0); err != nil {
		t.Fatalf("one failed read must keep the last known state: %v", err)
	}
	testdb.WaitFor(t, 5*time.Second, "the watch to fail closed", func() bool {
		_, _, err := bad.Check(0)
		return errors.Is(err, monitor.ErrPauseUnknown)
	})
	if _, fresh := bad.InForce(); fresh {
		t.Fatal("a stale read reported fresh")
	}
}

// TestPauseWatchCollects: with its collector running, a watch sees a new
// pause within about one sample interval and a resume as fast, while
// callers Check concurrently; Stop ends the collector.
func TestPauseWatchCollects(t *testing.T) {
	b := setup(t, false)
	ps := &monitor.Pauses{Primary: b.primary, Schema: b.name}
	const interval = 100 * time.Millisecond
	w := &monitor.PauseWatch{Pauses: ps, ServerID: 7, Config: monitor.GateConfig{SampleInterval: interval}}
	if err := w.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Stop(b.ctx) })
	if _, _, err := w.Check(0); err != nil {
		t.Fatalf("after Start (first read synchronous): %v", err)
	}
	// Concurrent readers, as instances are.
	done := make(chan struct{})
	defer close(done)
	for range 4 {
		go func() {
			for i := 0; i < 1_000_000; i++ {
				select {
				case <-done:
					return
				default:
				}
				w.Check(0)
				w.InForce()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	start := time.Now()
	p, err := ps.Add(b.ctx, &monitor.PauseParams{By: "ops@h"})
	if err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 5*time.Second, "the watch to see the pause", func() bool {
		_, _, err := w.Check(0)
		return errors.Is(err, monitor.ErrPaused)
	})
	seen := time.Since(start)
	if _, err := ps.Resume(b.ctx, &monitor.ResumeParams{ID: p.ID, By: "ops@h"}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	testdb.WaitFor(t, 5*time.Second, "the watch to see the resume", func() bool {
		_, _, err := w.Check(0)
		return err == nil
	})
	t.Logf("pause seen after %v, resume after %v (sample interval %v)", seen.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), interval)
	// One interval plus the read, with room for a loaded machine.
	if seen > 10*interval {
		t.Errorf("the pause took %v to be seen (sample interval %v)", seen, interval)
	}
	if err := w.Stop(b.ctx); err != nil {
		t.Fatal(err)
	}
}
