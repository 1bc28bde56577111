package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// Sentinel errors of the status reads and operator actions. (The protocol
// sentinels ErrNoneDue and ErrClaimLost live in queue.go.)
var (
	// ErrTopicNotFound: no topic has this id.
	ErrTopicNotFound = errors.New("topic not found")
	// ErrTopicRunning: the action needs a topic that no instance holds;
	// release the claim first.
	ErrTopicRunning = errors.New("topic is running")
	// ErrTopicLocked: the topic's publish lock is held (a publish or a
	// reap is in progress); the action changed nothing and may be retried.
	ErrTopicLocked = errors.New("topic is being published")
	// ErrBadFilter is wrapped by every TopicFilter validation error.
	ErrBadFilter = errors.New("invalid topic filter")
	// ErrTooMany: a filter matched more topics than an action may touch
	// at once.
	ErrTooMany = errors.New("too many topics")
)

// TopicState is where a topic stands in the protocols. Every topic is in
// exactly one state; the first rule that matches wins, in this order:
// running (an instance holds it), parked (failed too often), inactive (its
// active value is not in Config.ActiveValues), idle (no recalc required),
// due (required and due now), backoff (required, not yet due again after a
// failed attempt), scheduled (required for a later date).
type TopicState string

// Topic states, in the order of the rule above.
const (
	TopicRunning   TopicState = "running"
	TopicParked    TopicState = "parked"
	TopicInactive  TopicState = "inactive"
	TopicIdle      TopicState = "idle"
	TopicDue       TopicState = "due"
	TopicBackoff   TopicState = "backoff"
	TopicScheduled TopicState = "scheduled"
)

// TopicStates returns every state in display order: the backlog first,
// then the rest.
func TopicStates() []TopicState {
	return []TopicState{TopicDue, TopicRunning, TopicBackoff, TopicScheduled, TopicParked, TopicInactive, TopicIdle}
}

// ParseTopicState returns the state named s, or an error wrapping
// ErrBadFilter.
func ParseTopicState(s string) (TopicState, error) {
	for _, st := range TopicStates() {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("%w: state %q: want one of %v", ErrBadFilter, s, TopicStates())
}

// Backlog reports whether a topic in this state is waiting to run (due,
// backoff or scheduled).
func (s TopicState) Backlog() bool {
	return s == TopicDue || s == TopicBackoff || s == TopicScheduled
}

// classify applies the state rule. dueNow is due <= the primary's now.
func classify(running, parked, active bool, required int, dueNow, failed bool) TopicState {
	switch {
	case running:
		return TopicRunning
	case parked:
		return TopicParked
	case !active:
		return TopicInactive
	case required <= 0:
		return TopicIdle
	case dueNow:
		return TopicDue
	case failed:
		return TopicBackoff
	}
	return TopicScheduled
}

// stateCondition is the SQL form of the state rule for one state, over the
// names of r (see statusNames). It must agree with classify.
func stateCondition(s TopicState) string {
	const (
		free   = "{running} = 0 AND {parked} IS NULL"
		usable = free + " AND {activecol} IN ({active})"
		req    = usable + " AND {required} > 0"
	)
	switch s {
	case TopicRunning:
		return "{running} <> 0"
	case TopicParked:
		return "{running} = 0 AND {parked} IS NOT NULL"
	case TopicInactive:
		return free + " AND {activecol} NOT IN ({active})"
	case TopicIdle:
		return usable + " AND {required} <= 0"
	case TopicDue:
		return req + " AND {due} <= NOW(6)"
	case TopicBackoff:
		return req + " AND {due} > NOW(6) AND {attempts} > 0"
	case TopicScheduled:
		return req + " AND {due} > NOW(6) AND {attempts} = 0"
	}
	return "FALSE"
}

// statusNames replaces the placeholders of the status and admin SQL with
// the configured, quoted names. Values never go through it.
func (q *Queue) statusNames() *strings.Replacer {
	c := q.cfg.Columns
	qt := ident.Quote
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(q.cfg.ActiveValues)), ", ")
	return strings.NewReplacer(
		"{t}", q.table(), "{run}", ident.Qualified(q.cfg.MetaSchema, RunTable), "{active}", marks,
		"{id}", qt(c.ID), "{required}", qt(c.Required), "{due}", qt(c.Due), "{priority}", qt(c.Priority),
		"{running}", qt(c.Running), "{activecol}", qt(c.Active), "{token}", qt(c.ClaimToken),
		"{reqv}", qt(c.RequestVersion), "{claimedv}", qt(c.ClaimedVersion), "{claimed_at}", qt(c.ClaimedAt),
		"{hb}", qt(c.HeartbeatAt), "{lease}", qt(c.LeaseUntil), "{attempts}", qt(c.Attempts),
		"{lasterr}", qt(c.LastError), "{parked}", qt(c.ParkedAt), "{claimable}", qt(c.Claimable),
		"{refresh}", q.refreshExpr(),
	)
}

// activeArgs returns the active values as arguments, once per use of
// {active} in a statement.
func (q *Queue) activeArgs(uses int) []any {
	out := make([]any, 0, uses*len(q.cfg.ActiveValues))
	for range uses {
		for _, v := range q.cfg.ActiveValues {
			out = append(out, v)
		}
	}
	return out
}

// BacklogRow counts the topics waiting to run at one priority and scope.
type BacklogRow struct {
	Priority  int64 `json:"priority"`
	Scope     int   `json:"scope"` // 1 partial, 2 full (values above 2 are counted as given)
	Due       int64 `json:"due"`
	Backoff   int64 `json:"backoff"`
	Scheduled int64 `json:"scheduled"`
}

// Overview is the topic table at a glance: how many topics are in each
// state, the backlog by priority and scope, and the queue latency.
type Overview struct {
	// At is the primary's clock when the counts were taken; ages are
	// relative to it, so clock skew between hosts does not show.
	At    time.Time `json:"at"`
	Total int64     `json:"total"`
	// States counts the topics in each state (every state is present).
	States map[TopicState]int64 `json:"states"`
	// Required counts topics with a recalc required, in any state
	// (running, parked and inactive ones included).
	Required int64 `json:"required"`
	// Backlog is sorted by priority descending, then scope.
	Backlog []BacklogRow `json:"backlog"`
	// OldestDue is the due date of the longest-waiting due topic, and
	// OldestDueAge how long it has been due: the queue latency. Both are
	// zero when nothing is due.
	OldestDue    time.Time     `json:"oldest_due,omitzero"`
	OldestDueAge time.Duration `json:"oldest_due_age_ns"`
	// Elapsed is how long the counts took to read.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Defaults of Overview's chunked scan.
const (
	// overviewChunks is how many id ranges the overview counts at once, on
	// separate connections: the server runs each statement on one core.
	overviewChunks = 4
	// overviewChunkMin is the smallest id span worth splitting.
	overviewChunkMin = 50_000
)

const overviewBoundsSQL = `SELECT /* nonqueue status */ MIN({id}), MAX({id}), NOW(6) FROM {t}`

// overviewCountSQL groups one id range by the inputs of the state rule.
// The flags are packed into one small integer so the server groups on
// three cheap keys, cheaper than grouping on each flag.
const overviewCountSQL = `SELECT /* nonqueue status */
 ({running} <> 0) + 2 * ({parked} IS NOT NULL) + 4 * ({activecol} IN ({active})) + 8 * ({attempts} > 0) + 16 * ({due} <= ?) AS flags,
 {required}, {priority}, COUNT(*), MIN({due})
 FROM {t} WHERE {id} BETWEEN ? AND ? GROUP BY flags, {required}, {priority} ORDER BY NULL`

// Overview counts every topic by state in one pass over the table. There
// is no index that covers the state rule's columns, so it reads the whole
// table; to keep that fast on a large table it splits the primary key into
// a few id ranges counted concurrently on separate connections (each
// statement groups on a packed integer of the rule's inputs, so the server
// builds only a tiny temporary table). Each range is one consistent
// read; the ranges are read at nearly the same instant, and every topic is
// counted exactly once because ids never change. All ranges use the same
// "now" for due dates.
func (q *Queue) Overview(ctx context.Context) (*Overview, error) {
	start := time.Now()
	r := q.statusNames()
	var lo, hi sql.NullInt64
	o := &Overview{States: map[TopicState]int64{}}
	for _, s := range TopicStates() {
		o.States[s] = 0
	}
	if err := q.db.QueryRowContext(ctx, r.Replace(overviewBoundsSQL)).Scan(&lo, &hi, &o.At); err != nil {
		return nil, fmt.Errorf("overview: read id range: %w", err)
	}
	if !lo.Valid {
		o.Elapsed = time.Since(start)
		return o, nil
	}
	ranges := splitRange(lo.Int64, hi.Int64, overviewChunks, overviewChunkMin)
	type group struct {
		flags, required int
		priority, n     int64
		minDue          sql.NullTime
	}
	results := make([][]group, len(ranges))
	errs := make([]error, len(ranges))
	stmt := r.Replace(overviewCountSQL)
	var wg sync.WaitGroup
	for i, rg := range ranges {
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := append(q.activeArgs(1), o.At, rg[0], rg[1])
			rows, err := q.db.QueryContext(ctx, stmt, args...)
			if err != nil {
				errs[i] = err
				return
			}
			defer rows.Close()
			for rows.Next() {
				var g group
				if err := rows.Scan(&g.flags, &g.required, &g.priority, &g.n, &g.minDue); err != nil {
					errs[i] = err
					return
				}
				results[i] = append(results[i], g)
			}
			errs[i] = rows.Err()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("overview: count topics: %w", err)
	}
	type key struct {
		priority int64
		scope    int
	}
	backlog := map[key]*BacklogRow{}
	for _, gs := range results {
		for _, g := range gs {
			st := classify(g.flags&1 != 0, g.flags&2 != 0, g.flags&4 != 0, g.required, g.flags&16 != 0, g.flags&8 != 0)
			o.Total += g.n
			o.States[st] += g.n
			if g.required > 0 {
				o.Required += g.n
			}
			if !st.Backlog() {
				continue
			}
			k := key{g.priority, g.required}
			b := backlog[k]
			if b == nil {
				b = &BacklogRow{Priority: g.priority, Scope: g.required}
				backlog[k] = b
			}
			switch st {
			case TopicDue:
				b.Due += g.n
				if g.minDue.Valid && (o.OldestDue.IsZero() || g.minDue.Time.Before(o.OldestDue)) {
					o.OldestDue = g.minDue.Time
				}
			case TopicBackoff:
				b.Backoff += g.n
			default:
				b.Scheduled += g.n
			}
		}
	}
	for _, b := range backlog {
		o.Backlog = append(o.Backlog, *b)
	}
	slices.SortFunc(o.Backlog, func(a, b BacklogRow) int {
		if a.Priority != b.Priority {
			return -cmpInt(a.Priority, b.Priority)
		}
		return a.Scope - b.Scope
	})
	if !o.OldestDue.IsZero() {
		o.OldestDueAge = max(o.At.Sub(o.OldestDue), 0)
	}
	o.Elapsed = time.Since(start)
	return o, nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// splitRange cuts [lo, hi] into at most n contiguous inclusive ranges, one
// range when the span is under minSpan.
func splitRange(lo, hi int64, n int, minSpan int64) [][2]int64 {
	span := uint64(hi - lo) // hi >= lo; unsigned: the span of int64 ids may exceed MaxInt64
	if n < 2 || span < uint64(minSpan) {
		return [][2]int64{{lo, hi}}
	}
	step := span / uint64(n)
	out := make([][2]int64, 0, n)
	from := lo
	for i := range n {
		to := hi
		if i < n-1 {
			to = lo + int64(step*uint64(i+1))
		}
		out = append(out, [2]int64{from, to})
		if to == hi {
			break
		}
		from = to + 1
	}
	return out
}

// TopicRow is one topic as the status pages show it.
type TopicRow struct {
	ID       int64      `json:"id"`
	State    TopicState `json:"state"`
	Scope    int        `json:"scope"` // the required value: 0 none, 1 partial, 2 full
	Due      time.Time  `json:"due"`
	Priority int64      `json:"priority"`
	Active   int64      `json:"active"`
	// Running is 0 or the id of the instance holding the claim.
	Running        int64  `json:"running"`
	ClaimToken     uint64 `json:"claim_token"`
	RequestVersion uint64 `json:"request_version"`
	ClaimedVersion uint64 `json:"claimed_version"`
	// ClaimedAt, HeartbeatAt and LeaseUntil are zero when not running.
	ClaimedAt   time.Time `json:"claimed_at,omitzero"`
	HeartbeatAt time.Time `json:"heartbeat_at,omitzero"`
	LeaseUntil  time.Time `json:"lease_until,omitzero"`
	Attempts    int       `json:"attempts"`
	LastError   string    `json:"last_error,omitempty"`
	ParkedAt    time.Time `json:"parked_at,omitzero"`
	// At is the primary's clock when the row was read. DueIn is Due − At
	// (negative when overdue); HeartbeatAge is At − HeartbeatAt and
	// RunningFor At − ClaimedAt (zero when not running).
	At           time.Time     `json:"at"`
	DueIn        time.Duration `json:"due_in_ns"`
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
	RunningFor   time.Duration `json:"running_for_ns"`
	// RefreshInterval is the topic's periodic refresh interval in effect
	// (0: none), RefreshOwn whether it is the topic's own column rather
	// than the configured default. A refreshed topic waiting for its next
	// run is scheduled, due at Due.
	RefreshInterval time.Duration `json:"refresh_interval_ns"`
	RefreshOwn      bool          `json:"refresh_own"`
}

const topicColumnsSQL = `{id}, {required}, {due}, {priority}, {activecol}, {running}, {token}, {reqv}, {claimedv},
 {claimed_at}, {hb}, {lease}, {attempts}, {lasterr}, {parked}, {due} <= NOW(6), NOW(6), {refresh}`

func (q *Queue) scanTopic(sc interface{ Scan(...any) error }) (TopicRow, error) {
	var t TopicRow
	var claimed, hb, lease, parked sql.NullTime
	var lastErr sql.NullString
	var dueNow bool
	var refresh sql.NullInt64
	err := sc.Scan(&t.ID, &t.Scope, &t.Due, &t.Priority, &t.Active, &t.Running, &t.ClaimToken, &t.RequestVersion,
		&t.ClaimedVersion, &claimed, &hb, &lease, &t.Attempts, &lastErr, &parked, &dueNow, &t.At, &refresh)
	if err != nil {
		return t, err
	}
	t.RefreshInterval, t.RefreshOwn = q.cfg.topicRefresh(refresh)
	t.ClaimedAt, t.HeartbeatAt, t.LeaseUntil, t.ParkedAt = claimed.Time, hb.Time, lease.Time, parked.Time
	t.LastError = lastErr.String
	t.State = classify(t.Running != 0, parked.Valid, slices.Contains(q.cfg.ActiveValues, t.Active), t.Scope, dueNow, t.Attempts > 0)
	t.DueIn = t.Due.Sub(t.At)
	if hb.Valid {
		t.HeartbeatAge = max(t.At.Sub(hb.Time), 0)
	}
	if claimed.Valid && t.Running != 0 {
		t.RunningFor = max(t.At.Sub(claimed.Time), 0)
	}
	return t, nil
}

// Topic reads one topic by id; ErrTopicNotFound when there is none.
func (q *Queue) Topic(ctx context.Context, id int64) (*TopicRow, error) {
	r := q.statusNames()
	row := q.db.QueryRowContext(ctx, r.Replace("SELECT /* nonqueue status */ "+topicColumnsSQL+" FROM {t} WHERE {id} = ?"), id)
	t, err := q.scanTopic(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("read topic %d: %w", id, ErrTopicNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read topic %d: %w", id, err)
	}
	return &t, nil
}

// Bounds of TopicFilter.Limit.
const (
	DefaultTopicLimit = 50
	MaxTopicLimit     = 1000
)

// TopicFilter selects topics for the topic list and for actions on many
// topics. Zero fields do not filter.
type TopicFilter struct {
	// ID selects one topic.
	ID int64
	// State selects topics in one state.
	State TopicState
	// MinPriority and MaxPriority bound the priority, inclusive.
	MinPriority, MaxPriority *int64
	// AfterID pages: only ids above it (ids are listed ascending).
	AfterID int64
	// Limit is the page size for Topics; default 50, at most 1000.
	Limit int
}

// Empty reports whether f selects every topic.
func (f *TopicFilter) Empty() bool {
	return f.ID == 0 && f.State == "" && f.MinPriority == nil && f.MaxPriority == nil && f.AfterID == 0
}

// Validate checks f; errors wrap ErrBadFilter.
func (f *TopicFilter) Validate() error {
	if f.State != "" {
		if _, err := ParseTopicState(string(f.State)); err != nil {
			return err
		}
	}
	if f.Limit < 0 || f.Limit > MaxTopicLimit {
		return fmt.Errorf("%w: limit %d: want 1..%d", ErrBadFilter, f.Limit, MaxTopicLimit)
	}
	if f.MinPriority != nil && f.MaxPriority != nil && *f.MinPriority > *f.MaxPriority {
		return fmt.Errorf("%w: min priority %d is above max priority %d", ErrBadFilter, *f.MinPriority, *f.MaxPriority)
	}
	return nil
}

// where returns the filter's condition (no ORDER BY or LIMIT) and its
// arguments, with placeholders for statusNames.
func (q *Queue) where(f *TopicFilter) (string, []any) {
	conds := []string{"TRUE"}
	var args []any
	if f.ID != 0 {
		conds = append(conds, "{id} = ?")
		args = append(args, f.ID)
	}
	if f.AfterID != 0 {
		conds = append(conds, "{id} > ?")
		args = append(args, f.AfterID)
	}
	if f.State != "" {
		c := stateCondition(f.State)
		conds = append(conds, "("+c+")")
		args = append(args, q.activeArgs(strings.Count(c, "{active}"))...)
	}
	if f.MinPriority != nil {
		conds = append(conds, "{priority} >= ?")
		args = append(args, *f.MinPriority)
	}
	if f.MaxPriority != nil {
		conds = append(conds, "{priority} <= ?")
		args = append(args, *f.MaxPriority)
	}
	return strings.Join(conds, " AND "), args
}

// TopicPage is one page of the topic list.
type TopicPage struct {
	Topics []TopicRow `json:"topics"`
	// Next is the AfterID of the next page, 0 on the last page.
	Next int64 `json:"next,omitempty"`
}

// Topics lists topics matching f by ascending id, one page of f.Limit.
// Rare states on a large table may read the whole table (about as long as
// Overview); a page of a common state stops early.
func (q *Queue) Topics(ctx context.Context, f *TopicFilter) (*TopicPage, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultTopicLimit
	}
	cond, args := q.where(f)
	r := q.statusNames()
	stmt := r.Replace("SELECT /* nonqueue status */ " + topicColumnsSQL + " FROM {t} WHERE " + cond + " ORDER BY {id} LIMIT ?")
	rows, err := q.db.QueryContext(ctx, stmt, append(args, limit+1)...)
	if err != nil {
		return nil, fmt.Errorf("list topics: %w", err)
	}
	defer rows.Close()
	page := &TopicPage{Topics: []TopicRow{}}
	for rows.Next() {
		t, err := q.scanTopic(rows)
		if err != nil {
			return nil, fmt.Errorf("list topics: %w", err)
		}
		page.Topics = append(page.Topics, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list topics: %w", err)
	}
	if len(page.Topics) > limit {
		page.Topics = page.Topics[:limit]
		page.Next = page.Topics[limit-1].ID
	}
	return page, nil
}

// Running lists up to limit running topics, the oldest lease first (the
// most likely to be stuck), read through the nq_lease index. A topic whose
// running mark was set outside the protocols (no lease) is not listed, but
// Overview counts it.
func (q *Queue) Running(ctx context.Context, limit int) ([]TopicRow, error) {
	if limit <= 0 || limit > MaxTopicLimit {
		limit = DefaultTopicLimit
	}
	r := q.statusNames()
	stmt := r.Replace("SELECT /* nonqueue status */ " + topicColumnsSQL +
		" FROM {t} FORCE INDEX (nq_lease) WHERE {lease} IS NOT NULL AND {running} <> 0 ORDER BY {lease} LIMIT ?")
	rows, err := q.db.QueryContext(ctx, stmt, limit)
	if err != nil {
		return nil, fmt.Errorf("list running topics: %w", err)
	}
	defer rows.Close()
	out := []TopicRow{}
	for rows.Next() {
		t, err := q.scanTopic(rows)
		if err != nil {
			return nil, fmt.Errorf("list running topics: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list running topics: %w", err)
	}
	return out, nil
}
