package queue

import (
	"cmp"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// The online clauses of the ALTERs on a mapped (live) topic table. With
// them MariaDB refuses a change it cannot make online instead of quietly
// copying the table under a write lock.
const (
	algInstant = "ALGORITHM=INSTANT"
	algInplace = "ALGORITHM=INPLACE, LOCK=NONE"
)

// DefaultLockWait is ApplyOptions.LockWait when left zero.
const DefaultLockWait = 5 * time.Second

// onlineAlter is one ALTER TABLE of parts that must run with alg.
func onlineAlter(table string, parts []string, alg string) string {
	return "ALTER TABLE " + table + "\n  " + strings.Join(parts, ",\n  ") + ",\n  " + alg
}

// splitOnline returns an ALTER built by onlineAlter without its online
// clause (what would run if the operator allows a blocking change), and
// the clause; ok is false for every other statement.
func splitOnline(stmt string) (base, alg string, ok bool) {
	if !strings.HasPrefix(stmt, "ALTER TABLE ") {
		return stmt, "", false
	}
	for _, a := range []string{algInstant, algInplace} {
		if b, found := strings.CutSuffix(stmt, ",\n  "+a); found {
			return b, a, true
		}
	}
	return stmt, "", false
}

// ApplyOptions says how far ApplySchemaWith may go on a live table.
type ApplyOptions struct {
	// AllowBlocking runs an ALTER that MariaDB cannot run online (it would
	// copy the table, or keep writers out while it runs) in its plain
	// form instead of refusing it. Off by default: on a big production
	// table such an ALTER blocks the application for minutes, and every
	// replica replays it and lags as long.
	AllowBlocking bool
	// LockWait bounds how long each ALTER waits for the table's metadata
	// lock (lock_wait_timeout, whole seconds, at least 1); default 5s.
	// Even an instant ALTER needs that lock for a moment, and while it
	// waits behind a long transaction every new writer of the table waits
	// behind it, so it gives up rather than queue the application.
	LockWait time.Duration
}

// ErrBlocking is wrapped by ApplySchemaWith's error when a change has no
// online path and AllowBlocking is off; nothing blocking ran.
var ErrBlocking = errors.New("schema change has no online path")

// BlockingPlan lists the schema changes on the topic table that MariaDB
// cannot make online, with what the table holds: enough for an operator to
// judge the cost before allowing them or using an online schema-change
// tool instead.
type BlockingPlan struct {
	Table     string // `schema`.`table`
	Engine    string
	RowFormat string
	// Rows, DataBytes and IndexBytes are information_schema.tables'
	// estimates (they lag behind a freshly filled table).
	Rows, DataBytes, IndexBytes int64
	// FileBytes is the size of the table's InnoDB tablespace file, what
	// a rebuild or copy rewrites; 0 when it has none of its own.
	FileBytes int64
	Steps     []BlockingStep
	// Skipped are optional changes left out without AllowBlocking
	// because they have no online path (the refresh interval column on a
	// table with an indexed virtual column): nonqueue works without them.
	Skipped []BlockingStep
}

// BlockingStep is one ALTER without an online path.
type BlockingStep struct {
	SQL    string // the statement as it runs when allowed: no online clause
	Online string // the online clause MariaDB refused, or would be asked for
	// Reason is MariaDB's refusal; empty when the statement was not tried
	// because it needs a refused statement before it.
	Reason string
	// Ran says how the statement ran with AllowBlocking: as an online
	// rebuild (writers go on, the table is rewritten) or in its plain
	// form (MariaDB's choice, which may lock out writers); empty when it
	// did not run.
	Ran string
}

// String renders the plan for an operator.
func (p *BlockingPlan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s: %s, row format %s, about %d rows, %s data, %s indexes, %s tablespace file\n",
		p.Table, p.Engine, p.RowFormat, p.Rows, mib(p.DataBytes), mib(p.IndexBytes), mib(p.FileBytes))
	b.WriteString("MariaDB cannot make these changes in place without rewriting the table: each rebuilds or\n" +
		"copies it, keeping its writers waiting unless MariaDB can do it with LOCK=NONE, and every\n" +
		"replica replays it and lags as long as it runs.\n")
	for i, s := range p.Steps {
		why := "not tried: it needs the statement before it"
		if s.Reason != "" {
			why = s.Online + " refused: " + s.Reason
		}
		if s.Ran != "" {
			why += "; ran " + s.Ran
		}
		fmt.Fprintf(&b, "%d. (%s)\n   %s;\n", i+1, why, strings.ReplaceAll(s.SQL, "\n", "\n   "))
	}
	for i, s := range p.Skipped {
		fmt.Fprintf(&b, "left out %d. (optional; %s refused: %s)\n   %s;\n", i+1, s.Online, s.Reason, strings.ReplaceAll(s.SQL, "\n", "\n   "))
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// BlockingError is ApplySchemaWith's refusal: Plan says what would block.
type BlockingError struct{ Plan *BlockingPlan }

func (e *BlockingError) Error() string {
	return fmt.Sprintf("apply schema: %d change(s) on %s (about %d rows, %s) have no online path; refused without AllowBlocking (--allow-blocking)",
		len(e.Plan.Steps), e.Plan.Table, e.Plan.Rows, mib(e.Plan.DataBytes+e.Plan.IndexBytes))
}

// Unwrap lets errors.Is find ErrBlocking.
func (e *BlockingError) Unwrap() error { return ErrBlocking }

// ApplySchema runs Config.DDL, refusing any change on the topic table that
// MariaDB cannot make online (see ApplySchemaWith). It is idempotent. It
// must not run concurrently with other calls on q.
func (q *Queue) ApplySchema(ctx context.Context) error {
	_, err := q.ApplySchemaWith(ctx, ApplyOptions{})
	return err
}

// ApplySchemaWith runs Config.DDL. The ALTERs of a mapped table carry an
// online clause (ALGORITHM=INSTANT, or ALGORITHM=INPLACE, LOCK=NONE), so
// on a live table nothing copies it or locks out its writers. When MariaDB
// refuses one (a row format, engine or index that has no online path), it
// returns a *BlockingError with the plan, having run only what went
// online; with o.AllowBlocking it runs the plain statement instead and
// returns the plan of what ran blocking. The plan is nil when everything
// ran online. The request trigger is left alone when it is installed in
// its current version (alreadyApplied); an older one is replaced. It is
// idempotent. It must not run concurrently with other calls on q.
func (q *Queue) ApplySchemaWith(ctx context.Context, o ApplyOptions) (*BlockingPlan, error) {
	if o.LockWait < 0 {
		return nil, fmt.Errorf("apply schema: lock wait %v is negative", o.LockWait)
	}
	wait := int64(math.Ceil(cmp.Or(o.LockWait, DefaultLockWait).Seconds()))
	// One connection with its own lock wait. A session variable, not SET
	// STATEMENT: that would be written to the binary log with the ALTER,
	// and a replica whose SQL thread waited longer behind its own readers
	// would stop replicating. The connection is discarded afterwards, so
	// the setting never reaches another caller of the pool.
	conn, err := q.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply schema: connect: %w", err)
	}
	defer conn.Close()
	defer conn.Raw(func(any) error { return driver.ErrBadConn })
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("SET SESSION lock_wait_timeout = %d", wait)); err != nil {
		return nil, fmt.Errorf("apply schema: set the lock wait: %w", err)
	}
	// Two-phase ALTER (MariaDB 10.8+, any user may set it for the
	// session): the binary log gets each ALTER's start at once, so a
	// replica with parallel replication (slave_parallel_threads > 0)
	// builds the index alongside the primary instead of after it, lagging
	// as long. A serial replica replays it as before.
	// Older servers lack the variable (error 1193): nothing to do.
	if _, err := conn.ExecContext(ctx, "SET SESSION binlog_alter_two_phase = ON"); err != nil {
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1193 {
			return nil, fmt.Errorf("apply schema: set two-phase ALTER: %w", err)
		}
	}
	ddl := q.cfg.DDL()
	var plan *BlockingPlan
	for i, stmt := range ddl {
		if done, err := q.alreadyApplied(ctx, stmt); err != nil || done {
			if err != nil {
				return plan, fmt.Errorf("apply schema: %w", err)
			}
			continue
		}
		base, alg, online := splitOnline(stmt)
		_, err := conn.ExecContext(ctx, stmt)
		reason, refused := notOnline(err)
		if err != nil && !(online && refused) {
			return plan, q.schemaError(stmt, wait, err)
		}
		if err == nil {
			continue
		}
		if plan == nil {
			if plan, err = q.tableCost(ctx); err != nil {
				return nil, err
			}
		}
		step := BlockingStep{SQL: base, Online: alg, Reason: reason}
		if !o.AllowBlocking && stmt == q.cfg.refreshAlter() {
			// Optional: without the column every topic takes the
			// configured refresh interval (detectRefreshColumn).
			plan.Skipped = append(plan.Skipped, step)
			continue
		}
		if !o.AllowBlocking {
			plan.Steps = append(plan.Steps, step)
			for _, later := range ddl[i+1:] {
				if b, a, ok := splitOnline(later); ok {
					plan.Steps = append(plan.Steps, BlockingStep{SQL: b, Online: a})
				}
			}
			return plan, &BlockingError{Plan: plan}
		}
		// Allowed: the least blocking form MariaDB accepts, an online
		// rebuild (writers go on) when it has one, else the plain form.
		tries := []struct{ sql, how string }{{base, "in its plain form"}}
		if alg != algInplace {
			tries = append([]struct{ sql, how string }{{base + ",\n  " + algInplace, "as an online rebuild (" + algInplace + ")"}}, tries...)
		}
		for _, t := range tries {
			_, err := conn.ExecContext(ctx, t.sql)
			if _, refused := notOnline(err); refused && t.sql != base {
				continue
			}
			if err != nil {
				return plan, q.schemaError(t.sql+" (allowed to block)", wait, err)
			}
			step.Ran = t.how
			break
		}
		plan.Steps = append(plan.Steps, step)
	}
	if err := q.detectRefreshColumn(ctx); err != nil {
		return plan, fmt.Errorf("apply schema: %w", err)
	}
	q.prepare(ctx)
	return plan, nil
}

// notOnline tells MariaDB's refusal of an online clause (errors 1845 and
// 1846) and returns its reason.
func notOnline(err error) (string, bool) {
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1845 || me.Number == 1846) {
		return me.Message, true
	}
	return "", false
}

// schemaError wraps a failed statement, explaining a metadata lock wait.
func (q *Queue) schemaError(stmt string, wait int64, err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1205 {
		return fmt.Errorf("apply schema: %s: another session (a long transaction or statement on %s.%s) held the table for more than %ds, and writers queue behind a waiting ALTER, so it gave up; run it again when that session ends (or with a longer lock wait): %w",
			firstLine(stmt), q.cfg.Schema, q.cfg.Table, wait, err)
	}
	return fmt.Errorf("apply schema: %s: %w", firstLine(stmt), explainDDLError(err))
}

// tableCost reads the topic table's size for a BlockingPlan.
func (q *Queue) tableCost(ctx context.Context) (*BlockingPlan, error) {
	p := &BlockingPlan{Table: ident.Qualified(q.cfg.Schema, q.cfg.Table)}
	var engine, format sql.NullString
	var rows, data, index sql.NullInt64
	err := q.db.QueryRowContext(ctx, `SELECT ENGINE, ROW_FORMAT, TABLE_ROWS, DATA_LENGTH, INDEX_LENGTH
 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, q.cfg.Schema, q.cfg.Table).
		Scan(&engine, &format, &rows, &data, &index)
	if err != nil {
		return nil, fmt.Errorf("apply schema: read the size of %s: %w", p.Table, err)
	}
	p.Engine, p.RowFormat, p.Rows, p.DataBytes, p.IndexBytes = engine.String, format.String, rows.Int64, data.Int64, index.Int64
	// Table names are [A-Za-z0-9_] (ident.Validate): the tablespace name
	// needs no encoding. No row: the table is in the system tablespace
	// or not InnoDB.
	err = q.db.QueryRowContext(ctx, "SELECT FILE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES WHERE NAME = ?",
		q.cfg.Schema+"/"+q.cfg.Table).Scan(&p.FileBytes)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("apply schema: read the tablespace size of %s: %w", p.Table, err)
	}
	return p, nil
}

// toolsComment is the part of Script for a mapped table: the same change
// to the topic table as one gh-ost and one pt-online-schema-change command,
// as SQL comments (the script stays valid to pipe into mariadb), for a
// table on which MariaDB has no online path.
func (c Config) toolsComment() string {
	if !c.Mapped {
		return ""
	}
	var parts []string
	for _, stmt := range c.DDL() {
		base, _, ok := splitOnline(stmt)
		if !ok {
			continue
		}
		_, body, _ := strings.Cut(base, "\n  ")
		parts = append(parts, strings.Split(body, ",\n  ")...)
	}
	alter := shellQuote(strings.Join(parts, ", "))
	var b strings.Builder
	b.WriteString(`
-- Big tables. The ALTERs above run online: columns with ALGORITHM=INSTANT,
-- the indexes built with ALGORITHM=INPLACE, LOCK=NONE (writes go on; each
-- replica replays the index build and lags as long as it takes). Where
-- MariaDB has no online path (some engines, row formats and full-text
-- indexes), it refuses the ALTER and "nonqueue schema apply" prints the
-- plan and its cost and stops unless given --allow-blocking. Instead, make
-- the same change with an online schema-change tool first; this script is
-- then a no-op on the table (IF NOT EXISTS). Fill in the primary's address
-- and a user; try it with --dry-run (pt-osc) or --noop (gh-ost) first.
-- Generated columns need a recent tool version; gh-ost on MariaDB also
-- needs binlog_format=ROW and binlog_row_image=FULL.
--
`)
	fmt.Fprintf(&b, "-- gh-ost --host=PRIMARY --port=3306 --user=USER --ask-pass --allow-on-master \\\n--   --database=%s --table=%s \\\n--   --alter=%s \\\n--   --execute\n--\n",
		shellQuote(c.Schema), shellQuote(c.Table), alter)
	fmt.Fprintf(&b, "-- pt-online-schema-change --ask-pass \\\n--   --alter=%s \\\n--   %s \\\n--   --execute\n",
		alter, shellQuote(fmt.Sprintf("h=PRIMARY,P=3306,u=USER,D=%s,t=%s", c.Schema, c.Table)))
	return b.String()
}

// shellQuote quotes s for a POSIX shell: in single quotes, each single
// quote inside closed, escaped and reopened.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
