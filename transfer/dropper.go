package transfer

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/batch"
	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// Dropper drops the tables publishes swapped out, on the primary, in the
// background and many per statement. After the swap an old table carries
// its claim's token in its name and nothing else reaches it, so the drop
// need not hold up the instance; and one DROP of a batch costs the server
// less than one per publish (part of a DROP's cost, the syncs of the
// server's DDL log, is per statement).
//
// A DROP that fails (a backup's lock, LOCK TABLES, the primary restarting,
// a network reset) is tried again in the background, after pauses from 1 s
// doubling to 1 min, for 15 minutes; a failed run's staging tables whose
// DROP failed come here too. The retries run apart from the batches, so
// new drops never wait behind them. Tables left after that, beyond the
// 10,000 that may wait, or when the process stops are CleanupPrimary's.
type Dropper struct {
	s  *Shipper
	db *sql.DB
	b  *batch.Batcher[string]

	wake chan struct{}      // tables were queued: look at the schedule again
	stop context.CancelFunc // ends the retry loop
	done chan struct{}      // closed when the retry loop has returned

	mu      sync.Mutex
	retries *dropRetries
	noted   int  // retries.pending() as last added to the Shipper's pendingDrops
	closed  bool // Close took the retries: later failures are CleanupPrimary's
}

// PendingDrops is how many tables on the primary wait for a retry of
// their DROP in the Shipper's droppers: a gauge for monitoring (a number
// that stays up means the primary keeps refusing drops: a backup, a lock,
// a server down). Safe for concurrent use.
func (s *Shipper) PendingDrops() int { return int(s.pendingDrops.Load()) }

// note brings the Shipper's count of pending drops up to date; d.mu held.
func (d *Dropper) note() {
	n := d.retries.pending()
	d.s.pendingDrops.Add(int64(n - d.noted))
	d.noted = n
}

// Dropper limits: how long a table may wait for company and how many one
// DROP names.
const (
	dropDelay    = 200 * time.Millisecond
	maxDropBatch = 64
)

// NewDropper starts a dropper for the primary pool (the publishing pool, the
// one given to Ship). Hand it to Ship through ShipParams.Dropper, and Close
// it after the last Ship.
func (s *Shipper) NewDropper(primary *sql.DB) *Dropper {
	ctx, stop := context.WithCancel(context.Background())
	d := &Dropper{s: s, db: primary, wake: make(chan struct{}, 1), stop: stop, done: make(chan struct{}), retries: newDropRetries()}
	d.b = batch.Start(maxDropBatch, dropDelay, d.drop)
	go d.retryLoop(ctx)
	return d
}

// Close drops what is queued, tries every table waiting for a retry once
// more, and stops; ctx bounds the wait. What still fails is logged and left
// to CleanupPrimary. It is idempotent; tables handed over after Close are
// dropped at once, and left to CleanupPrimary if that fails.
func (d *Dropper) Close(ctx context.Context) error {
	d.stop() // what falls due meanwhile gets the last try below
	if err := d.b.Close(ctx); err != nil {
		return fmt.Errorf("drop swapped-out tables (those waiting for a retry are left to CleanupPrimary): %w", err)
	}
	select {
	case <-d.done:
	case <-ctx.Done():
		return fmt.Errorf("drop swapped-out tables: wait for the retries to stop: %w", ctx.Err())
	}
	d.mu.Lock()
	d.closed = true
	groups := d.retries.all()
	d.note()
	d.mu.Unlock()
	if len(groups) == 0 {
		return nil
	}
	log := d.s.logger
	n, err := d.dropEach(ctx, groups)
	var left []string
	for _, g := range groups[n:] {
		left = append(left, g.names...)
	}
	if err != nil {
		log.WarnContext(ctx, "drop tables on the primary at stop; CleanupPrimary will", "count", len(left), "tables", sample(left), "err", err)
		return nil
	}
	dropped := 0
	for _, g := range groups {
		dropped += len(g.names)
	}
	log.InfoContext(ctx, "dropped tables on the primary at stop, after a failed drop", "count", dropped)
	return nil
}

// drop is the batches' flush: one bounded try, then the retries.
func (d *Dropper) drop(names []string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanup.Timeout)
	defer cancel()
	if _, err := d.dropEach(ctx, []*dropGroup{{names: names}}); err != nil {
		d.retry(ctx, names, err)
		return
	}
	d.s.logger.LogAttrs(ctx, slog.LevelDebug, "dropped swapped-out tables", slog.Int("tables", len(names)))
}

// retry queues names, whose DROP failed with err, for the retries.
func (d *Dropper) retry(ctx context.Context, names []string, err error) {
	log := d.s.logger
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		log.WarnContext(ctx, "drop tables on the primary after the dropper stopped; CleanupPrimary will", "tables", names, "err", err)
		return
	}
	over := d.retries.add(names, time.Now())
	pending := d.retries.pending()
	d.note()
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
	log.InfoContext(ctx, "drop tables on the primary failed; trying again in the background",
		"tables", names, "err", err, "retry_in", dropRetryFirst, "pending", pending)
	if len(over) > 0 {
		log.WarnContext(ctx, "too many tables wait for a retry of their drop; CleanupPrimary will drop these",
			"count", len(over), "tables", sample(over), "max_pending", maxDropPending)
	}
}

// retryLoop tries the failed drops again when they are due, until ctx ends.
func (d *Dropper) retryLoop(ctx context.Context) {
	defer close(d.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		d.mu.Lock()
		at, ok := d.retries.next()
		d.mu.Unlock()
		var due <-chan time.Time
		if ok {
			timer.Reset(time.Until(at))
			due = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
			continue
		case <-due:
		}
		d.retryDue(ctx)
	}
}

// retryDue makes one round of retries: the groups due, in order, until
// the first failure (see dropRetries).
func (d *Dropper) retryDue(ctx context.Context) {
	d.mu.Lock()
	due := d.retries.due(time.Now())
	d.mu.Unlock()
	if len(due) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, cleanup.Timeout)
	defer cancel()
	n, err := d.dropEach(rctx, due)
	d.mu.Lock()
	dropped := 0
	for _, g := range due[:n] {
		dropped += len(g.names)
		d.retries.done(g)
	}
	var gaveUp []string
	if err != nil {
		gaveUp = d.retries.failed(due[n], isLockWaitTimeout(err), due[n+1:], time.Now())
	}
	pending := d.retries.pending()
	d.note()
	d.mu.Unlock()
	log := d.s.logger
	if dropped > 0 {
		log.InfoContext(ctx, "dropped tables on the primary on a retry", "count", dropped, "pending", pending)
	}
	if err != nil {
		log.DebugContext(ctx, "retry of a drop on the primary failed; trying again later", "err", err, "pending", pending)
	}
	if len(gaveUp) > 0 {
		log.WarnContext(ctx, "drop tables on the primary: still failing after retries; CleanupPrimary will",
			"count", len(gaveUp), "tables", sample(gaveUp), "retried_for", dropRetryFor, "err", err)
	}
}

// dropEach drops each group with one DROP on one session, each waiting at
// most Config.LockWait, and stops at the first failure: n groups were
// dropped, and err is why the next one was not.
func (d *Dropper) dropEach(ctx context.Context, groups []*dropGroup) (n int, err error) {
	sess, err := openSession(ctx, d.db, "primary", d.s.cfg.NoBinlogPools)
	if err != nil {
		return 0, err
	}
	defer sess.close(ctx)
	for i, g := range groups {
		if err := d.s.dropBounded(ctx, sess.conn, g.names, 1); err != nil {
			sess.bad = true
			return i, fmt.Errorf("drop %d tables on the primary: %w", len(g.names), err)
		}
	}
	return len(groups), nil
}

// sample is at most the first maxDropBatch of names, for a log line.
func sample(names []string) []string {
	return names[:min(len(names), maxDropBatch)]
}
