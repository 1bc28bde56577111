package monitor_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
)

// TestGateProof: with no heartbeat row at all (an idle process writes
// none), a position the primary reported and the replica has reached
// proves the lag: the gate opens with a lag bounded by the proof's age,
// and ProofFresh says the heartbeat may rest. A position the replica has
// not reached proves nothing, and a proof ages like a heartbeat: once it
// is older than max_lag the gate closes again.
func TestGateProof(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	cfg := monitor.GateConfig{MaxLag: 2 * time.Second, SampleInterval: 50 * time.Millisecond}
	g := b.gate(t, cfg)
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Check(); !errors.Is(err, monitor.ErrReplicaBehind) {
		t.Fatalf("Check without a heartbeat row = %v, want ErrReplicaBehind", err)
	}

	// A position beyond anything the primary wrote: never reached.
	var pos string
	if err := b.primary.QueryRowContext(b.ctx, b.flavor.PrimaryPosQuery()).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	domain, _, _ := strings.Cut(pos, "-")
	g.Prove(domain+"-1000-999999999", time.Now())
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Check(); !errors.Is(err, monitor.ErrReplicaBehind) || g.ProofFresh() {
		t.Fatalf("Check with an unreached position = %v (proof fresh %v), want ErrReplicaBehind", err, g.ProofFresh())
	}

	// The primary's real position, once the replica has it: open. (Read
	// first, then waited for: other tests write on the primary meanwhile.)
	at := time.Now()
	if err := b.primary.QueryRowContext(b.ctx, b.flavor.PrimaryPosQuery()).Scan(&pos); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	g.Prove(pos, at)
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Check(); err != nil {
		t.Fatalf("Check with a reached position = %v, want open", err)
	}
	st := g.Status()
	if !st.LagKnown || st.Lag > time.Since(at) {
		t.Fatalf("status %+v: want a known lag no older than the proof (%v)", st, time.Since(at))
	}
	if !g.ProofFresh() {
		t.Fatal("ProofFresh = false right after a proof")
	}

	// No newer proof: the lag grows with the proof's age and closes the
	// gate past max_lag.
	time.Sleep(cfg.MaxLag + 100*time.Millisecond)
	if err := g.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Check(); !errors.Is(err, monitor.ErrReplicaBehind) || g.ProofFresh() {
		t.Fatalf("Check with a %v old proof = %v (proof fresh %v), want ErrReplicaBehind", time.Since(at), err, g.ProofFresh())
	}
}
