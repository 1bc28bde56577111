package queue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// statsRow is one topic to insert for StateCounts; offsets are from the
// primary's now.
type statsRow struct {
	id, running       int64
	required, active  int
	due               time.Duration
	attempts          int
	parked            bool
	wantState, reason string
}

func (b *bundle) insertStatsRows(t *testing.T, rows []statsRow) {
	t.Helper()
	c := b.cfg.Columns
	stmt := fmt.Sprintf("INSERT INTO `%s`.`%s` (`%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s`) VALUES (?, ?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND, ?, IF(?, NOW(6), NULL), IF(? <> 0, NOW(6) + INTERVAL 1 MINUTE, NULL))",
		b.cfg.Schema, b.cfg.Table, c.ID, c.Running, c.Required, c.Active, c.Due, c.Attempts, c.ParkedAt, c.LeaseUntil)
	for _, r := range rows {
		if _, err := b.db.ExecContext(b.ctx, stmt, r.id, r.running, r.required, r.active, r.due.Microseconds(), r.attempts, r.parked, r.running); err != nil {
			t.Fatalf("insert topic %d: %v", r.id, err)
		}
	}
}

// TestStateCounts: one or two topics per state, each placed by the first
// rule that matches; required overlaps; idle is the rest; the oldest due
// age is the oldest due topic's, not an inactive or future one's. Run on
// nonqueue's default columns and on renamed ones (the statement is built
// from the configured names).
func TestStateCounts(t *testing.T) {
	t.Parallel()
	rows := []statsRow{
		{id: 1, running: 77, required: 2, active: 1, due: -time.Minute, wantState: "running", reason: "held by an instance beats everything"},
		{id: 2, required: 1, active: 1, due: -2 * time.Hour, attempts: 5, parked: true, wantState: "parked", reason: "parked beats due (and its old date is not the backlog's age)"},
		{id: 3, required: 1, active: 0, due: -3 * time.Hour, wantState: "inactive", reason: "requested but inactive: never claimed"},
		{id: 4, required: 0, active: 3, due: -time.Hour, wantState: "inactive", reason: "inactive and not requested"},
		{id: 5, required: 0, active: 1, due: -time.Hour, wantState: "idle", reason: "nothing requested"},
		{id: 6, required: 0, active: 2, due: time.Hour, attempts: 1, wantState: "idle", reason: "second active value; attempts do not matter without a request"},
		{id: 7, required: 1, active: 1, due: -time.Hour, wantState: "due", reason: "the oldest due topic"},
		{id: 8, required: 2, active: 2, due: -10 * time.Second, wantState: "due", reason: "due, second active value"},
		{id: 9, required: 1, active: 1, due: time.Hour, attempts: 2, wantState: "backoff", reason: "future date after a failure"},
		{id: 10, required: 2, active: 1, due: time.Hour, wantState: "scheduled", reason: "future date from a delayed request"},
	}
	for _, tc := range []struct {
		name string
		cols queue.Columns
	}{
		{"default columns", queue.Columns{}},
		{"renamed columns", queue.Columns{ID: "topicFilterId", Required: "recalcReqd", Due: "recalcDate", Running: "recalcRunning", Active: "isActive",
			Attempts: "tries", ParkedAt: "parkedSince", LeaseUntil: "leaseEnd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *queue.Config) { c.Columns = tc.cols; c.ActiveValues = []int64{1, 2} })
			counts, oldest, err := b.q.StateCounts(b.ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range queue.StateCountKeys() {
				if counts[k] != 0 {
					t.Errorf("empty table: %s = %d", k, counts[k])
				}
			}
			if oldest != 0 {
				t.Errorf("empty table: oldest due age %v", oldest)
			}

			b.insertStatsRows(t, rows)
			counts, oldest, err = b.q.StateCounts(b.ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int64{}
			for _, k := range queue.StateCountKeys() {
				want[k] = 0
			}
			for _, r := range rows {
				want[r.wantState]++
				if r.required > 0 {
					want[queue.StateCountRequired]++
				}
			}
			if len(counts) != len(want) {
				t.Errorf("keys %v, want %v", counts, want)
			}
			for k, n := range want {
				if counts[k] != n {
					var why []string
					for _, r := range rows {
						if r.wantState == k {
							why = append(why, fmt.Sprintf("topic %d: %s", r.id, r.reason))
						}
					}
					t.Errorf("%s = %d, want %d %v", k, counts[k], n, why)
				}
			}
			if oldest < time.Hour || oldest > time.Hour+time.Minute {
				t.Errorf("oldest due age %v, want topic 7's hour", oldest)
			}
		})
	}
}

// BenchmarkStateCounts: the count on 1M topics, 10% of them not idle
// (due, backoff, scheduled, parked, inactive, running), as a metrics
// scrape would run it. Seeding (~10 s) is before the timer.
func BenchmarkStateCounts(b *testing.B) {
	bb := setup(b, nil)
	c := bb.cfg.Columns
	seed := fmt.Sprintf(`INSERT INTO `+"`%s`.`%s`"+` (%s, %s, %s, %s, %s, %s, %s, %s)
SELECT seq,
  IF(seq %% 100 < 90, 0, 1 + seq %% 2),
  CASE WHEN seq %% 100 IN (92, 93) THEN NOW(6) + INTERVAL 1 HOUR WHEN seq %% 100 = 94 THEN NOW(6) + INTERVAL 10 MINUTE
       ELSE NOW(6) - INTERVAL (seq %% 1000) SECOND END,
  seq %% 10,
  IF(seq %% 10000 = 95, 1001, 0),
  IF(seq %% 100 = 96 OR seq %% 1000 = 7, 0, 1),
  IF(seq %% 100 IN (92, 93, 97), 3, 0),
  IF(seq %% 100 = 97, NOW(6), NULL)
FROM seq_1_to_1000000`, bb.cfg.Schema, bb.cfg.Table, c.ID, c.Required, c.Due, c.Priority, c.Running, c.Active, c.Attempts, c.ParkedAt)
	if _, err := bb.db.ExecContext(bb.ctx, seed); err != nil {
		b.Fatal(err)
	}
	if _, err := bb.db.ExecContext(bb.ctx, fmt.Sprintf("ANALYZE TABLE `%s`.`%s`", bb.cfg.Schema, bb.cfg.Table)); err != nil {
		b.Fatal(err)
	}
	var counts map[string]int64
	b.ResetTimer()
	for b.Loop() {
		var err error
		if counts, _, err = bb.q.StateCounts(bb.ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if counts[queue.StateCountIdle] < 800_000 {
		b.Fatalf("counts %v: seed not as planned", counts)
	}
}
