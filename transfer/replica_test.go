package transfer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/transfer"
)

// TestReplicaLock: a run's replica session holds the topic's tables. The
// sweep and DropReplicaTables leave them alone; a run whose claim is gone
// (its fence fails) waits, kills nothing and gets ErrFenced; a newer claim's
// run kills the holder's session, after which the holder can no longer drop
// (or export) anything, and the newer run drops the tables itself.
func TestReplicaLock(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.makeResult(t, 5, 1)
	lockParams := func(fence func(context.Context) error) *transfer.ReplicaLockParams {
		return &transfer.ReplicaLockParams{TopicID: 5, Replica: b.replica, Primary: b.primary, LockName: b.lockName(5), Fence: fence}
	}
	ok := func(context.Context) error { return nil }
	old, err := b.sh.LockReplica(b.ctx, lockParams(ok))
	if err != nil {
		t.Fatalf("LockReplica: %v", err)
	}
	defer old.Close()
	tables := func() int { return len(b.tables(t, b.replica, "%_5")) }

	if err := b.sh.DropReplicaTables(b.ctx, b.replica, 5); !errors.Is(err, transfer.ErrResultsBusy) {
		t.Errorf("DropReplicaTables while a run holds the topic: %v, want ErrResultsBusy", err)
	}
	time.Sleep(1100 * time.Millisecond) // CREATE_TIME has whole seconds
	if got, err := b.sh.CleanupReplica(b.ctx, b.replica, time.Second); err != nil || len(got) != 0 {
		t.Errorf("CleanupReplica while a run holds the topic = %v, %v; want nothing dropped, no error", got, err)
	}
	if n := tables(); n != 2 {
		t.Fatalf("%d result tables of topic 5 left on the replica; the run's 2 must stay", n)
	}

	// A stale run: its claim fails the proof, so it kills nobody.
	lost := errors.New("claim lost")
	start := time.Now()
	if _, err := b.sh.LockReplica(b.ctx, lockParams(func(context.Context) error { return lost })); !errors.Is(err, transfer.ErrFenced) || !errors.Is(err, lost) {
		t.Fatalf("LockReplica with a failing fence: %v, want ErrFenced wrapping the fence's error", err)
	}
	t.Logf("a stale run gave up after %v", time.Since(start).Round(time.Millisecond))
	if _, err := old.Conn().ExecContext(b.ctx, "DO 1"); err != nil {
		t.Fatalf("the holder's session after a stale run's attempt: %v", err)
	}

	// A newer claim's run: the holder is killed.
	start = time.Now()
	newer, err := b.sh.LockReplica(b.ctx, lockParams(ok))
	if err != nil {
		t.Fatalf("LockReplica of the newer claim: %v", err)
	}
	defer newer.Close()
	t.Logf("the newer run took the lock after %v", time.Since(start).Round(time.Millisecond))
	if err := old.Drop(b.ctx); err == nil {
		t.Fatal("the killed run's session could still drop the tables")
	}
	if n := tables(); n != 2 {
		t.Fatalf("%d result tables of topic 5 after the killed run's drop; want the 2 it could not drop", n)
	}
	if err := newer.Drop(b.ctx); err != nil {
		t.Fatalf("the newer run's drop: %v", err)
	}
	if n := tables(); n != 0 {
		t.Fatalf("%d result tables of topic 5 after the newer run's drop", n)
	}
	newer.Close()
	if err := newer.Drop(b.ctx); err != nil {
		t.Errorf("Drop after a Drop and Close: %v, want nil", err)
	}
	if free, err := lockFree(b.ctx, b.replica, b.sh.ReplicaLockName(5)); err != nil || !free {
		t.Errorf("replica lock after Close: free %v, %v", free, err)
	}
	if err := b.sh.DropReplicaTables(b.ctx, b.replica, 5); err != nil {
		t.Errorf("DropReplicaTables with the topic free: %v", err)
	}
}
