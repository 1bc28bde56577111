package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Claims of one Queue that arrive while a claim is in flight are combined:
// the next statement claims a topic for each of them (River's producer
// fetches jobs for all its idle workers in one query for the same reason).
// A lone claim stays the one-statement compare-and-set; two or more take
// the most urgent claimable rows with SELECT … FOR UPDATE SKIP LOCKED and
// mark each for its instance in one UPDATE, in one READ COMMITTED
// transaction. Otherwise concurrent claimers queue on the row lock at the
// head of the claim index, and each statement wakes every waiter.

// maxClaimBatch bounds how many claims one statement serves.
const maxClaimBatch = 64

// claimTimeout bounds a combined claim. It runs detached from the callers'
// contexts: once sent, a claim that may commit is seen through and handed
// to its caller, never abandoned with the topic marked running.
const claimTimeout = 30 * time.Second

type claimReq struct {
	p    ClaimParams
	done chan claimResult
}

type claimResult struct {
	c   *Claim
	err error
}

// enqueue adds a claim to the next batch and makes sure a leader runs.
func (q *Queue) enqueue(r *claimReq) {
	q.cmu.Lock()
	defer q.cmu.Unlock()
	q.pending = append(q.pending, r)
	if !q.leading {
		q.leading = true
		go q.lead()
	}
}

// lead serves the pending claims, a batch at a time, until none is left.
func (q *Queue) lead() {
	for {
		q.cmu.Lock()
		if len(q.pending) == 0 {
			q.leading = false
			q.cmu.Unlock()
			return
		}
		// One batch serves one MinPriority; the others wait a round.
		minPrio := q.pending[0].p.MinPriority
		var batch, rest []*claimReq
		for _, r := range q.pending {
			if r.p.MinPriority == minPrio && len(batch) < maxClaimBatch {
				batch = append(batch, r)
			} else {
				rest = append(rest, r)
			}
		}
		q.pending = rest
		q.cmu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
		if len(batch) == 1 {
			c, err := q.claimOne(ctx, &batch[0].p)
			batch[0].done <- claimResult{c, err}
		} else {
			q.claimBatch(ctx, batch)
		}
		cancel()
	}
}

// claimBatch claims a topic for each request, most urgent first to the
// longest waiting; requests left without one get ErrNoneDue.
func (q *Queue) claimBatch(ctx context.Context, batch []*claimReq) {
	var claims []*Claim
	err := q.retryLost(ctx, func() (err error) {
		claims, err = q.claimRows(ctx, batch)
		return err
	})
	if err == nil && len(claims) > 0 {
		// The position after the claims committed: see Claim.PrimaryPos.
		var pos string
		if err = q.db.QueryRowContext(ctx, q.sql.primaryPos).Scan(&pos); err == nil {
			for _, c := range claims {
				c.PrimaryPos = pos
			}
		} else {
			err = fmt.Errorf("claim: read the primary's position: %w", err)
			q.releaseUnread(claims)
		}
	}
	for i, r := range batch {
		switch {
		case err != nil:
			r.done <- claimResult{err: err}
		case i < len(claims):
			q.stats.won.Add(1)
			q.stats.combined.Add(1)
			r.done <- claimResult{c: claims[i]}
		default:
			q.stats.empty.Add(1)
			r.done <- claimResult{err: ErrNoneDue}
		}
	}
}

// claimRows runs the combined claim's transaction and returns the claims in
// claim order (priority desc, due, id).
func (q *Queue) claimRows(ctx context.Context, batch []*claimReq) ([]*Claim, error) {
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("claim: begin: %w", err)
	}
	defer tx.Rollback()
	// Integers written in, as text: one round trip. A statement prepared
	// on the pool is prepared again, and closed, on each transaction's
	// connection (database/sql's Tx.Stmt): three round trips a claim.
	args := make([]int64, 0, len(q.cfg.ActiveValues)+2)
	args = append(args, q.cfg.ActiveValues...)
	args = append(args, batch[0].p.MinPriority, int64(len(batch)))
	rows, err := tx.QueryContext(ctx, bindInts(q.sql.claimPick, args...))
	if err != nil {
		return nil, fmt.Errorf("claim: pick topics: %w", err)
	}
	var claims []*Claim
	for rows.Next() {
		c := &Claim{InstanceID: batch[len(claims)].p.InstanceID}
		if err := rows.Scan(&c.TopicID, &c.Scope, &c.Token, &c.RequestVersion, &c.Attempts, &c.Priority); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claim: pick topics: %w", err)
		}
		c.Token++ // what the UPDATE below sets
		claims = append(claims, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim: pick topics: %w", err)
	}
	if len(claims) == 0 {
		return nil, tx.Commit()
	}
	// Only integers we read or were given go into the text.
	var cases, ids strings.Builder
	for i, c := range claims {
		id := strconv.FormatInt(c.TopicID, 10)
		cases.WriteString(" WHEN " + id + " THEN " + strconv.FormatInt(c.InstanceID, 10))
		if i > 0 {
			ids.WriteString(", ")
		}
		ids.WriteString(id)
	}
	stmt := strings.NewReplacer("{cases}", cases.String(), "{ids}", ids.String(),
		"{lease_us}", strconv.FormatInt(q.cfg.Lease.Microseconds(), 10)).Replace(q.sql.claimMark)
	res, err := tx.ExecContext(ctx, stmt)
	if err != nil {
		return nil, fmt.Errorf("claim: mark topics: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != int64(len(claims)) {
		// The rows are locked by this transaction: only a bug gets here.
		return nil, fmt.Errorf("claim: marked %d of %d locked topics (%v)", n, len(claims), err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("claim: commit: %w", err)
	}
	return claims, nil
}

// releaseUnread gives back claims whose callers will only see an error.
func (q *Queue) releaseUnread(claims []*Claim) {
	ctx, cancel := context.WithTimeout(context.Background(), claimTimeout)
	defer cancel()
	for _, c := range claims {
		_, _ = q.Release(ctx, c, &ReleaseParams{}) // best effort: else the lease expires and the reaper takes it back
	}
}

// errClaimZero is returned for instance id 0, which means "not running".
var errClaimZero = errors.New("claim: instance id 0 is reserved for 'not running'")
