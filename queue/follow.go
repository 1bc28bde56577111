package queue

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// FollowTable is the binlog followers' table in the meta schema (owned by
// internal/meta).
const FollowTable = meta.FollowTable

// ErrFollowLockLost: the follower's named lock on the primary is no longer
// held by its session (the session died, or was killed). The follower must
// stop issuing requests; nothing it had not committed is saved.
var ErrFollowLockLost = errors.New("follower lock lost")

// FollowLock is one follower name's named lock (GET_LOCK) on the primary,
// held on a session of its own: the process that holds it is the active
// follower of that name; when its session ends (the process died, the
// network broke) the server frees the lock and a standby takes it. Every
// commit of the follower checks the lock inside its transaction
// (FollowCommit), so a follower that lost it can never save a position.
type FollowLock struct {
	conn   *sql.Conn
	name   string // follower name
	lock   string // lock name
	connID int64
}

// followLockName is the named lock of follower name: server-wide, so it
// includes the meta schema, and hashed to fit GET_LOCK's 64 characters.
func (q *Queue) followLockName(name string) string {
	s := "nq_follow_" + q.cfg.MetaSchema + "_" + name
	if len(s) > 64 {
		sum := sha256.Sum256([]byte(q.cfg.MetaSchema + "\x00" + name))
		s = "nq_follow_" + hex.EncodeToString(sum[:])[:32]
	}
	return s
}

// TryFollowLock takes follower name's lock without waiting. It returns nil
// and no error when another session holds it (this process is then a
// standby and tries again later).
func (q *Queue) TryFollowLock(ctx context.Context, name string) (*FollowLock, error) {
	conn, err := q.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("follower %s: connect to primary: %w", name, err)
	}
	l := &FollowLock{conn: conn, name: name, lock: q.followLockName(name)}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT /* nonqueue follow */ GET_LOCK(?, 0), CONNECTION_ID()", l.lock).Scan(&got, &l.connID); err != nil {
		conn.Close()
		return nil, fmt.Errorf("follower %s: take lock %s: %w", name, l.lock, err)
	}
	if got.Int64 != 1 {
		conn.Close()
		return nil, nil
	}
	return l, nil
}

// Check verifies that the lock is still held by its session; it returns
// ErrFollowLockLost when it is not.
func (l *FollowLock) Check(ctx context.Context) error {
	var holder sql.NullInt64
	if err := l.conn.QueryRowContext(ctx, "SELECT /* nonqueue follow */ IS_USED_LOCK(?)", l.lock).Scan(&holder); err != nil {
		return fmt.Errorf("follower %s: %w: %v", l.name, ErrFollowLockLost, err)
	}
	if !holder.Valid || holder.Int64 != l.connID {
		return fmt.Errorf("follower %s: %w", l.name, ErrFollowLockLost)
	}
	return nil
}

// Release frees the lock and its session; safe to call twice.
func (l *FollowLock) Release(ctx context.Context) {
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = l.conn.ExecContext(ctx, "DO /* nonqueue follow */ RELEASE_LOCK(?)", l.lock)
	l.conn.Close()
	l.conn = nil
}

func (q *Queue) followTable() string { return ident.Qualified(q.cfg.MetaSchema, FollowTable) }

// FollowStart registers the active follower of l's name: its row is
// created if new, and its host, pid, source and start time set. It returns
// the saved GTID position ("" for a follower never run).
func (q *Queue) FollowStart(ctx context.Context, l *FollowLock, host string, pid int, source string) (string, error) {
	if _, err := q.db.ExecContext(ctx, "INSERT IGNORE /* nonqueue follow */ INTO "+q.followTable()+" (name) VALUES (?)", l.name); err != nil {
		return "", fmt.Errorf("follower %s: create its row in %s: %w", l.name, q.followTable(), err)
	}
	r, err := q.db.ExecContext(ctx, "UPDATE /* nonqueue follow */ "+q.followTable()+
		" SET host = ?, pid = ?, source = ?, active_since = NOW(6), updated_at = NOW(6) WHERE name = ? AND IS_USED_LOCK(?) = ?",
		host, pid, source, l.name, l.lock, l.connID)
	if err != nil {
		return "", fmt.Errorf("follower %s: register: %w", l.name, err)
	}
	if n, err := r.RowsAffected(); err != nil || n != 1 {
		return "", fmt.Errorf("follower %s: register: %w", l.name, ErrFollowLockLost)
	}
	var pos string
	if err := q.db.QueryRowContext(ctx, "SELECT /* nonqueue follow */ gtid_pos FROM "+q.followTable()+" WHERE name = ?", l.name).Scan(&pos); err != nil {
		return "", fmt.Errorf("follower %s: read its position: %w", l.name, err)
	}
	return pos, nil
}

// FollowSave is what one commit of a follower writes: its new position,
// the requests it issues for the changes up to there, and its counters.
type FollowSave struct {
	Pos      string           // the source's GTID set after the last change included
	Requests []*RequestParams // one per scope, delay and priority
	// Events and RequestedTopics are added to the follower's totals.
	Events, RequestedTopics  uint64
	EventsPerS, RequestsPerS float64
	Delay                    time.Duration
	LastCommit               time.Time // source commit time of the last change; zero keeps it
}

// FollowResult is what a commit did.
type FollowResult struct {
	Requested int     // topics marked
	Missing   []int64 // ids not in the topic table
}

// FollowCommit saves s in one transaction on the primary: the position row
// first, fenced by the follower's lock (IS_USED_LOCK of l's session), then
// the requests, through the same statements as Request. Either all of it
// commits or none: a follower that crashes before the commit reads the
// same changes again (at least once; a repeated request merges). It
// returns ErrFollowLockLost, and saves nothing, when l no longer holds the
// lock. A deadlock or lock wait timeout (with a claim on the same topics)
// rolls the transaction back and is retried a few times.
func (q *Queue) FollowCommit(ctx context.Context, l *FollowLock, s *FollowSave) (*FollowResult, error) {
	for try := 0; ; try++ {
		res, err := q.followCommit(ctx, l, s)
		if err == nil || try == 4 || !retryable(err) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(try+1) * 5 * time.Millisecond):
		}
	}
}

func (q *Queue) followCommit(ctx context.Context, l *FollowLock, s *FollowSave) (*FollowResult, error) {
	tx, err := q.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("follower %s: begin: %w", l.name, err)
	}
	defer tx.Rollback()
	var last any
	if !s.LastCommit.IsZero() {
		last = s.LastCommit.UTC()
	}
	r, err := tx.ExecContext(ctx, "UPDATE /* nonqueue follow */ "+q.followTable()+` SET gtid_pos = ?,
 events = events + ?, requests = requests + ?, events_per_s = ?, requests_per_s = ?, delay_us = ?,
 last_commit_at = COALESCE(?, last_commit_at), updated_at = NOW(6)
 WHERE name = ? AND IS_USED_LOCK(?) = ?`,
		s.Pos, s.Events, s.RequestedTopics, s.EventsPerS, s.RequestsPerS, s.Delay.Microseconds(), last, l.name, l.lock, l.connID)
	if err != nil {
		return nil, fmt.Errorf("follower %s: save position: %w", l.name, err)
	}
	if n, err := r.RowsAffected(); err != nil || n != 1 {
		return nil, fmt.Errorf("follower %s: save position: %w", l.name, ErrFollowLockLost)
	}
	res := &FollowResult{}
	for _, p := range s.Requests {
		rr, err := q.request(ctx, tx, p)
		if err != nil {
			return nil, fmt.Errorf("follower %s: %w", l.name, err)
		}
		res.Requested += rr.Requested
		res.Missing = append(res.Missing, rr.Missing...)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("follower %s: commit position and requests: %w", l.name, err)
	}
	return res, nil
}

// errNoSuchTable is ER_NO_SUCH_TABLE.
const errNoSuchTable = 1146

// FollowerRow is one follower name as its active process last wrote it.
type FollowerRow struct {
	Name         string        `json:"name"`
	Pos          string        `json:"gtid_pos"`
	Host         string        `json:"host"`
	PID          int           `json:"pid"`
	Source       string        `json:"source"`
	Events       int64         `json:"events"`
	Requests     int64         `json:"requests"`
	EventsPerS   float64       `json:"events_per_s"`
	RequestsPerS float64       `json:"requests_per_s"`
	Delay        time.Duration `json:"delay_ns"`
	LastCommit   *time.Time    `json:"last_commit_at,omitempty"`
	ActiveSince  *time.Time    `json:"active_since,omitempty"`
	UpdatedAt    time.Time     `json:"updated_at"`
	// Active: its lock is held now (a process follows under that name).
	Active bool `json:"active"`
}

// Followers lists the binlog followers recorded on the primary, by name.
// A meta schema without the follow table (schema apply not run since
// followers were added) lists none.
func (q *Queue) Followers(ctx context.Context) ([]FollowerRow, error) {
	rows, err := q.db.QueryContext(ctx, `SELECT /* nonqueue status */ name, gtid_pos, host, pid, source, events, requests,
 events_per_s, requests_per_s, delay_us, last_commit_at, active_since, updated_at FROM `+q.followTable()+` ORDER BY name`)
	if err != nil {
		if me, ok := errors.AsType[*mysql.MySQLError](err); ok && me.Number == errNoSuchTable {
			return nil, nil
		}
		return nil, fmt.Errorf("read followers: %w", err)
	}
	defer rows.Close()
	var out []FollowerRow
	for rows.Next() {
		var f FollowerRow
		var delay int64
		var last, since sql.NullTime
		if err := rows.Scan(&f.Name, &f.Pos, &f.Host, &f.PID, &f.Source, &f.Events, &f.Requests,
			&f.EventsPerS, &f.RequestsPerS, &delay, &last, &since, &f.UpdatedAt); err != nil {
			return nil, fmt.Errorf("read followers: %w", err)
		}
		f.Delay = time.Duration(delay) * time.Microsecond
		if last.Valid {
			f.LastCommit = &last.Time
		}
		if since.Valid {
			f.ActiveSince = &since.Time
		}
		out = append(out, f)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read followers: %w", err)
	}
	for i := range out {
		var used sql.NullInt64
		if err := q.db.QueryRowContext(ctx, "SELECT /* nonqueue status */ IS_USED_LOCK(?)", q.followLockName(out[i].Name)).Scan(&used); err != nil {
			return nil, fmt.Errorf("read followers: lock of %s: %w", out[i].Name, err)
		}
		out[i].Active = used.Valid
	}
	return out, nil
}
