package queue

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// Keys of the map StateCounts returns. Every key is always present, zero
// when no topic is in that state. All but StateCountRequired partition the
// table: each topic is in exactly one of them, the first that matches in
// this order (the same rule as the dashboard's TopicState in status.go, so
// the metrics and the dashboard agree).
const (
	// StateCountRunning: claimed by an instance (running <> 0).
	StateCountRunning = "running"
	// StateCountParked: parked after too many failed attempts; it waits
	// for a new request.
	StateCountParked = "parked"
	// StateCountInactive: its active value is not one of
	// Config.ActiveValues (or is NULL), so no instance claims it, requested
	// or not.
	StateCountInactive = "inactive"
	// StateCountIdle: active, nothing requested (required <= 0).
	StateCountIdle = "idle"
	// StateCountDue: requested, active and due now: claimable by any
	// instance whose minimum priority it meets.
	StateCountDue = "due"
	// StateCountBackoff: requested and active, not due before a date in
	// the future set by a failed attempt (attempts > 0).
	StateCountBackoff = "backoff"
	// StateCountScheduled: requested and active, not due before a date in
	// the future that no failure set (a request with a delay).
	StateCountScheduled = "scheduled"
	// StateCountRequired counts every topic with required > 0, whatever
	// its state above (due, backoff and scheduled ones, and requested
	// topics that are running, parked or inactive): it overlaps the
	// others, so sums must leave it out.
	StateCountRequired = "required"
)

// StateCountKeys returns the keys of StateCounts' map in display order, the
// partition first and StateCountRequired last.
func StateCountKeys() []string {
	return []string{
		StateCountDue, StateCountRunning, StateCountBackoff, StateCountScheduled,
		StateCountParked, StateCountInactive, StateCountIdle, StateCountRequired,
	}
}

// stateCountSQL counts topics per state in one statement, so both halves
// read the same snapshot. The first half is COUNT(*), which InnoDB serves
// from the smallest secondary index (nq_lease). The second half groups
// only the rows that are not idle; it must read rows, because parked_at,
// active and attempts are in no index and a parked topic is
// indistinguishable from an idle one in nq_claim. So its cost grows with
// the topics that are not idle: a clustered scan with a cheap WHERE, then
// grouping the survivors. Both alternatives cost more: the nq_claim range
// with a primary-key lookup per requested row (for active and attempts),
// and one SUM(...) per state over every row. idle is the first half minus
// the second. Each {active} list takes the active values as
// arguments.
const stateCountSQL = `SELECT /* nonqueue metrics */ 0 AS state, 0 AS req, COUNT(*) AS n, NULL AS oldest_us FROM {t}
UNION ALL
SELECT /* nonqueue metrics */ CASE
  WHEN {running} <> 0 THEN 1
  WHEN {parked} IS NOT NULL THEN 2
  WHEN ({activecol} IN ({active})) IS NOT TRUE THEN 3
  WHEN {due} <= NOW(6) THEN 4
  WHEN {attempts} > 0 THEN 5
  ELSE 6 END AS state,
 {required} > 0 AS req, COUNT(*) AS n, TIMESTAMPDIFF(MICROSECOND, MIN({due}), NOW(6)) AS oldest_us
FROM {t}
WHERE {running} <> 0 OR {parked} IS NOT NULL OR ({activecol} IN ({active})) IS NOT TRUE OR {required} > 0
GROUP BY state, req`

// stateCountName maps stateCountSQL's state codes to map keys; "" for a
// code it does not produce.
func stateCountName(code int) string {
	switch code {
	case 1:
		return StateCountRunning
	case 2:
		return StateCountParked
	case 3:
		return StateCountInactive
	case 4:
		return StateCountDue
	case 5:
		return StateCountBackoff
	case 6:
		return StateCountScheduled
	}
	return ""
}

func (q *Queue) stateCountStatement() string {
	c := q.cfg.Columns
	qt := ident.Quote
	active := strings.TrimSuffix(strings.Repeat("?, ", len(q.cfg.ActiveValues)), ", ")
	return strings.NewReplacer(
		"{t}", ident.Qualified(q.cfg.Schema, q.cfg.Table), "{active}", active,
		"{running}", qt(c.Running), "{parked}", qt(c.ParkedAt), "{activecol}", qt(c.Active),
		"{due}", qt(c.Due), "{attempts}", qt(c.Attempts), "{required}", qt(c.Required),
	).Replace(stateCountSQL)
}

// StateCounts counts the topic table's topics per state (the StateCount*
// keys, all present) and returns how long the oldest due topic has been
// due on the primary's clock (0 when none is due): the backlog's age, which
// grows when instances cannot keep up. It runs one read-only statement on
// the primary; its cost grows with the table (a scan of the rows that are
// not idle, see stateCountSQL: a fraction of a second per million
// topics), so callers should bound it with ctx and not run it more
// often than a metrics scrape. On error the map is nil; nothing is changed
// either way.
func (q *Queue) StateCounts(ctx context.Context) (map[string]int64, time.Duration, error) {
	args := append(append([]any{}, q.sql.activeArgs...), q.sql.activeArgs...)
	rows, err := q.db.QueryContext(ctx, q.stateCountStatement(), args...)
	if err != nil {
		return nil, 0, fmt.Errorf("count topics per state: %w", err)
	}
	defer rows.Close()
	counts := make(map[string]int64, len(StateCountKeys()))
	for _, k := range StateCountKeys() {
		counts[k] = 0
	}
	var total, other int64
	var oldest time.Duration
	for rows.Next() {
		var state int
		var req bool
		var n int64
		var oldestUS sql.NullInt64
		if err := rows.Scan(&state, &req, &n, &oldestUS); err != nil {
			return nil, 0, fmt.Errorf("count topics per state: %w", err)
		}
		if state == 0 {
			total = n
			continue
		}
		name := stateCountName(state)
		if name == "" {
			return nil, 0, fmt.Errorf("count topics per state: unknown state code %d", state)
		}
		counts[name] += n
		other += n
		if req {
			counts[StateCountRequired] += n
		}
		if state == 4 && oldestUS.Valid {
			oldest = max(oldest, time.Duration(oldestUS.Int64)*time.Microsecond)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("count topics per state: %w", err)
	}
	// Rows inserted between the halves cannot make this negative: one
	// statement reads one snapshot. Clamp anyway rather than report a
	// negative count.
	counts[StateCountIdle] = max(total-other, 0)
	return counts, oldest, nil
}
