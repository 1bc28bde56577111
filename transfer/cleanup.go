package transfer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/cleanup"
	"github.com/nonqueue/nonqueue/internal/ident"
)

const primaryClockSQL = "SELECT /* nonqueue */ UNIX_TIMESTAMP(NOW(6))"

// DropReplicaTables drops the topic's result tables on the replica (DROP
// TABLE IF EXISTS, binary logging off so nothing reaches the binary log or a
// GTID of the replica's own), under the topic's replica lock taken without
// waiting: when a run holds it (see LockReplica), the tables are that run's
// and nothing is dropped; the error then wraps ErrResultsBusy. Missing
// tables are not an error. A run drops its own tables through its
// ReplicaSession instead.
func (s *Shipper) DropReplicaTables(ctx context.Context, replica *sql.DB, topicID int64) error {
	if topicID <= 0 {
		return fmt.Errorf("%w: topic id %d is not positive", ErrParams, topicID)
	}
	sess, err := openSession(ctx, replica, "replica", s.cfg.NoBinlogPools)
	if err != nil {
		return fmt.Errorf("drop result tables of topic %d: %w", topicID, err)
	}
	defer sess.close(ctx)
	lock := s.ReplicaLockName(topicID)
	var got sql.NullInt64
	if err := sess.conn.QueryRowContext(ctx, getLockSQL, lock, 0).Scan(&got); err != nil {
		sess.bad = true // the lock may have been granted; closing the session frees it
		return fmt.Errorf("drop result tables of topic %d: take lock %q on the replica: %w", topicID, lock, err)
	}
	if !got.Valid || got.Int64 != 1 {
		return fmt.Errorf("drop result tables of topic %d: %w: a run holds lock %q", topicID, ErrResultsBusy, lock)
	}
	defer func() {
		cctx, cancel := cleanup.Context(ctx)
		defer cancel()
		if _, err := sess.conn.ExecContext(cctx, releaseDoSQL, lock); err != nil {
			sess.bad = true
		}
	}()
	if _, err := sess.conn.ExecContext(ctx, fmt.Sprintf(dropSQL, s.qualifiedList(s.cfg.TableNames(topicID)))); err != nil {
		return fmt.Errorf("drop result tables of topic %d on the replica: %w", topicID, err)
	}
	return nil
}

// CleanupPrimary removes what crashed runs left in the result schema on the
// primary: staging tables and files (names starting nqtmp_ or nqold_) whose
// newest file is older than olderThan by the primary host's clock. It drops
// them as tables (binary logging off) and then removes any file left over
// SFTP. olderThan must exceed the longest Ship (a slow run's staging tables
// would be removed under it, failing that run but never touching a live
// table); an hour is a safe choice. Call it at start-up.
func (s *Shipper) CleanupPrimary(ctx context.Context, primary *sql.DB, olderThan time.Duration) error {
	if olderThan < 0 {
		return fmt.Errorf("%w: olderThan %v is negative", ErrParams, olderThan)
	}
	l, err := s.link(ctx)
	if err != nil {
		return fmt.Errorf("clean up staging tables: %w", err)
	}
	dir := path.Join(s.cfg.PrimaryDatadir, s.cfg.Schema)
	var entries []os.FileInfo
	// A listing is many requests with no progress of its own: a minute
	// at least (the keepalive catches a dead server sooner).
	err = l.step("list "+dir, max(s.cfg.SSH.StallTimeout, time.Minute), func() (err error) { entries, err = l.sftp.ReadDir(dir); return err })
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil // schema not created yet: nothing shipped
		}
		return fmt.Errorf("clean up staging tables: list %s over sftp: %w", dir, err)
	}
	newest := map[string]time.Time{}
	files := map[string][]string{}
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !(strings.HasPrefix(n, tmpPrefix) || strings.HasPrefix(n, oldPrefix)) {
			continue
		}
		table, _, _ := strings.Cut(n, ".")
		if ident.Validate(table) != nil {
			continue
		}
		if e.ModTime().After(newest[table]) {
			newest[table] = e.ModTime()
		}
		files[table] = append(files[table], path.Join(dir, n))
	}
	if len(newest) == 0 {
		return nil
	}
	sess, err := openSession(ctx, primary, "primary", s.cfg.NoBinlogPools)
	if err != nil {
		return fmt.Errorf("clean up staging tables: %w", err)
	}
	defer sess.close(ctx)
	// File times are the primary host's clock, so compare with that clock.
	var now float64
	if err := sess.conn.QueryRowContext(ctx, primaryClockSQL).Scan(&now); err != nil {
		return fmt.Errorf("clean up staging tables: read the primary's clock: %w", err)
	}
	sec, frac := math.Modf(now)
	cutoff := time.Unix(int64(sec), int64(frac*1e9)).Add(-olderThan)
	var stale []string
	for table, t := range newest {
		if t.Before(cutoff) {
			stale = append(stale, table)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	sort.Strings(stale)
	// One bounded try: the next sweep tries again.
	if err := s.dropBounded(ctx, sess.conn, stale, 1); err != nil {
		return fmt.Errorf("clean up staging tables: drop %d on the primary: %w", len(stale), err)
	}
	var errs []error
	for _, table := range stale {
		for _, f := range files[table] {
			if err := l.step("remove "+f, s.cfg.SSH.StallTimeout, func() error { return l.sftp.Remove(f) }); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s over sftp: %w", f, err))
			}
		}
	}
	s.logger.InfoContext(ctx, "removed staging tables of earlier runs", "count", len(stale), "tables", stale)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean up staging tables: %w", err)
	}
	return nil
}

// replicaResultsSQL lists the result schema's tables on the replica that
// are older than a number of seconds by the replica's clock. The result
// schema on a replica holds only the source data and the tables of runs in
// progress (published tables live on the primary), so the list is short.
const replicaResultsSQL = "SELECT /* nonqueue */ TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' AND CREATE_TIME <= NOW() - INTERVAL ? SECOND"

// CleanupReplica drops result tables that runs left on the replica: tables
// whose names match a result table template (Config.Tables) and that were
// created at least olderThan ago by the replica's clock. A run drops its
// tables once it has published or failed; tables stay behind when the
// replica (or the worker) dies between the procedure and that drop, and the
// topic may not run again there for a long time. Each topic's tables are
// dropped under its replica lock (DropReplicaTables), which every run holds
// from its procedure call to its drop: a topic whose lock is held is
// skipped, so a run in progress never loses its tables, whatever their age.
// olderThan (by the replica's clock) keeps the listing to tables no run
// could still be about to export anyway. It returns the topics whose tables
// it dropped.
func (s *Shipper) CleanupReplica(ctx context.Context, replica *sql.DB, olderThan time.Duration) ([]int64, error) {
	if olderThan < 0 {
		return nil, fmt.Errorf("%w: olderThan %v is negative", ErrParams, olderThan)
	}
	rows, err := replica.QueryContext(ctx, replicaResultsSQL, s.cfg.Schema, int64(math.Ceil(olderThan.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("clean up result tables on the replica: list them: %w", err)
	}
	defer rows.Close()
	var topics []int64
	seen := map[int64]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("clean up result tables on the replica: %w", err)
		}
		if id, ok := s.cfg.topicOf(name); ok && !seen[id] {
			seen[id] = true
			topics = append(topics, id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clean up result tables on the replica: %w", err)
	}
	rows.Close() // its connection back to the pool before the drops take one
	sort.Slice(topics, func(i, j int) bool { return topics[i] < topics[j] })
	var errs []error
	var dropped []int64
	for _, id := range topics {
		if err := s.DropReplicaTables(ctx, replica, id); err != nil {
			if !errors.Is(err, ErrResultsBusy) {
				errs = append(errs, err)
			}
			continue
		}
		dropped = append(dropped, id)
	}
	if len(dropped) > 0 {
		s.logger.InfoContext(ctx, "dropped result tables runs left on the replica", "topics", dropped)
	}
	return dropped, errors.Join(errs...)
}
