package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// Operator actions on the topic table, for the ops dashboard. Each is one
// fenced or keyed statement; values travel only as arguments and names
// only through statusNames (validated, quoted configuration).

// MaxMatchRequest bounds how many topics RequestMatching marks at once.
const MaxMatchRequest = 100_000

// DefaultAdminLockWait is how long ReleaseClaim waits for a topic's publish
// lock when AdminReleaseParams.LockWait is zero.
const DefaultAdminLockWait = 2 * time.Second

const (
	setPrioritySQL = `UPDATE /* nonqueue admin */ {t} SET {priority} = ? WHERE {id} = ?`
	// A running topic is not parked: the holder's release would rewrite
	// the parked column from its attempt count and undo it.
	parkSQL = `UPDATE /* nonqueue admin */ {t} SET {parked} = COALESCE({parked}, NOW(6)), {lasterr} = COALESCE(?, {lasterr})
 WHERE {id} = ? AND {running} = 0`
	unparkSQL = `UPDATE /* nonqueue admin */ {t} SET {parked} = NULL, {attempts} = 0 WHERE {id} = ? AND {parked} IS NOT NULL`
	// The same fence as every protocol write: the claim the operator saw.
	adminReleaseSQL = `UPDATE /* nonqueue admin */ {t} SET {running} = 0, {hb} = NULL, {lease} = NULL, {lasterr} = ?
 WHERE {id} = ? AND {running} = ? AND {token} = ?`
	adminRecordSQL = `INSERT /* nonqueue admin */ INTO {run} (topic_id, instance_id, claim_token, scope, outcome, error, finished_at)
 VALUES (?, ?, ?, ?, ?, ?, NOW(6))`
	adminScopeSQL = `SELECT /* nonqueue admin */ {required} FROM {t} WHERE {id} = ?`
	existsSQL     = `SELECT /* nonqueue admin */ {running}, {parked} IS NOT NULL FROM {t} WHERE {id} = ?`
	matchIDsSQL   = `SELECT /* nonqueue admin */ {id} FROM {t} WHERE %s ORDER BY {id} LIMIT ?`
)

// SetPriority sets one topic's priority. It returns ErrTopicNotFound when
// there is no such topic.
func (q *Queue) SetPriority(ctx context.Context, id, priority int64) error {
	n, err := q.adminExec(ctx, setPrioritySQL, priority, id)
	if err != nil {
		return fmt.Errorf("set priority of topic %d: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("set priority of topic %d: %w", id, ErrTopicNotFound)
	}
	return nil
}

// Park parks a topic: it will not be claimed until it is unparked or
// requested again. reason, if not empty, becomes its last error. It
// returns ErrTopicRunning for a running topic (release it first) and
// ErrTopicNotFound for a missing one. Parking a parked topic keeps its
// original parked time.
func (q *Queue) Park(ctx context.Context, id int64, reason string) error {
	var msg any
	if reason != "" {
		msg = format.Truncate(reason, 1000)
	}
	n, err := q.adminExec(ctx, parkSQL, msg, id)
	if err != nil {
		return fmt.Errorf("park topic %d: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("park topic %d: %w", id, q.whyNot(ctx, id))
	}
	return nil
}

// Unpark clears a topic's parked mark and its attempts, leaving its
// request as it is: a required topic is then due at its date. It reports
// whether the topic was parked; ErrTopicNotFound for a missing topic.
func (q *Queue) Unpark(ctx context.Context, id int64) (bool, error) {
	n, err := q.adminExec(ctx, unparkSQL, id)
	if err != nil {
		return false, fmt.Errorf("unpark topic %d: %w", id, err)
	}
	if n > 0 {
		return true, nil
	}
	if err := q.whyNot(ctx, id); errors.Is(err, ErrTopicNotFound) {
		return false, fmt.Errorf("unpark topic %d: %w", id, err)
	}
	return false, nil
}

// whyNot explains why a keyed update matched no row: ErrTopicNotFound,
// ErrTopicRunning, or a read error.
func (q *Queue) whyNot(ctx context.Context, id int64) error {
	var running int64
	var parked bool
	err := q.db.QueryRowContext(ctx, q.statusNames().Replace(existsSQL), id).Scan(&running, &parked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return ErrTopicNotFound
	case err != nil:
		return err
	case running != 0:
		return fmt.Errorf("held by instance %d: %w", running, ErrTopicRunning)
	}
	return errors.New("topic changed meanwhile; reload and retry")
}

func (q *Queue) adminExec(ctx context.Context, stmt string, args ...any) (int64, error) {
	res, err := q.db.ExecContext(ctx, q.statusNames().Replace(stmt), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected() // found rows: a matched row counts even if unchanged
}

// AdminReleaseParams names the claim an operator takes back: the one the
// operator saw, so a claim that changed meanwhile is left alone.
type AdminReleaseParams struct {
	TopicID    int64
	InstanceID int64  // the running value seen
	Token      uint64 // the claim token seen
	// Operator says who did it; it is recorded in the run history.
	Operator string
	// Reason is optional and recorded with it.
	Reason string
	// LockWait bounds the wait for the topic's publish lock; default
	// DefaultAdminLockWait.
	LockWait time.Duration
}

// ReleaseClaim takes back a stuck claim now, without waiting for its lease
// to expire, the way the reaper does: under the topic's publish lock
// (LockName, so never in the middle of a publish), fenced on the running
// instance and the claim token, and recorded in the run history with
// outcome "released", the holding instance and who released it, in one
// transaction. The topic keeps its request, so it is due again at once;
// no attempt is counted (an operator's decision is not the topic's
// fault). The holder finds its claim gone at its next heartbeat and
// publishes nothing.
//
// It returns ErrClaimLost when the topic is no longer held by that
// instance with that token (finished, reaped or re-claimed meanwhile), and
// ErrTopicLocked when the publish lock stays taken for LockWait; nothing
// is changed then.
func (q *Queue) ReleaseClaim(ctx context.Context, p *AdminReleaseParams) error {
	if p.InstanceID == 0 {
		return fmt.Errorf("release topic %d: instance 0 holds nothing: %w", p.TopicID, ErrClaimLost)
	}
	if strings.TrimSpace(p.Operator) == "" {
		return fmt.Errorf("release topic %d: the operator's name is required", p.TopicID)
	}
	wait := p.LockWait
	if wait <= 0 {
		wait = DefaultAdminLockWait
	}
	r := q.statusNames()
	// GET_LOCK belongs to a session: hold one connection for the step.
	conn, err := q.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("release topic %d: %w", p.TopicID, err)
	}
	defer conn.Close()
	lock := q.LockName(p.TopicID)
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT /* nonqueue admin */ GET_LOCK(?, ?)", lock, wait.Seconds()).Scan(&got); err != nil {
		return fmt.Errorf("release topic %d: lock: %w", p.TopicID, err)
	}
	if got.Int64 != 1 {
		return fmt.Errorf("release topic %d: publish lock %q still held after %v: %w", p.TopicID, lock, wait, ErrTopicLocked)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(rctx, "DO RELEASE_LOCK(?)", lock) // best effort: the session's end frees it too
	}()

	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("release topic %d: %w", p.TopicID, err)
	}
	defer tx.Rollback()
	msg := fmt.Sprintf("released by operator %s (claim of instance %d, token %d)", p.Operator, p.InstanceID, p.Token)
	if p.Reason != "" {
		msg += ": " + p.Reason
	}
	msg = format.Truncate(msg, 1000)
	res, err := tx.ExecContext(ctx, r.Replace(adminReleaseSQL), msg, p.TopicID, p.InstanceID, p.Token)
	if err != nil {
		return fmt.Errorf("release topic %d: %w", p.TopicID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("release topic %d: %w", p.TopicID, err)
	}
	if n == 0 {
		return fmt.Errorf("release topic %d (instance %d, token %d): %w", p.TopicID, p.InstanceID, p.Token, ErrClaimLost)
	}
	var scope int
	if err := tx.QueryRowContext(ctx, r.Replace(adminScopeSQL), p.TopicID).Scan(&scope); err != nil {
		return fmt.Errorf("release topic %d: read scope: %w", p.TopicID, err)
	}
	if _, err := tx.ExecContext(ctx, r.Replace(adminRecordSQL), p.TopicID, p.InstanceID, p.Token, scope, string(meta.OutcomeReleased), msg); err != nil {
		return fmt.Errorf("release topic %d: record: %w", p.TopicID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("release topic %d: commit: %w", p.TopicID, err)
	}
	return nil
}

// MatchingIDs returns the ids of the topics matching f, ascending, at most
// limit; ErrTooMany (wrapped) when more match. f.Limit is ignored.
func (q *Queue) MatchingIDs(ctx context.Context, f *TopicFilter, limit int) ([]int64, error) {
	g := *f
	g.Limit = 0
	if err := g.Validate(); err != nil {
		return nil, err
	}
	cond, args := q.where(&g)
	stmt := q.statusNames().Replace(fmt.Sprintf(matchIDsSQL, cond))
	rows, err := q.db.QueryContext(ctx, stmt, append(args, limit+1)...)
	if err != nil {
		return nil, fmt.Errorf("select matching topics: %w", err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("select matching topics: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select matching topics: %w", err)
	}
	if len(ids) > limit {
		return nil, fmt.Errorf("more than %d topics match; narrow the filter: %w", limit, ErrTooMany)
	}
	return ids, nil
}

// RequestMatching requests recalc (as Request, with p's scope, delay and
// priority) for every topic matching f, at most MaxMatchRequest of them;
// more is ErrTooMany and changes nothing. An empty filter is refused: it
// would request every topic. p.IDs and p.Create are ignored.
func (q *Queue) RequestMatching(ctx context.Context, f *TopicFilter, p *RequestParams) (*RequestResult, error) {
	if f.Empty() {
		return nil, fmt.Errorf("request matching topics: %w: give a state or a priority range", ErrBadFilter)
	}
	ids, err := q.MatchingIDs(ctx, f, MaxMatchRequest)
	if err != nil {
		return nil, fmt.Errorf("request matching topics: %w", err)
	}
	if len(ids) == 0 {
		return &RequestResult{}, nil
	}
	rp := *p
	rp.IDs, rp.Create = ids, false
	return q.Request(ctx, &rp)
}
