package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/sqlcheck"
)

// Scopes of a request, as the procedure receives them.
const (
	ScopePartial = 1
	ScopeFull    = 2
)

// MaxQueryIDs bounds how many ids IDsFromQuery reads.
const MaxQueryIDs = 10_000_000

const requestBatch = 1000

// ErrBadID: a topic id is zero or negative. Topic ids are positive: 0
// means "no topic" in nonqueue's own columns, and the result tables are
// named after the id.
var ErrBadID = errors.New("topic ids must be positive")

// RequestParams marks topics for recalc.
type RequestParams struct {
	IDs []int64
	// Scope: ScopePartial or ScopeFull. A pending full request is never
	// lowered to partial by a later partial one.
	Scope int
	// Delay: not before now + Delay, on the primary's clock. A topic
	// already pending keeps the earlier of its date and this one.
	Delay time.Duration
	// Priority, if set, replaces the topics' priority.
	Priority *int64
	// Create inserts ids the table lacks (the table's other columns must
	// have defaults). Without it missing ids are only counted.
	Create bool
}

// RequestResult counts what a request did.
type RequestResult struct {
	Requested int     // topics marked
	Missing   []int64 // ids not in the table (and not created)
}

// Request marks topics for recalc: required is raised to the scope, the
// request version bumped (so a run in progress keeps the request when it
// finishes), a parked topic unparked with its attempts reset. Ids are
// processed in batches of 1,000; duplicates count once.
func (q *Queue) Request(ctx context.Context, p *RequestParams) (*RequestResult, error) {
	return q.request(ctx, q.db, p)
}

// RequestTx is Request inside the caller's transaction on the queue's
// primary (from DB().BeginTx), so the requests commit or roll back with the
// caller's other writes: the binlog follower saves its position with the
// requests it issued, in one commit.
func (q *Queue) RequestTx(ctx context.Context, tx *sql.Tx, p *RequestParams) (*RequestResult, error) {
	return q.request(ctx, tx, p)
}

// execQuerier is what request needs of a pool or a transaction.
type execQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func (q *Queue) request(ctx context.Context, db execQuerier, p *RequestParams) (*RequestResult, error) {
	if p.Scope != ScopePartial && p.Scope != ScopeFull {
		return nil, fmt.Errorf("request: scope %d: want %d (partial) or %d (full)", p.Scope, ScopePartial, ScopeFull)
	}
	if p.Delay < 0 {
		return nil, fmt.Errorf("request: negative delay %v", p.Delay)
	}
	for _, id := range p.IDs {
		if id <= 0 {
			return nil, fmt.Errorf("request: topic id %d: %w", id, ErrBadID)
		}
	}
	ids := slices.Clone(p.IDs)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	var prio any
	if p.Priority != nil {
		prio = *p.Priority
	}
	res := &RequestResult{}
	for chunk := range slices.Chunk(ids, requestBatch) {
		marks := strings.Repeat("?, ", len(chunk)-1) + "?"
		args := make([]any, 0, len(chunk)*2)
		if p.Create {
			rows := strings.Repeat("(?, 0), ", len(chunk)-1) + "(?, 0)"
			for _, id := range chunk {
				args = append(args, id)
			}
			stmt := strings.Replace(q.sql.requestCreate, "{rows}", rows, 1)
			if _, err := db.ExecContext(ctx, stmt, args...); err != nil {
				return res, fmt.Errorf("request: create topics %d..%d: %w", chunk[0], chunk[len(chunk)-1], err)
			}
			args = args[:0]
		}
		d := p.Delay.Microseconds()
		args = append(args, d, d, prio, p.Scope)
		for _, id := range chunk {
			args = append(args, id)
		}
		stmt := strings.Replace(q.sql.request, "{ids}", marks, 1)
		r, err := db.ExecContext(ctx, stmt, args...)
		if err != nil {
			return res, fmt.Errorf("request topics %d..%d: %w", chunk[0], chunk[len(chunk)-1], err)
		}
		n, err := r.RowsAffected()
		if err != nil {
			return res, fmt.Errorf("request topics %d..%d: %w", chunk[0], chunk[len(chunk)-1], err)
		}
		res.Requested += int(n)
		if int(n) < len(chunk) {
			missing, err := q.missing(ctx, db, chunk)
			if err != nil {
				return res, err
			}
			res.Missing = append(res.Missing, missing...)
		}
	}
	return res, nil
}

func (q *Queue) missing(ctx context.Context, db execQuerier, ids []int64) ([]int64, error) {
	stmt := fmt.Sprintf("SELECT /* nonqueue request */ %s FROM %s WHERE %s IN (%s)",
		q.col(q.cfg.Columns.ID), q.table(), q.col(q.cfg.Columns.ID), strings.Repeat("?, ", len(ids)-1)+"?")
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := db.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, fmt.Errorf("request: find missing topics: %w", err)
	}
	defer rows.Close()
	found := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("request: find missing topics: %w", err)
		}
		found[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("request: find missing topics: %w", err)
	}
	var out []int64
	for _, id := range ids {
		if !found[id] {
			out = append(out, id)
		}
	}
	return out, nil
}

// IDsFromQuery runs an operator's query on the primary and returns the
// first column of every row as topic ids. The query must be a single plain
// SELECT (sqlcheck.PlainSelect): anything else (DDL, DML, CALL, INTO
// OUTFILE, a locking read, a second statement) is refused before it reaches
// the server. It then runs in a read-only transaction, the server's own
// guard for what a lexer cannot see (a stored function that writes). The
// first column must be of an integer type and every id positive, else
// nothing is returned; more than MaxQueryIDs rows are refused.
func (q *Queue) IDsFromQuery(ctx context.Context, query string) ([]int64, error) {
	stmt, err := sqlcheck.PlainSelect(query)
	if err != nil {
		return nil, fmt.Errorf("ids query: %w", err)
	}
	tx, err := q.db.BeginTx(ctx, &sqlReadOnly)
	if err != nil {
		return nil, fmt.Errorf("ids query: %w", err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, stmt)
	if err != nil {
		return nil, fmt.Errorf("ids query: %w", err)
	}
	defer rows.Close()
	cols, err := rows.ColumnTypes()
	if err != nil {
		return nil, fmt.Errorf("ids query: %w", err)
	}
	if len(cols) == 0 {
		return nil, errors.New("ids query returned no column: want topic ids in the first column")
	}
	if t := cols[0].DatabaseTypeName(); !integerType(t) {
		return nil, fmt.Errorf("ids query: the first column (%s) is of type %s: want an integer column of topic ids (CAST(… AS SIGNED) if need be)", cols[0].Name(), t)
	}
	var id sql.NullInt64
	dest := make([]any, len(cols))
	dest[0] = &id
	for i := 1; i < len(dest); i++ {
		dest[i] = new(sql.RawBytes)
	}
	var ids []int64
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("ids query: row %d: the first column must be a topic id: %w", len(ids)+1, err)
		}
		if !id.Valid || id.Int64 <= 0 {
			v := "NULL"
			if id.Valid {
				v = strconv.FormatInt(id.Int64, 10)
			}
			return nil, fmt.Errorf("ids query: row %d: topic id %s: %w", len(ids)+1, v, ErrBadID)
		}
		if len(ids) == MaxQueryIDs {
			return nil, fmt.Errorf("ids query returned more than %d rows", MaxQueryIDs)
		}
		ids = append(ids, id.Int64)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("ids query: %w", err)
	}
	return ids, nil
}

// integerType: a column type name, as the driver reports it, that holds
// integers only.
func integerType(name string) bool {
	switch strings.TrimPrefix(name, "UNSIGNED ") {
	case "TINYINT", "SMALLINT", "MEDIUMINT", "INT", "BIGINT":
		return true
	}
	return false
}
