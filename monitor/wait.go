package monitor

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
)

// WaitForPrimary reads the primary's GTID position and blocks on the
// replica until the replica has applied it (MASTER_GTID_WAIT on MariaDB,
// WAIT_FOR_EXECUTED_GTID_SET on MySQL 8), so whatever runs on the replica
// next sees every write committed on the primary before the call. It
// returns the position waited for.
//
// When the replica does not get there within timeout the error wraps
// ErrGTIDTimeout and names both positions; the caller should release its
// claim so a fresher replica takes the topic. timeout must be positive (a
// server-side wait without a timeout could block forever). The wait runs on
// a dedicated connection: if ctx ends first the driver closes that
// connection instead of returning it to the pool, and the error wraps
// ctx.Err().
func WaitForPrimary(ctx context.Context, f flavor.Flavor, primary, replica *sql.DB, timeout time.Duration) (string, error) {
	if timeout <= 0 {
		return "", &ConfigError{Field: "gtid_wait_timeout", Err: fmt.Errorf("%v must be positive", timeout)}
	}
	var pos string
	if err := primary.QueryRowContext(ctx, f.PrimaryPosQuery()).Scan(&pos); err != nil {
		return "", fmt.Errorf("read the primary's GTID position: %w", err)
	}
	return pos, WaitForPosition(ctx, f, replica, pos, timeout)
}

// WaitForPosition is WaitForPrimary for a position the caller already
// read on the primary (the claim reads it in the same round trip as the
// claimed row). Errors as WaitForPrimary's.
func WaitForPosition(ctx context.Context, f flavor.Flavor, replica *sql.DB, pos string, timeout time.Duration) error {
	if timeout <= 0 {
		return &ConfigError{Field: "gtid_wait_timeout", Err: fmt.Errorf("%v must be positive", timeout)}
	}
	// A position the server would reject is a bug upstream; say so
	// before the server answers with a bare syntax error.
	if _, err := flavor.Contains(f, pos, pos); err != nil {
		return fmt.Errorf("wait for primary position: %w", err)
	}
	conn, err := replica.Conn(ctx)
	if err != nil {
		return fmt.Errorf("wait for primary position %q: connect to the replica: %w", pos, err)
	}
	defer conn.Close()
	var code sql.NullInt64
	if err := conn.QueryRowContext(ctx, f.WaitQuery(), pos, timeout.Seconds()).Scan(&code); err != nil {
		return fmt.Errorf("wait for primary position %q on the replica: %w", pos, err)
	}
	if !code.Valid {
		return fmt.Errorf("wait for primary position %q on the replica: wait returned NULL (interrupted?)", pos)
	}
	reached, err := f.WaitReached(code.Int64)
	if err != nil {
		return fmt.Errorf("wait for primary position %q on the replica: %w", pos, err)
	}
	if reached {
		return nil
	}
	// Say where the replica is, best effort: it helps tell a stopped SQL
	// thread from a slow one.
	have := "unknown"
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	var p sql.NullString
	if err := conn.QueryRowContext(rctx, f.ReplicaPosQuery()).Scan(&p); err == nil {
		have = fmt.Sprintf("%q", p.String)
		// go-mysql compares the sets: per domain on MariaDB.
		if reached, err := flavor.Contains(f, p.String, pos); err == nil && reached {
			have += " (reached just after the wait ended)"
		}
	}
	return fmt.Errorf("replica at %s did not reach primary position %q within %v: %w", have, pos, timeout, ErrGTIDTimeout)
}
