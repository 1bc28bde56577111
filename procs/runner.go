package procs

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// SQL a run sends, tagged so it shows as nonqueue's in the processlist.
const (
	noBinlogSQL     = "SET /* nonqueue */ SESSION sql_log_bin = 0"
	connectionIDSQL = "SELECT /* nonqueue */ CONNECTION_ID(), @@SESSION.sql_log_bin"
	callSQL         = "CALL /* nonqueue */ %s(?, ?)" // %s: `schema`.`name`, validated and quoted
	warningsSQL     = "SHOW /* nonqueue */ WARNINGS"
	killQuerySQL    = "KILL /* nonqueue */ QUERY %d"      // %d: CONNECTION_ID() of the run
	killConnSQL     = "KILL /* nonqueue */ CONNECTION %d" // when KILL QUERY did not stop it
	existsSQL       = "SELECT /* nonqueue */ COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_NAME = ? AND ROUTINE_TYPE = 'PROCEDURE'"
)

// Timings of stopping a run that overran.
const (
	killTimeout = 5 * time.Second // for one KILL statement
	killGrace   = 3 * time.Second // for the CALL to return after KILL QUERY
	tailTimeout = 5 * time.Second // for SHOW WARNINGS after the call
)

// errUnknownThread is the server's answer to KILL for a thread that is
// gone: the statement already stopped.
const errUnknownThread = 1094

// Result describes one run. Run always returns one, with LogPath set, even
// on error.
type Result struct {
	// ResultSets and Rows count what the procedure returned (sets with
	// columns only); Warnings counts SHOW WARNINGS rows after the call.
	ResultSets, Rows, Warnings int
	// Duration is the time from the CALL to its last result.
	Duration time.Duration
	// LogPath is the run's log file.
	LogPath string
}

// Runner calls the configured procedure on the local replica. DB must
// allow at least two open connections: a run pins one and stopping it
// needs another.
type Runner struct {
	// DB is a pool on the local replica.
	DB *sql.DB
	// Config is used through WithDefaults.
	Config Config
	// Logger receives one line per run; nil discards.
	Logger *slog.Logger
}

func (r *Runner) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// RunParams describes one call.
type RunParams struct {
	// TopicID and Scope are the procedure's two arguments.
	TopicID int64
	Scope   int
	// LogPath is the run's log file: used as given when absolute, taken
	// inside Config.LogDir when relative (a path leaving it is refused),
	// and named topic_<id>_<time>.log in Config.LogDir when empty.
	LogPath string
	// Label, if set, goes in the log's first line to say whose run it is
	// (the worker writes the claim token there): a log file is reused run
	// after run, and a reader of an older run's log path can tell whether
	// the file still holds that run.
	Label string
	// Conn, if set, is the session the CALL runs on: the worker's run
	// session, which holds the topic's replica lock from the call to the
	// drop of the result tables (transfer.LockReplica). It must come from
	// DB's server; it stays the caller's (not closed or discarded), and a
	// run that has to kill its connection leaves it unusable. Nil pins a
	// connection of DB for the call and discards it afterwards.
	Conn *sql.Conn
}

// Run calls `schema`.`name`(TopicID, Scope) on one pinned connection with
// SET SESSION sql_log_bin=0, writes every result set (header and rows, tab
// separated), SHOW WARNINGS and a final outcome line to the run's log, and
// decides success.
//
// The log file is reused, not re-created: it is truncated under an
// exclusive flock held for the run, so a log per topic stays one file.
// When another run holds it (a second run of the topic on this host,
// possible only after a claim was lost), the run writes beside it under a
// name with the time in it. When the run fails, its log is renamed to
// <name>.failed.log (replacing an older failure's), so the next run of the
// topic keeps the failure readable. The file is created with mode 0640,
// its directories with 0750; Result.LogPath says where the log ended up.
//
// Errors: a *ConfigError for a bad Config; the SQL error of the procedure
// wrapped (the *mysql.MySQLError stays reachable with errors.As); ErrFailed
// when it ran but the Marker was not in the last result set; ErrTimeout
// when it ran past Config.Timeout, or ctx.Err() wrapped when ctx ended
// first. In both last cases the statement has been stopped on the server
// (KILL QUERY from another connection, KILL CONNECTION if that did not
// stop it within a few seconds); a call that returns only after KILL QUERY
// still counts as timed out (KILL QUERY cuts a bare SLEEP() short without
// an error and the procedure runs on). The run's connection is never returned to
// the pool: it carries sql_log_bin=0 and whatever the procedure left in its
// session (a RunParams.Conn stays the caller's to close). A failure to write the log after it was opened does not change
// the outcome; it is logged at error level.
func (r *Runner) Run(ctx context.Context, p *RunParams) (*Result, error) {
	res := &Result{LogPath: p.LogPath}
	cfg := r.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return res, err
	}
	if r.DB == nil {
		return res, &ConfigError{Field: "db", Err: errors.New("no replica pool")}
	}
	topicID, scope := p.TopicID, p.Scope
	schema, name, _ := cfg.split()
	proc := ident.Qualified(schema, name)
	now := time.Now()
	path, err := resolveLogPath(cfg.LogDir, p.LogPath, topicID, now)
	if err != nil {
		return res, fmt.Errorf("call %s for topic %d: %w", proc, topicID, err)
	}
	res.LogPath = path
	lw, err := openRunLog(path, now)
	if err != nil {
		return res, fmt.Errorf("call %s for topic %d: %s: %w", proc, topicID, path, err)
	}
	res.LogPath = lw.path
	label := ""
	if p.Label != "" {
		label = ", " + escapeCell(p.Label)
	}
	lw.printf("# nonqueue: CALL %s(%d, %d) at %s, timeout %v%s\n", proc, topicID, scope, now.UTC().Format(time.RFC3339Nano), cfg.Timeout, label)

	runErr := r.run(ctx, cfg, p.Conn, proc, topicID, scope, lw, res)

	if runErr == nil {
		lw.printf("# outcome: success: %d result sets, %d rows, %d warnings in %v\n", res.ResultSets, res.Rows, res.Warnings, res.Duration)
	} else {
		lw.printf("# outcome: failed after %v: %s\n", res.Duration, escapeCell(runErr.Error()))
	}
	log := r.logger()
	if runErr != nil {
		res.LogPath = lw.keepAsFailed()
	}
	if err := lw.close(); err != nil {
		log.ErrorContext(ctx, "run log incomplete", "topic_id", topicID, "log_path", res.LogPath, "err", err)
	}
	attrs := []any{"topic_id", topicID, "scope", scope, "procedure", schema + "." + name, "duration", res.Duration,
		"result_sets", res.ResultSets, "rows", res.Rows, "warnings", res.Warnings, "log_path", res.LogPath}
	if runErr != nil {
		log.WarnContext(ctx, "procedure run failed", append(attrs, "err", runErr)...)
	} else {
		log.InfoContext(ctx, "procedure run succeeded", attrs...)
	}
	return res, runErr
}

// stopReport says what the guard did to stop an overrunning call.
type stopReport struct {
	fired     bool  // the run's deadline passed or ctx ended before the call returned: a timeout whatever the call returned
	killErr   error // KILL QUERY's error, if any
	escalated bool  // KILL QUERY did not stop it: KILL CONNECTION and socket closed
}

func (r *Runner) run(ctx context.Context, cfg Config, conn *sql.Conn, proc string, topicID int64, scope int, lw *runLog, res *Result) error {
	if conn == nil {
		var err error
		if conn, err = r.DB.Conn(ctx); err != nil {
			return fmt.Errorf("call %s for topic %d: connect to the replica: %w", proc, topicID, err)
		}
		defer func() {
			// Discard, never pool: the session has sql_log_bin=0 and may
			// hold the procedure's temporary tables and variables.
			conn.Raw(func(any) error { return driver.ErrBadConn })
			conn.Close()
		}()
	}
	var connID uint64
	var logBin bool
	if err := conn.QueryRowContext(ctx, connectionIDSQL).Scan(&connID, &logBin); err != nil {
		return fmt.Errorf("call %s for topic %d: read connection id: %w", proc, topicID, err)
	}
	// A pool whose connections start with sql_log_bin=0 (the worker's)
	// saves the round trip.
	if logBin {
		if _, err := conn.ExecContext(ctx, noBinlogSQL); err != nil {
			return fmt.Errorf("call %s for topic %d: disable binary logging for the session: %w", proc, topicID, err)
		}
	}
	lw.printf("# connection %d, sql_log_bin=0\n", connID)

	// The call runs on a context that only the guard cancels: on timeout
	// the guard first stops the statement on the server, so the call
	// returns the server's "interrupted" error on a still-usable
	// connection; closing the socket (what a cancelled context does) is
	// the last resort because the server would keep running the procedure.
	runCtx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	qctx, qcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer qcancel()
	finished := make(chan struct{})
	report := make(chan stopReport, 1)
	go r.guard(runCtx, qcancel, connID, finished, report)

	start := time.Now()
	markerInLast, callErr := r.call(qctx, conn, cfg.Marker, proc, topicID, scope, lw, res)
	res.Duration = time.Since(start)
	close(finished)
	stop := <-report

	if !stop.escalated {
		r.warnings(ctx, conn, lw, res)
	}
	switch {
	case stop.fired:
		// Even a call that then returned without error did not complete
		// in time: KILL QUERY interrupts a bare SLEEP() without an error
		// and the procedure goes on to its end, so its output proves
		// nothing.
		how := "stopped with KILL QUERY"
		if stop.killErr != nil {
			how = fmt.Sprintf("KILL QUERY failed: %v", stop.killErr)
		}
		if stop.escalated {
			how += "; connection killed"
		}
		if callErr != nil {
			how += fmt.Sprintf("; call ended with: %v", callErr)
		} else {
			how += "; call then ran to its end"
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("call %s for topic %d: interrupted after %v (%s): %w",
				proc, topicID, res.Duration.Round(time.Millisecond), how, err)
		}
		return fmt.Errorf("call %s for topic %d: still running after %v (%s): %w",
			proc, topicID, cfg.Timeout, how, ErrTimeout)
	case callErr != nil:
		return fmt.Errorf("call %s for topic %d: %w", proc, topicID, callErr)
	case cfg.Marker != "" && !markerInLast:
		return fmt.Errorf("call %s for topic %d: marker %q not in the last of %d result sets: %w",
			proc, topicID, cfg.Marker, res.ResultSets, ErrFailed)
	}
	return nil
}

// call runs the CALL and writes each result set; it reports whether the
// marker was in the last result set.
func (r *Runner) call(ctx context.Context, conn *sql.Conn, marker, proc string, topicID int64, scope int, lw *runLog, res *Result) (bool, error) {
	// With arguments the driver prepares the CALL; the binary protocol
	// returns every result set, and the CALL's final OK packet is not one.
	rows, err := conn.QueryContext(ctx, fmt.Sprintf(callSQL, proc), topicID, scope)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	markerInLast := false
	for {
		cols, err := rows.Columns()
		if err != nil {
			return false, err
		}
		if len(cols) > 0 {
			res.ResultSets++
			lw.printf("# result set %d\n", res.ResultSets)
			lw.row(cols)
			markerInLast = false
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			cells := make([]string, len(cols))
			for rows.Next() {
				if err := rows.Scan(ptrs...); err != nil {
					return false, err
				}
				for i, v := range vals {
					cells[i] = formatCell(v)
					if marker != "" && strings.Contains(cells[i], marker) {
						markerInLast = true
					}
				}
				lw.row(cells)
				res.Rows++
			}
			if err := rows.Err(); err != nil {
				return false, err
			}
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	return markerInLast, rows.Close()
}

// guard waits for the call to finish or the run to end. When the run ends
// first it kills the statement on the server, then, if the call has not
// returned after killGrace, kills the connection and closes the socket.
// It sends exactly one report.
func (r *Runner) guard(runCtx context.Context, qcancel context.CancelFunc, connID uint64, finished <-chan struct{}, report chan<- stopReport) {
	select {
	case <-finished:
		report <- stopReport{}
		return
	case <-runCtx.Done():
	}
	rep := stopReport{fired: true, killErr: r.kill(runCtx, killQuerySQL, connID)}
	t := time.NewTimer(killGrace)
	defer t.Stop()
	select {
	case <-finished:
	case <-t.C:
		rep.escalated = true
		if err := r.kill(runCtx, killConnSQL, connID); err != nil {
			r.logger().ErrorContext(runCtx, "could not kill the run's connection", "connection_id", connID, "err", err)
		}
		qcancel()
	}
	report <- rep
}

// kill sends one KILL from another connection of the pool, on a short
// context that survives the run's cancellation. A thread already gone is
// not an error.
func (r *Runner) kill(ctx context.Context, stmt string, connID uint64) error {
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
	defer cancel()
	_, err := r.DB.ExecContext(kctx, fmt.Sprintf(stmt, connID))
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == errUnknownThread {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill connection %d's statement: %w", connID, err)
	}
	return nil
}

// warnings appends SHOW WARNINGS to the log, best effort: the run's
// outcome does not depend on it.
func (r *Runner) warnings(ctx context.Context, conn *sql.Conn, lw *runLog, res *Result) {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tailTimeout)
	defer cancel()
	rows, err := conn.QueryContext(wctx, warningsSQL)
	if err != nil {
		lw.printf("# warnings unavailable: %s\n", escapeCell(err.Error()))
		return
	}
	defer rows.Close()
	lw.printf("# warnings\n")
	var level, msg string
	var code int64
	for rows.Next() {
		if err := rows.Scan(&level, &code, &msg); err != nil {
			lw.printf("# warnings unreadable: %s\n", escapeCell(err.Error()))
			return
		}
		lw.row([]string{level, fmt.Sprint(code), msg})
		res.Warnings++
	}
	if err := rows.Err(); err != nil {
		lw.printf("# warnings unreadable: %s\n", escapeCell(err.Error()))
	}
}

// Exists checks that Config.Procedure exists as a procedure on the
// replica (information_schema.ROUTINES), for `nonqueue check`. It returns
// a *ConfigError for an invalid name, an error wrapping ErrNoProcedure when
// it is missing (or invisible to this account), or the query's error
// wrapped.
func (r *Runner) Exists(ctx context.Context) error {
	schema, name, err := r.Config.split()
	if err != nil {
		return &ConfigError{Field: "procedure.name", Err: err}
	}
	if r.DB == nil {
		return &ConfigError{Field: "db", Err: errors.New("no replica pool")}
	}
	var n int
	if err := r.DB.QueryRowContext(ctx, existsSQL, schema, name).Scan(&n); err != nil {
		return fmt.Errorf("look up procedure %s.%s: %w", schema, name, err)
	}
	if n == 0 {
		return fmt.Errorf("procedure %s.%s on the replica: %w", schema, name, ErrNoProcedure)
	}
	return nil
}
