package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// ErrTriggerMissing is wrapped by CheckSchema's error when the request
// trigger (Config.RequestTrigger) is not installed, or not in its current
// version: the application's own re-requests would then be lost by a run
// in flight.
var ErrTriggerMissing = errors.New("request trigger missing or outdated")

// triggerPrivilegeHint says what creating the request trigger needs; it is
// added to the server's error when that is refused.
const triggerPrivilegeHint = "creating the request trigger needs the TRIGGER privilege on the topic table and, " +
	"with binary logging on, SUPER or log_bin_trust_function_creators=1 on the primary"

const triggerBodySQL = `SELECT /* nonqueue schema */ ACTION_STATEMENT FROM information_schema.TRIGGERS
 WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME = ? AND EVENT_OBJECT_TABLE = ? AND ACTION_TIMING = ? AND EVENT_MANIPULATION = ?`

// triggerCurrent reports whether t is installed with its current body.
// information_schema.TRIGGERS lists only the triggers of tables the
// account has the TRIGGER privilege on.
func (q *Queue) triggerCurrent(ctx context.Context, t Trigger) (bool, error) {
	var body string
	err := q.db.QueryRowContext(ctx, triggerBodySQL, t.Schema, t.Name, t.Table, t.Timing, t.Event).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read trigger %s.%s: %w", t.Schema, t.Name, err)
	}
	return body == t.Body, nil
}

// alreadyApplied reports whether stmt, a statement of Config.DDL, need
// not run: it is the request trigger's, and that trigger is installed in
// its current version. CREATE OR REPLACE TRIGGER (and IF NOT EXISTS alike)
// waits for the table's metadata lock even when nothing changes, behind
// any long query of the application's; this read does not.
func (q *Queue) alreadyApplied(ctx context.Context, stmt string) (bool, error) {
	t := q.cfg.RequestTrigger()
	if stmt != t.Create() {
		return false, nil
	}
	return q.triggerCurrent(ctx, t)
}

// checkTrigger returns an error wrapping ErrTriggerMissing when the
// request trigger is not installed in its current version.
func (q *Queue) checkTrigger(ctx context.Context) error {
	t := q.cfg.RequestTrigger()
	ok, err := q.triggerCurrent(ctx, t)
	if err != nil {
		return fmt.Errorf("schema check: %w", err)
	}
	if !ok {
		return fmt.Errorf("schema check: trigger %s.%s on %s: %w (schema apply installs it; %s; the account needs TRIGGER on the table to see it)",
			t.Schema, t.Name, t.Table, ErrTriggerMissing, triggerPrivilegeHint)
	}
	return nil
}

// explainDDLError adds what to grant to the server's refusal of the
// trigger: 1419 (no SUPER with binary logging on), 1142 (no TRIGGER).
func explainDDLError(err error) error {
	var me *mysql.MySQLError
	if errors.As(err, &me) && (me.Number == 1419 || (me.Number == 1142 && strings.Contains(strings.ToUpper(me.Message), "TRIGGER"))) {
		return fmt.Errorf("%w (%s)", err, triggerPrivilegeHint)
	}
	return err
}
