package queue

// ClaimStatement exposes the claim SQL so tests can EXPLAIN the real thing.
func (q *Queue) ClaimStatement() (string, []any) {
	args := []any{int64(7), q.cfg.Lease.Microseconds()}
	args = append(args, q.sql.activeArgs...)
	return q.sql.claim, append(args, int64(0))
}
