package transfer

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// Publish, the last phase of Ship: under the topic's lock, fence, swap
// the staged tables in with one RENAME TABLE, commit, and drop what was
// swapped out; bounded by Config.LockWait and Config.SwapTries.

// swapTimeout bounds the critical section after a successful fence (swap,
// Commit). It runs detached from the caller's
// context: once the claim is confirmed under the lock, a cancellation must
// not leave it unknown whether the tables went live.
const swapTimeout = 30 * time.Second

// publish runs steps 3 and 4 on the primary. It reports whether the swap
// happened, and the swapped-out tables the caller drops once the lock is
// released; after the swap, err can only be a Commit failure. A swap whose
// RENAME waits Config.LockWait for its metadata locks in vain (a long query
// or an open transaction holds a live table) is tried again after a pause,
// Config.SwapTries times in all, and then fails with ErrTableBusy.
func (s *Shipper) publish(ctx context.Context, prim *session, p *ShipParams, tables []*stagedTable, dropped <-chan struct{}, log *slog.Logger) (published bool, old []string, err error) {
	tmp := make([]string, len(tables))
	for i, t := range tables {
		tmp[i] = t.tmp
	}
	probes, err := s.verification().primary(ctx, prim, tables, tmp)
	if err != nil {
		return false, nil, err
	}
	start := time.Now()
	for try := 1; ; try++ {
		var busy bool
		published, old, busy, err = s.swap(ctx, prim, p, tables, dropped, probes, log)
		probes = nil // the tables opened: later tries only lock
		if !busy {
			return published, old, err
		}
		if try >= s.cfg.SwapTries {
			return false, nil, fmt.Errorf("%w: %s: a long query, an open transaction or a backup on the primary held them through %d tries of the swap over %v, each waiting %v for their metadata locks; nothing published, readers kept the old tables: %w",
				ErrTableBusy, s.displayList(tables), try, time.Since(start).Round(100*time.Millisecond), s.cfg.LockWait, err)
		}
		pause := s.cfg.swapPause(try)
		log.InfoContext(ctx, "result table busy: a query holds it; the swap gave way and tries again",
			"tables", s.displayList(tables), "try", try, "tries", s.cfg.SwapTries, "retry_in", pause)
		if err := sleepCtx(ctx, pause); err != nil {
			return false, nil, fmt.Errorf("wait to retry the swap of a busy result table: %w", err)
		}
	}
}

// swap makes one try of the fenced swap: GET_LOCK, Fence, one RENAME TABLE
// that waits at most Config.LockWait for its metadata locks, the replica's
// drop, Commit, RELEASE_LOCK. busy reports a RENAME that gave up waiting:
// then nothing was renamed, the readers queued behind it go on with the old
// tables, and the lock is released before the caller's pause, so the
// reaper and an operator's release are kept out for one try at most, never
// for the whole series (the fence is taken again with the lock next time).
//
// probes (from the verification, first try only) are scalar subqueries
// sent with the GET_LOCK, in its round trip: one that fails (a staged
// table the server cannot open) fails the statement, ErrChecksumMismatch.
//
// After a published swap with a Dropper (the worker's case), the
// RELEASE_LOCK is left to the session's close, which sends it in the
// background: the topic is finished already, and the release need not
// hold up the run (docs/design.md, "Publish").
func (s *Shipper) swap(ctx context.Context, prim *session, p *ShipParams, tables []*stagedTable, dropped <-chan struct{}, probes []string, log *slog.Logger) (published bool, old []string, busy bool, err error) {
	timeout := cmp.Or(p.LockTimeout, DefaultLockTimeout)
	got := []any{new(sql.NullInt64)}
	for range probes {
		got = append(got, new(sql.NullInt64))
	}
	stmt := getLockSQL
	if len(probes) > 0 {
		stmt += ", " + strings.Join(probes, ", ")
	}
	fenceQuery := ""
	if s.cfg.MultiStatementPools && p.FenceQuery != "" {
		fenceQuery = p.FenceQuery
	}
	var fenceRow bool
	var fenceErr error
	if err := s.lockAndFence(ctx, prim.conn, stmt+fenceSep(fenceQuery), fenceQuery != "", p.LockName, timeout, got, &fenceRow, &fenceErr); err != nil {
		prim.bad = true // the lock may have been granted; closing the session frees it
		var me *mysql.MySQLError
		if len(probes) > 0 && errors.As(err, &me) {
			return false, nil, false, fmt.Errorf("%w: the primary cannot open the shipped tables: %w", ErrChecksumMismatch, err)
		}
		return false, nil, false, fmt.Errorf("take publish lock %q on the primary: %w", p.LockName, err)
	}
	if lock := got[0].(*sql.NullInt64); !lock.Valid || lock.Int64 != 1 {
		return false, nil, false, fmt.Errorf("%w: %q is held by another session (the reaper or another publisher) after %v", ErrLockTimeout, p.LockName, timeout)
	}
	defer func() {
		if published && err == nil && p.Dropper != nil {
			prim.release = p.LockName
			return
		}
		cctx, cancel := cleanup.Context(ctx)
		defer cancel()
		var rel sql.NullInt64
		if rerr := prim.conn.QueryRowContext(cctx, releaseLockSQL, p.LockName).Scan(&rel); rerr != nil || rel.Int64 != 1 {
			prim.bad = true
			log.WarnContext(cctx, "release publish lock; dropping the session instead", "lock", p.LockName, "err", rerr)
		}
	}()

	switch {
	case fenceQuery == "":
		err = p.Fence(ctx)
	case fenceErr != nil:
		err = fmt.Errorf("fence: %w", fenceErr)
	case !fenceRow:
		err = fmt.Errorf("fence topic %d: the claim is no longer ours", p.TopicID)
	}
	if err != nil {
		return false, nil, false, fmt.Errorf("%w: topic %d, claim token %d: %w", ErrFenced, p.TopicID, p.Token, err)
	}

	// The server gives up each RENAME after LockWait (twice for a first
	// publish), well before this context ends: a client that gave up
	// first would leave the statement waiting, and stalling readers, in
	// the server, and maybe renaming after all.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), swapTimeout+2*s.cfg.LockWait)
	defer cancel()
	live := make([]string, len(tables))
	for i, t := range tables {
		live[i] = t.live
	}
	// Almost every publish replaces tables that are live already (a
	// recompute): swap all of them in one statement and look up which
	// exist only when one does not (the topic's first publish). RENAME
	// TABLE is atomic: when it fails, nothing was renamed.
	pairs, old := s.swapPairs(tables, live)
	err = s.execBounded(sctx, prim.conn, fmt.Sprintf(renameSQL, strings.Join(pairs, ", ")))
	if isNoSuchTable(err) {
		var existing []string
		if existing, err = s.existingTables(sctx, prim.conn, live); err != nil {
			return false, nil, false, err
		}
		pairs, old = s.swapPairs(tables, existing)
		err = s.execBounded(sctx, prim.conn, fmt.Sprintf(renameSQL, strings.Join(pairs, ", ")))
	}
	if isLockWaitTimeout(err) {
		return false, nil, true, fmt.Errorf("swap result tables in on the primary: %w", err)
	}
	if err != nil {
		return false, nil, false, fmt.Errorf("swap result tables in on the primary: %w", err)
	}
	// The replica's drop, started before the checksum and bounded by its
	// own cleanup timeout, must be over before Commit can make the topic
	// claimable again: a run of the same topic on this replica,
	// re-requested meanwhile, would otherwise have its fresh tables
	// dropped under it. Waiting here, after the swap, keeps the drop in
	// the shadow of the primary's checksum, lock and RENAME.
	<-dropped
	if p.Commit != nil {
		if err := p.Commit(sctx); err != nil {
			return true, old, false, fmt.Errorf("%w: %w", ErrCommit, err)
		}
	}
	return true, old, false, nil
}

// fenceSep appends the fence query to the GET_LOCK statement as a second
// statement of the same request, if there is one.
func fenceSep(fenceQuery string) string {
	if fenceQuery == "" {
		return ""
	}
	return ";\n" + fenceQuery
}

// lockAndFence sends the GET_LOCK statement (stmt, with the probes, and
// with withFence the fence query as its second statement) and scans the
// lock's row into got. The fence's answer (a row or not) goes to fenceRow;
// a failure of the fence statement alone to fenceErr: the lock may be held
// then, and the caller releases it as after any failed fence. A failure of
// the first statement (the server stops there) is the returned error.
func (s *Shipper) lockAndFence(ctx context.Context, conn *sql.Conn, stmt string, withFence bool, name string, timeout time.Duration,
	got []any, fenceRow *bool, fenceErr *error) error {
	if !withFence {
		return conn.QueryRowContext(ctx, stmt, name, timeout.Seconds()).Scan(got...)
	}
	rows, err := conn.QueryContext(ctx, stmt, name, timeout.Seconds())
	if err != nil {
		return err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(got...); err != nil {
		return err
	}
	if rows.NextResultSet() {
		*fenceRow = rows.Next()
	}
	if err := rows.Err(); err != nil {
		*fenceErr = err
		return nil
	}
	if err := rows.Close(); err != nil {
		*fenceErr = err
	}
	return nil
}

// execBounded runs a DDL statement on the primary that waits at most
// Config.LockWait for its metadata locks (SET STATEMENT lock_wait_timeout
// … FOR: nothing is left in the session for the pool). A RENAME or DROP
// queued for a table's metadata lock makes every later query of that table
// queue behind it; the bound is what keeps a long reader from stalling all
// the others.
func (s *Shipper) execBounded(ctx context.Context, conn *sql.Conn, stmt string) error {
	_, err := conn.ExecContext(ctx, fmt.Sprintf(boundedSQL, int64(s.cfg.LockWait/time.Second), stmt))
	return err
}

// dropBounded drops names on the primary, each try waiting at most
// Config.LockWait for the metadata locks, again after the swap's pauses, at
// most tries times and while ctx leaves time for a whole try. Nothing
// queries a swapped-out or staging table, but a backup (FLUSH TABLES WITH
// READ LOCK, BACKUP STAGE) or a LOCK TABLES of the schema can hold it;
// unbounded, the DROP would hold up the dropper, and would go on waiting in
// the server after its client gave up.
func (s *Shipper) dropBounded(ctx context.Context, conn *sql.Conn, names []string, tries int) error {
	stmt := fmt.Sprintf(dropSQL, s.qualifiedList(names))
	for try := 1; ; try++ {
		err := s.execBounded(ctx, conn, stmt)
		if err == nil || !isLockWaitTimeout(err) || try >= tries {
			return err
		}
		pause := s.cfg.swapPause(try)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause+s.cfg.LockWait {
			return err
		}
		if sleepCtx(ctx, pause) != nil {
			return err
		}
	}
}

// dropSwappedOut drops tables a publish swapped out, bounded as
// dropBounded (ctx, a cleanup context, allows about three tries). A failure
// is logged, not returned: CleanupPrimary drops what is left.
func (s *Shipper) dropSwappedOut(ctx context.Context, conn *sql.Conn, names []string, log *slog.Logger) error {
	err := s.dropBounded(ctx, conn, names, s.cfg.SwapTries)
	if err != nil {
		log.WarnContext(ctx, "drop swapped-out tables on the primary; CleanupPrimary will", "tables", names, "err", err)
	}
	return err
}

// swapPairs is the RENAME TABLE list that moves every table of existing
// aside (the swapped-out names it also returns) and every staging table in.
func (s *Shipper) swapPairs(tables []*stagedTable, existing []string) (pairs, old []string) {
	for _, t := range tables {
		if slices.Contains(existing, t.live) {
			pairs = append(pairs, s.qualified(t.live)+" TO "+s.qualified(t.old))
			old = append(old, t.old)
		}
		pairs = append(pairs, s.qualified(t.tmp)+" TO "+s.qualified(t.live))
	}
	return pairs, old
}

// isLockWaitTimeout reports MySQL error 1205 (ER_LOCK_WAIT_TIMEOUT): for
// a RENAME or DROP of MyISAM tables, lock_wait_timeout ran out waiting for
// a metadata lock, and the statement did nothing.
func isLockWaitTimeout(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1205
}

// existingTables returns which of names exist in the result schema on the
// server of conn, in the order of names (exact case).
func (s *Shipper) existingTables(ctx context.Context, conn *sql.Conn, names []string) ([]string, error) {
	var args []any
	for _, n := range names {
		args = append(args, s.cfg.Schema, n)
	}
	rows, err := conn.QueryContext(ctx, unionAll(existingTablesSQL, len(names)), args...)
	if err != nil {
		return nil, fmt.Errorf("look up tables on the primary: %w", err)
	}
	defer rows.Close()
	found := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("look up tables on the primary: %w", err)
		}
		found[n] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up tables on the primary: %w", err)
	}
	var out []string
	for _, n := range names {
		if found[n] {
			out = append(out, n)
		}
	}
	return out, nil
}
