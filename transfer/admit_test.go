package transfer_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
)

// TestShipAdmission: AdmitFunc runs on the publish session before
// anything is shipped and its release after the swap and Commit, on the
// same session (a named lock taken there is held through Commit); a
// refused admission ships nothing and leaves no staging table.
func TestShipAdmission(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 21
	b.makeResult(t, topic, 1)
	lock := b.params(topic, 1).LockName + ":slot"
	var steps []string
	p := b.params(topic, 1)
	p.AdmitFunc = func(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
		steps = append(steps, "admit")
		var got int
		if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", lock).Scan(&got); err != nil || got != 1 {
			t.Errorf("take the slot lock: %d %v", got, err)
		}
		return func(ctx context.Context) error {
			steps = append(steps, "release")
			var rel int
			return conn.QueryRowContext(ctx, "SELECT RELEASE_LOCK(?)", lock).Scan(&rel)
		}, nil
	}
	commit := p.Commit
	p.Commit = func(ctx context.Context) error {
		if free, err := lockFree(ctx, b.primary, lock); err != nil || free {
			t.Errorf("the admission's lock is not held at Commit (free %v, %v)", free, err)
		}
		steps = append(steps, "commit")
		if commit != nil {
			return commit(ctx)
		}
		return nil
	}
	if _, err := b.sh.Ship(b.ctx, p); err != nil {
		t.Fatalf("Ship: %v", err)
	}
	if want := []string{"admit", "commit", "release"}; len(steps) != 3 || steps[0] != want[0] || steps[1] != want[1] || steps[2] != want[2] {
		t.Fatalf("steps %v, want %v", steps, want)
	}
	if free, err := lockFree(b.ctx, b.primary, lock); err != nil || !free {
		t.Fatalf("slot lock still held after Ship (%v)", err)
	}

	b.makeResult(t, topic, 2)
	errFull := errors.New("no slot")
	p = b.params(topic, 2)
	p.AdmitFunc = func(context.Context, *sql.Conn) (func(context.Context) error, error) { return nil, errFull }
	p.Commit = func(context.Context) error { t.Error("Commit called without admission"); return nil }
	if _, err := b.sh.Ship(b.ctx, p); !errors.Is(err, errFull) {
		t.Fatalf("Ship refused admission = %v, want the AdmitFunc's error", err)
	}
	b.assertNoStaging(t)
}
