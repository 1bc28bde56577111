package queue

import (
	"context"
	"strings"
)

// ClaimStatement exposes the claim SQL so tests can EXPLAIN the real thing.
func (q *Queue) ClaimStatement() (string, []any) {
	args := []any{int64(7), q.cfg.Lease.Microseconds()}
	args = append(args, q.sql.activeArgs...)
	return q.sql.claim, append(args, int64(0))
}

// ClaimPickStatement is the combined claim's SELECT with arguments, for
// EXPLAIN (FOR UPDATE SKIP LOCKED is cut: EXPLAIN shows the same plan).
func (q *Queue) ClaimPickStatement(n int) (string, []any) {
	args := append([]any{}, q.sql.activeArgs...)
	return strings.TrimSuffix(q.sql.claimPick, " FOR UPDATE SKIP LOCKED"), append(args, int64(0), n)
}

// ClaimTogether sends one combined claim for ps (in order), as concurrent
// Claim calls arriving together would, and returns each one's result.
func (q *Queue) ClaimTogether(ctx context.Context, ps []ClaimParams) ([]*Claim, []error) {
	batch := make([]*claimReq, len(ps))
	for i, p := range ps {
		batch[i] = &claimReq{p: p, done: make(chan claimResult, 1)}
	}
	q.claimBatch(ctx, batch)
	claims, errs := make([]*Claim, len(ps)), make([]error, len(ps))
	for i, r := range batch {
		res := <-r.done
		claims[i], errs[i] = res.c, res.err
	}
	return claims, errs
}
