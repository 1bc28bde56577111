package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Leases renews the leases of every claim a process holds with one
// statement per beat, instead of one per claim. A claim's lease is a
// per-instance cost on the primary that grows with instances, not topics:
// a fleet of 1,000 instances running long procedures sends 1,000 renewals
// per interval, each an UPDATE every replica applies. One process renewing
// all of its claims at once makes that a statement per process per
// interval, the rows unchanged (the same fenced write per claim), as River
// fetches jobs for all of a producer's workers in one query.
//
// A claim joins with Keep when its run starts and leaves with the function
// Keep returns. Each beat writes the fenced renewal for all of them; when
// the server matched fewer rows than claims (rare: the reaper or an
// operator took a claim back, or its run just finished), one read says
// which are lost, and only their owners hear about it. A beat that fails
// (the primary unreachable) is logged and the next one tries again, as a
// lost heartbeat did when each run had its own: the lease (Config.Lease)
// spans several intervals.
type Leases struct {
	q        *Queue
	interval time.Duration
	log      *slog.Logger

	mu   sync.Mutex
	held map[*Claim]func(error)
}

// maxLeaseBatch bounds the claims one renewal names.
const maxLeaseBatch = 500

// NewLeases makes the process's lease keeper; Run beats every interval
// (the worker's heartbeat interval, well under Config.Lease).
func (q *Queue) NewLeases(interval time.Duration, log *slog.Logger) *Leases {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Leases{q: q, interval: interval, log: log, held: map[*Claim]func(error){}}
}

// Keep renews c's lease with the others' until the returned function is
// called. lost is called at most once, from the keeper's goroutine, with an
// error wrapping ErrClaimLost, when a renewal finds the claim no longer
// the caller's; the claim is then no longer kept.
func (l *Leases) Keep(c *Claim, lost func(error)) (stop func()) {
	l.mu.Lock()
	l.held[c] = lost
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		delete(l.held, c)
		l.mu.Unlock()
	}
}

// Held is how many claims the keeper renews.
func (l *Leases) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}

// Run beats until ctx ends. Give it the context that outlives the runs
// (the worker's hard context): leases must be kept through the grace
// period.
func (l *Leases) Run(ctx context.Context) {
	t := time.NewTicker(l.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Bounded: one session that hangs (a half-open connection) must
		// not hold up every claim's renewal until the leases run out. The
		// next beat, on another session, is due at once then.
		bctx, cancel := context.WithTimeout(ctx, max(2*l.interval, time.Second))
		err := l.Renew(bctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			l.log.WarnContext(ctx, "renew leases failed; the next beat tries again", "claims", l.Held(), "err", err)
		}
	}
}

// Renew makes one beat: it renews every kept claim's lease, and tells the
// owners of the claims it found lost.
func (l *Leases) Renew(ctx context.Context) error {
	l.mu.Lock()
	claims := make([]*Claim, 0, len(l.held))
	for c := range l.held {
		claims = append(claims, c)
	}
	l.mu.Unlock()
	var errs []error
	for lo := 0; lo < len(claims); lo += maxLeaseBatch {
		if err := l.renew(ctx, claims[lo:min(lo+maxLeaseBatch, len(claims))]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// renew renews one batch of claims.
func (l *Leases) renew(ctx context.Context, claims []*Claim) error {
	q := l.q
	ids := make([]string, len(claims))
	fences := make([]string, len(claims))
	for i, cl := range claims {
		ids[i] = strconv.FormatInt(cl.TopicID, 10)
		fences[i] = "(" + bindInts(q.sql.fence, cl.TopicID, cl.InstanceID, int64(cl.Token)) + ")"
	}
	in := strings.Join(ids, ", ")
	stmt := fmt.Sprintf(q.sql.renewMany, q.cfg.Lease.Microseconds(), in, strings.Join(fences, " OR "))
	res, err := q.db.ExecContext(ctx, stmt)
	if err != nil {
		return fmt.Errorf("renew %d leases: %w", len(claims), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("renew %d leases: %w", len(claims), err)
	}
	if n == int64(len(claims)) {
		return nil
	}
	// Some claims are gone: read which still hold (renewed just now; a
	// claim's token never comes back, so a row that matches now matched
	// the renewal).
	rows, err := q.db.QueryContext(ctx, fmt.Sprintf(q.sql.holdersMany, in))
	if err != nil {
		return fmt.Errorf("renew %d leases: %d matched; read which: %w", len(claims), n, err)
	}
	defer rows.Close()
	type holder struct {
		instance sql.NullInt64
		token    sql.Null[uint64]
	}
	now := map[int64]holder{}
	for rows.Next() {
		var id int64
		var h holder
		if err := rows.Scan(&id, &h.instance, &h.token); err != nil {
			return fmt.Errorf("renew leases: read which hold: %w", err)
		}
		now[id] = h
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("renew leases: read which hold: %w", err)
	}
	for _, cl := range claims {
		if h, ok := now[cl.TopicID]; ok && h.instance.Int64 == cl.InstanceID && h.token.Valid && h.token.V == cl.Token {
			continue
		}
		l.mu.Lock()
		lost, kept := l.held[cl]
		delete(l.held, cl)
		l.mu.Unlock()
		if kept {
			lost(fmt.Errorf("heartbeat topic %d (instance %d, token %d): %w", cl.TopicID, cl.InstanceID, cl.Token, ErrClaimLost))
		}
	}
	return nil
}
