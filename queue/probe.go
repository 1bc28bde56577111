package queue

// An idle worker process does not claim to find out whether anything is
// due: it probes, once per idle_wait, with one read that also carries its
// other idle questions (the pauses, the primary's position, expired
// leases), and claims only when the probe finds work. These are the topic
// table's parts of that read, as scalar expressions; the caller puts them
// in one statement with the others.

// DueProbe returns a scalar expression and its arguments: the priority of
// the most urgent topic a claim with minPriority would take now (the
// claim's filter and order, one entry of the claim index read), or NULL
// when nothing is due. A caller whose pauses raise its minimum compares
// the priority with that minimum.
func (q *Queue) DueProbe(minPriority int64) (string, []any) {
	args := make([]any, 0, len(q.sql.activeArgs)+1)
	args = append(args, q.sql.activeArgs...)
	return q.sql.dueProbe, append(args, minPriority)
}

// ExpiredProbe returns a scalar expression: 1 when a claim's lease has run
// out (a reap would find it), else 0. It reads the lease index from its
// start: unexpired leases end the range.
func (q *Queue) ExpiredProbe() string { return q.sql.expiredProbe }
