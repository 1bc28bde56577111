package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
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

// ErrRefreshColumn is wrapped by CheckRefresh's error when the topic
// table's refresh column is missing or does not hold whole seconds.
var ErrRefreshColumn = errors.New("refresh interval column missing or not an integer")

const refreshColumnSQL = `SELECT /* nonqueue check */ DATA_TYPE FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?`

// CheckRefresh checks that the topic table has the refresh column as an
// integer (seconds) column, as the finish reads it, and describes the
// setting (RefreshSummary). A mapped table that already had a column of
// that name keeps it as it is (schema apply adds only missing columns): a
// text or date column there is reported, naming the key to map another.
func (q *Queue) CheckRefresh(ctx context.Context) (string, error) {
	col := q.cfg.Columns.Refresh
	var typ string
	err := q.db.QueryRowContext(ctx, refreshColumnSQL, q.cfg.Schema, q.cfg.Table, col).Scan(&typ)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: %s.%s has no column %s (schema apply adds it)", ErrRefreshColumn, q.cfg.Schema, q.cfg.Table, col)
	}
	if err != nil {
		return "", fmt.Errorf("check the refresh column: %w", err)
	}
	if !integerType(strings.ToUpper(typ)) {
		return "", fmt.Errorf("%w: %s.%s.%s is %s, want an integer number of seconds; map [topics.columns] refresh_interval to another column",
			ErrRefreshColumn, q.cfg.Schema, q.cfg.Table, col, typ)
	}
	return q.cfg.RefreshSummary(), nil
}
