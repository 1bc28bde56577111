package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// Periodic refresh (docs/design.md, "Periodic refresh"): the fenced finish
// of a run schedules the topic's next run, due = finish + interval, in the
// same UPDATE that ends the claim. No scheduler is elected and nothing
// fires twice: only the finish of the current claim schedules, and a lost
// claim's finish changes nothing. A failed, released or reaped run does
// not finish, so it keeps the back-off of the release (or the lease, for a
// reap) and the topic's request; the schedule goes on from the next
// successful run.

// maxRefreshSeconds caps a topic's own interval in the finish: a mapped
// column of a wider type could otherwise push the due date past DATETIME's
// range, and the finish would fail on a NULL due date. It is INT
// UNSIGNED's largest value, the column nonqueue adds (136 years).
const maxRefreshSeconds = 4294967295

// refreshIntervalSQL is the topic's refresh interval in microseconds: its
// own column in seconds, or the configured default (the argument) when the
// column is NULL. Zero or less: no refresh.
// The cap is maxRefreshSeconds.
const refreshIntervalSQL = "COALESCE(LEAST({refresh}, 4294967295) * 1000000, ?)"

// finishStatements are the finish statement, reading the topic's
// refresh column, and its variant for a topic table without that column
// (every topic takes the configured interval), names replaced by r.
func finishStatements(r *strings.Replacer) (withColumn, without string) {
	t := `UPDATE /* nonqueue finish */ {t} SET {running} = 0, {hb} = NULL, {lease} = NULL,
 {attempts} = 0, {lasterr} = NULL,
 ` + finishRefreshSQL + `
 WHERE {fence}`
	return r.Replace(t), r.Replace(strings.ReplaceAll(t, "{refresh}", "NULL"))
}

// finishRefreshSQL are the finish's assignments of due and required, with
// four placeholders for the default interval in microseconds and one for
// the refresh scope (finishArgs), in that order. Without a refresh
// interval they are the plain finish's: the request is cleared unless a
// new one arrived during the run (request_version moved past
// claimed_version). With one, the topic stays required at the refresh
// scope and is due interval after now; a request that arrived during the
// run keeps the higher scope and the earlier date.
var finishRefreshSQL = strings.ReplaceAll(`{due} = IF({ivl} > 0,
   IF({reqv} = {claimedv}, NOW(6) + INTERVAL {ivl} MICROSECOND, LEAST({due}, NOW(6) + INTERVAL {ivl} MICROSECOND)),
   {due}),
 {required} = GREATEST(IF({reqv} = {claimedv}, 0, {required}), IF({ivl} > 0, ?, 0))`, "{ivl}", refreshIntervalSQL)

// finishArgs are the arguments of finishRefreshSQL.
func (c Config) finishArgs() []any {
	d := c.RefreshInterval.Microseconds()
	return []any{d, d, d, d, c.refreshScope()}
}

// refreshScope is RefreshScope as the procedure's scope argument.
func (c Config) refreshScope() int {
	if c.RefreshScope == "full" {
		return ScopeFull
	}
	return ScopePartial
}

func (c Config) validateRefresh() error {
	if c.RefreshInterval < 0 || (c.RefreshInterval > 0 && c.RefreshInterval < time.Second) {
		return &ConfigError{Field: "refresh_interval", Err: fmt.Errorf("%v: want 0 (off) or at least 1s", c.RefreshInterval)}
	}
	if c.RefreshInterval > maxRefreshSeconds*time.Second {
		return &ConfigError{Field: "refresh_interval", Err: fmt.Errorf("%v is longer than %d seconds", c.RefreshInterval, int64(maxRefreshSeconds))}
	}
	switch c.RefreshScope {
	case "", "partial", "full":
		return nil
	}
	return &ConfigError{Field: "refresh_scope", Err: fmt.Errorf("%q: want \"partial\" or \"full\"", c.RefreshScope)}
}

// RefreshSummary describes the refresh setting for status and check, such
// as "every 1h after each successful run, scope partial" or "off".
func (c Config) RefreshSummary() string {
	own := fmt.Sprintf("a topic's %s column (seconds) overrides it, 0 turns it off", c.Columns.Refresh)
	if c.RefreshInterval <= 0 {
		return "off by default; " + own
	}
	return fmt.Sprintf("every %v after each successful run, scope %s; %s", c.RefreshInterval, c.RefreshScope, own)
}

// topicRefresh is a topic's refresh interval in effect, from its column
// (NULL: the configured default), and whether it is the topic's own.
func (c Config) topicRefresh(col sql.NullInt64) (time.Duration, bool) {
	if !col.Valid {
		return c.RefreshInterval, false
	}
	return time.Duration(max(min(col.Int64, maxRefreshSeconds), 0)) * time.Second, true
}

// Errors of CheckRefresh.
var (
	// ErrNoRefreshColumn: the topic table lacks the refresh interval
	// column; every topic takes the configured interval.
	ErrNoRefreshColumn = errors.New("no refresh interval column")
	// ErrRefreshColumn: the column of that name does not hold whole
	// seconds; the finish would misread it.
	ErrRefreshColumn = errors.New("refresh interval column is not an integer")
)

const refreshColumnSQL = `SELECT /* nonqueue schema */ DATA_TYPE FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?`

// refreshColumnType is the refresh column's data type, "" when the topic
// table lacks it (or does not exist yet).
func (q *Queue) refreshColumnType(ctx context.Context) (string, error) {
	var typ string
	err := q.db.QueryRowContext(ctx, refreshColumnSQL, q.cfg.Schema, q.cfg.Table, q.cfg.Columns.Refresh).Scan(&typ)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up the refresh column %s: %w", q.cfg.Columns.Refresh, err)
	}
	return typ, nil
}

// detectRefreshColumn picks the finish for the table as it is: with an
// integer refresh column it reads each topic's own interval, without one
// (an installation whose table could not get the column online, see
// Config.refreshAlter) every topic takes the configured interval, so the
// workers keep working either way. Open and ApplySchema call it; a worker
// started before the column was added uses the configured interval until
// it restarts.
func (q *Queue) detectRefreshColumn(ctx context.Context) error {
	typ, err := q.refreshColumnType(ctx)
	if err != nil {
		return err
	}
	q.refreshCol = typ != "" && integerType(strings.ToUpper(typ))
	want := q.sql.finishNoCol
	if q.refreshCol {
		want = q.sql.finishCol
	}
	if q.sql.finish != want {
		q.sql.finish = want
		if q.finishStmt != nil {
			q.finishStmt.Close()
			q.finishStmt = nil // prepare makes the new one
		}
	}
	return nil
}

// refreshExpr is the refresh column for the status reads, or NULL (the
// configured interval) when the table lacks it.
func (q *Queue) refreshExpr() string {
	if q.refreshCol {
		return ident.Quote(q.cfg.Columns.Refresh)
	}
	return "NULL"
}

// refreshAlter is the ALTER that adds the refresh column to a table made
// before it existed: instant, except on a table with an indexed VIRTUAL
// column (a mapped table's claimable), to which MariaDB adds no column
// online. ApplySchemaWith then leaves it out unless blocking changes are
// allowed: the column is optional (detectRefreshColumn).
func (c Config) refreshAlter() string {
	return onlineAlter(ident.Qualified(c.Schema, c.Table), []string{"ADD COLUMN IF NOT EXISTS " + c.refreshColumnDef()}, algInstant)
}

// refreshColumnDef is the refresh column's definition: nullable with no
// default, so it is added instantly and every topic takes the configured
// interval until given its own.
func (c Config) refreshColumnDef() string {
	return ident.Quote(c.Columns.Refresh) +
		" INT UNSIGNED NULL COMMENT 'nonqueue: seconds from a finished run to the next; NULL: [topics] refresh_interval, 0: never'"
}

// CheckRefresh checks the topic table's refresh column as the finish
// reads it and describes the setting (RefreshSummary). A missing column
// is ErrNoRefreshColumn (the configured interval applies to every topic);
// a column of that name that does not hold integers (a mapped table that
// had its own column of that name, which schema apply leaves as it is) is
// ErrRefreshColumn, naming the key to map another.
func (q *Queue) CheckRefresh(ctx context.Context) (string, error) {
	typ, err := q.refreshColumnType(ctx)
	if err != nil {
		return "", fmt.Errorf("check the refresh column: %w", err)
	}
	where := fmt.Sprintf("%s.%s.%s", q.cfg.Schema, q.cfg.Table, q.cfg.Columns.Refresh)
	switch {
	case typ == "":
		return "", fmt.Errorf("%w %s: every topic takes [topics] refresh_interval (%v); schema apply adds the column, "+
			"online unless the table has an indexed VIRTUAL column (a mapped table set up before periodic refresh: "+
			"use --allow-blocking, or the online schema-change command of schema print)", ErrNoRefreshColumn, where, q.cfg.RefreshInterval)
	case !integerType(strings.ToUpper(typ)):
		return "", fmt.Errorf("%w: %s is %s, want whole seconds; map [topics.columns] refresh_interval to another column",
			ErrRefreshColumn, where, typ)
	}
	return q.cfg.RefreshSummary(), nil
}
