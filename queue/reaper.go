package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nonqueue/nonqueue/internal/meta"
	"github.com/nonqueue/nonqueue/internal/startstop"
)

// Defaults of the Reaper.
const (
	DefaultReapInterval = 5 * time.Second
	DefaultReapBatch    = 100
)

// Reaped describes one claim taken back after its lease ran out.
type Reaped struct {
	TopicID    int64
	InstanceID int64 // the instance that held the claim
	Token      uint64
}

// LockName is the per-topic lock (GET_LOCK on the primary) that a publish
// holds while it swaps result tables and that the reaper takes before it
// takes a claim back, so a claim is never reaped in the middle of a publish.
// Names longer than MariaDB's 64-character limit are hashed.
func (q *Queue) LockName(topicID int64) string {
	name := "nonqueue:" + q.cfg.Schema + "." + q.cfg.Table + ":" + strconv.FormatInt(topicID, 10)
	if len(name) <= 64 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "nonqueue:" + hex.EncodeToString(sum[:])[:40] + ":" + strconv.FormatInt(topicID, 10)
}

// Reap takes back up to limit claims whose lease has expired. For each it
// takes the topic's publish lock without waiting (a topic being published
// is skipped this round), re-checks the claim token and the lease in a
// fenced UPDATE, and records the rescue in the run history in the same
// transaction. The topic stays required, so it is due again at once; the
// rescue counts as an attempt, so a topic that kills its worker every time
// ends parked instead of looping, unless it was requested again during
// the run (that request must run). reaperID is recorded as the run's
// instance.
func (q *Queue) Reap(ctx context.Context, reaperID int64, limit int) ([]Reaped, error) {
	if limit <= 0 {
		limit = DefaultReapBatch
	}
	rows, err := q.db.QueryContext(ctx, q.sql.reapFind, limit)
	if err != nil {
		return nil, fmt.Errorf("reap: find expired leases: %w", err)
	}
	type cand struct {
		Reaped
		scope int
	}
	var cands []cand
	for rows.Next() {
		var c cand
		if err := rows.Scan(&c.TopicID, &c.InstanceID, &c.Token, &c.scope); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reap: %w", err)
		}
		cands = append(cands, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reap: find expired leases: %w", err)
	}
	var out []Reaped
	for _, c := range cands {
		ok, err := q.reapOne(ctx, reaperID, c.Reaped, c.scope)
		if err != nil {
			return out, err
		}
		if ok {
			out = append(out, c.Reaped)
		}
	}
	return out, nil
}

func (q *Queue) reapOne(ctx context.Context, reaperID int64, r Reaped, scope int) (bool, error) {
	// GET_LOCK belongs to a session: hold one connection for the whole step.
	conn, err := q.db.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("reap topic %d: %w", r.TopicID, err)
	}
	defer conn.Close()
	lock := q.LockName(r.TopicID)
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT /* nonqueue reap */ GET_LOCK(?, 0)", lock).Scan(&got); err != nil {
		return false, fmt.Errorf("reap topic %d: lock: %w", r.TopicID, err)
	}
	if got.Int64 != 1 {
		return false, nil // being published: its holder is alive enough
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(rctx, "DO RELEASE_LOCK(?)", lock) // best effort: the session's end frees it too
	}()

	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("reap topic %d: %w", r.TopicID, err)
	}
	defer tx.Rollback()
	msg := fmt.Sprintf("lease expired: instance %d stopped heartbeating (claim token %d)", r.InstanceID, r.Token)
	max := q.cfg.MaxAttempts
	res, err := tx.ExecContext(ctx, q.sql.reapTake, msg, max, max, r.TopicID, r.InstanceID, r.Token)
	if err != nil {
		return false, fmt.Errorf("reap topic %d: %w", r.TopicID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, err // heartbeat arrived or someone else reaped it
	}
	if _, err := tx.ExecContext(ctx, q.sql.reapRecord, r.TopicID, reaperID, r.Token, scope, string(meta.OutcomeReaped), msg); err != nil {
		return false, fmt.Errorf("reap topic %d: record: %w", r.TopicID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("reap topic %d: commit: %w", r.TopicID, err)
	}
	return true, nil
}

// Reaper runs Reap every Interval until stopped. Any instance may run one;
// several reapers are safe because every take-back is fenced.
type Reaper struct {
	Queue    *Queue
	ID       int64 // recorded as the reaping instance
	Interval time.Duration
	Logger   *slog.Logger
	// ReapedFunc, if set, is called for every claim taken back (metrics,
	// tests).
	ReapedFunc func(Reaped)
	// SkipFunc, if set, is asked before each pass; true skips it. An idle
	// worker process skips while its probe, which looks for expired
	// leases too (Queue.ExpiredProbe), has seen none: the pass would find
	// nothing.
	SkipFunc func() bool

	loop startstop.Loop
}

// Start launches the loop and returns at once. It is an error to start a
// running Reaper.
func (r *Reaper) Start(ctx context.Context) error {
	interval := r.Interval
	if interval <= 0 {
		interval = DefaultReapInterval
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	err := r.loop.Start(ctx, func(ctx context.Context) {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if r.SkipFunc != nil && r.SkipFunc() {
				// Nothing to reap.
			} else if err := r.RunOnce(ctx); err != nil && ctx.Err() == nil {
				log.WarnContext(ctx, "reap failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	if err != nil {
		return fmt.Errorf("start reaper: %w", err)
	}
	return nil
}

// RunOnce makes one pass, logging each claim taken back.
func (r *Reaper) RunOnce(ctx context.Context) error {
	reaped, err := r.Queue.Reap(ctx, r.ID, DefaultReapBatch)
	for _, x := range reaped {
		if r.Logger != nil {
			r.Logger.WarnContext(ctx, "lease expired, topic requeued",
				"topic_id", x.TopicID, "instance_id", x.InstanceID, "claim_token", x.Token)
		}
		if r.ReapedFunc != nil {
			r.ReapedFunc(x)
		}
	}
	return err
}

// Stop ends the loop and waits for it. Safe before Start and twice.
func (r *Reaper) Stop(ctx context.Context) error {
	if err := r.loop.Stop(ctx); err != nil {
		return fmt.Errorf("reaper: %w", err)
	}
	return nil
}
