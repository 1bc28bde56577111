package queue_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// Periodic refresh (issue 14, part 3): the fenced finish of a run
// schedules the next one. These tests drive the protocol steps directly on
// both kinds of topic table; cmd/nonqueue's refresh tests run it with
// worker processes on replicas.

// setRefresh sets topic id's own refresh interval column (NULL: "NULL").
func (a *appTable) setRefresh(t *testing.T, id int64, secs string) {
	t.Helper()
	a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = %s WHERE `%s` = %d", a.name(), a.cfg.Columns.Refresh, secs, a.cfg.Columns.ID, id))
}

// makeDue moves topic id's due date into the past (an application
// request, as far as the trigger is concerned).
func (a *appTable) makeDue(t *testing.T, id int64) {
	t.Helper()
	a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW() - INTERVAL 5 SECOND WHERE `%s` = %d", a.name(), a.cfg.Columns.Due, a.cfg.Columns.ID, id))
}

// elapse moves topic id's due date into the past as time passing would,
// not as a request: makeDue's write is one (the request trigger takes a
// changed date of a required topic for the application's re-request, which
// unparks), while a write that also changes running is one of nonqueue's
// own steps to the trigger, so it is left alone.
func (a *appTable) elapse(t *testing.T, id int64) {
	t.Helper()
	c := a.cfg.Columns
	a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW() - INTERVAL 5 SECOND, `%s` = -1 WHERE `%s` = %d", a.name(), c.Due, c.Running, c.ID, id))
	a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = 0 WHERE `%s` = %d", a.name(), c.Running, c.ID, id))
}

// wantDueIn fails unless topic id is due about secs from now (the mapped
// table keeps whole seconds).
func (a *appTable) wantDueIn(t *testing.T, id int64, secs float64, what string) {
	t.Helper()
	if d := a.dueSecsFromNow(t, id); d < secs-3 || d > secs+1 {
		t.Fatalf("%s: topic %d due %.1fs from now, want about %.0fs", what, id, d, secs)
	}
}

// TestRefreshFinishSchedules: with a refresh interval the finish leaves
// the topic required at the refresh scope, due interval after the finish,
// attempts reset: the configured default for a topic whose column is NULL,
// the topic's own value otherwise, and none for a topic whose column is 0.
// The finish is not taken for a request by the request trigger (the
// request version does not move), the topic pages show the interval, the
// refresh run is claimed with the refresh scope, and the finish of a claim
// that was taken back schedules nothing.
func TestRefreshFinishSchedules(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, func(c *queue.Config) { c.RefreshInterval = time.Hour }, nil)
			for id := int64(7); id <= 9; id++ {
				a.add(t, id, 2, -60)
			}
			a.setRefresh(t, 8, "60")
			a.setRefresh(t, 9, "0")
			if r := a.row(t, 8); r.reqVersion != 0 {
				t.Fatalf("setting the refresh column bumped the request version to %d: it is no request", r.reqVersion)
			}
			for id := int64(7); id <= 9; id++ {
				c := a.claim(t, id, 100+id)
				if c.Scope != queue.ScopeFull {
					t.Fatalf("first claim of %d: scope %d, want the request's full", id, c.Scope)
				}
				if err := a.q.Finish(a.ctx, c); err != nil {
					t.Fatal(err)
				}
				r := a.row(t, id)
				if r.reqVersion != c.RequestVersion || r.claimedV != c.RequestVersion {
					t.Fatalf("topic %d: the finish moved the request version %d -> %d (claimed %d): the trigger took it for a request",
						id, c.RequestVersion, r.reqVersion, r.claimedV)
				}
				if r.running != 0 || r.attempts != 0 || r.lease.Valid {
					t.Fatalf("topic %d after the finish: %+v", id, r)
				}
			}
			if r := a.row(t, 7); r.required != queue.ScopePartial {
				t.Fatalf("topic 7 (default interval): required %d, want partial (the refresh scope)", r.required)
			}
			a.wantDueIn(t, 7, 3600, "the configured default")
			if r := a.row(t, 8); r.required != queue.ScopePartial {
				t.Fatalf("topic 8 (own interval): required %d, want partial", r.required)
			}
			a.wantDueIn(t, 8, 60, "the topic's own interval")
			if r := a.row(t, 9); r.required != 0 {
				t.Fatalf("topic 9 (refresh 0): required %d, want 0 (no refresh)", r.required)
			}
			if _, err := a.q.Claim(a.ctx, &queue.ClaimParams{InstanceID: 200}); !errors.Is(err, queue.ErrNoneDue) {
				t.Fatalf("claim right after the finishes: %v, want ErrNoneDue (the refresh is due later)", err)
			}

			// The topic pages.
			for _, w := range []struct {
				id    int64
				state queue.TopicState
				every time.Duration
				own   bool
			}{{7, queue.TopicScheduled, time.Hour, false}, {8, queue.TopicScheduled, time.Minute, true}, {9, queue.TopicIdle, 0, true}} {
				tr, err := a.q.Topic(a.ctx, w.id)
				if err != nil {
					t.Fatal(err)
				}
				if tr.State != w.state || tr.RefreshInterval != w.every || tr.RefreshOwn != w.own {
					t.Errorf("topic %d: state %s, refresh %v own %v; want %s, %v, %v", w.id, tr.State, tr.RefreshInterval, tr.RefreshOwn, w.state, w.every, w.own)
				}
			}

			// The refresh run has the refresh scope; its claim is then
			// taken back, and that claim's late finish schedules nothing.
			a.makeDue(t, 8)
			c := a.claim(t, 8, 201)
			if c.Scope != queue.ScopePartial {
				t.Fatalf("refresh run of 8: scope %d, want partial", c.Scope)
			}
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW(6) - INTERVAL 1 SECOND WHERE `%s` = 8", a.name(), a.cfg.Columns.LeaseUntil, a.cfg.Columns.ID))
			if reaped, err := a.q.Reap(a.ctx, 900, 10); err != nil || len(reaped) != 1 {
				t.Fatalf("reap: %+v, %v", reaped, err)
			}
			before := a.dueSecsFromNow(t, 8)
			if err := a.q.Finish(a.ctx, c); !errors.Is(err, queue.ErrClaimLost) {
				t.Fatalf("finish of a reaped claim: %v, want ErrClaimLost", err)
			}
			if after := a.dueSecsFromNow(t, 8); after > before+1 || after > 0 {
				t.Fatalf("a lost claim's finish moved the due date: %.1fs -> %.1fs from now", before, after)
			}
			if r := a.row(t, 8); r.attempts != 1 || r.required != queue.ScopePartial {
				t.Fatalf("after the reap: attempts %d, required %d; want 1 and partial", r.attempts, r.required)
			}
		})
	}
}

// TestRefreshKeepsRequestDuringRun: a request that arrives during a run
// (the application's plain UPDATE, or nonqueue's) wins over the schedule
// the finish would make: its higher scope is kept, and the earlier of its
// date and finish + interval. The run after it schedules the refresh
// again at the refresh scope.
func TestRefreshKeepsRequestDuringRun(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, func(c *queue.Config) { c.RefreshInterval = time.Minute }, nil)
			a.add(t, 7, 2, -60)

			// A request for now during the run: full scope, due at once.
			c := a.claim(t, 7, 101)
			a.exec(t, a.appRequest(7, "NOW()"))
			if err := a.q.Finish(a.ctx, c); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != queue.ScopeFull || r.dueInFuture {
				t.Fatalf("after a request for now during the run: required %d, due in the future %v; want full, due now", r.required, r.dueInFuture)
			}
			c = a.claim(t, 7, 102)
			if c.Scope != queue.ScopeFull {
				t.Fatalf("the requested run: scope %d, want full", c.Scope)
			}
			if err := a.q.Finish(a.ctx, c); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != queue.ScopePartial {
				t.Fatalf("after the requested run: required %d, want the refresh's partial", r.required)
			}
			a.wantDueIn(t, 7, 60, "after the requested run")

			// A request for in ten minutes during the run: the refresh
			// (one minute) is earlier and takes the request's full scope.
			a.makeDue(t, 7)
			c = a.claim(t, 7, 103)
			a.exec(t, a.appRequest(7, "NOW() + INTERVAL 10 MINUTE"))
			if err := a.q.Finish(a.ctx, c); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != queue.ScopeFull {
				t.Fatalf("after a later request during the run: required %d, want full", r.required)
			}
			a.wantDueIn(t, 7, 60, "a later request during the run")

			// With an hour's interval of its own, the request's ten minutes
			// are the earlier date.
			a.setRefresh(t, 7, "3600")
			a.makeDue(t, 7)
			c = a.claim(t, 7, 104)
			a.exec(t, a.appRequest(7, "NOW() + INTERVAL 10 MINUTE"))
			if err := a.q.Finish(a.ctx, c); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != queue.ScopeFull {
				t.Fatalf("after an earlier request during the run: required %d, want full", r.required)
			}
			a.wantDueIn(t, 7, 600, "a request earlier than the refresh")

			// nonqueue's own request during the run, partial: the refresh
			// scope stays, the date is the request's (now).
			a.makeDue(t, 7)
			c = a.claim(t, 7, 105)
			if _, err := a.q.Request(a.ctx, &queue.RequestParams{IDs: []int64{7}, Scope: queue.ScopePartial}); err != nil {
				t.Fatal(err)
			}
			if err := a.q.Finish(a.ctx, c); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != queue.ScopeFull || r.dueInFuture {
				// The topic was claimed at full (the last request's scope),
				// and a request never lowers a pending scope.
				t.Fatalf("after nonqueue's request during the run: required %d, due in the future %v; want full, due now", r.required, r.dueInFuture)
			}
		})
	}
}

// TestRefreshFailuresKeepBackoff: a failed run is released with the
// failure back-off, not the refresh interval, and keeps its scope; a reaped
// run counts an attempt and stays due; parking stops the refresh until
// the topic is unparked. The next successful run resets the attempts and
// schedules the refresh again: failures never end the schedule.
func TestRefreshFailuresKeepBackoff(t *testing.T) {
	t.Parallel()
	a := newAppTable(t, "own", func(c *queue.Config) { c.RefreshInterval = time.Hour; c.MaxAttempts = 3 }, nil)
	a.add(t, 7, 2, -60)
	fail := &queue.ReleaseParams{Error: "procedure failed", CountAttempt: true, Backoff: 10 * time.Minute}

	c := a.claim(t, 7, 101)
	if parked, err := a.q.Release(a.ctx, c, fail); err != nil || parked {
		t.Fatalf("release: parked %v, %v", parked, err)
	}
	if r := a.row(t, 7); r.required != queue.ScopeFull || r.attempts != 1 {
		t.Fatalf("after a failure: required %d, attempts %d; want full and 1", r.required, r.attempts)
	}
	a.wantDueIn(t, 7, 600, "after a failure (the back-off, not the interval)")

	// The second run's holder dies: reaped, an attempt, due again at once.
	a.makeDue(t, 7)
	a.claim(t, 7, 102)
	a.exec(t, "UPDATE topic SET lease_until = NOW(6) - INTERVAL 1 SECOND WHERE id = 7")
	if reaped, err := a.q.Reap(a.ctx, 900, 10); err != nil || len(reaped) != 1 {
		t.Fatalf("reap: %+v, %v", reaped, err)
	}
	if r := a.row(t, 7); r.required != queue.ScopeFull || r.attempts != 2 || r.dueInFuture || r.running != 0 {
		t.Fatalf("after the reap: %+v; want full, 2 attempts, due now", r)
	}

	// Third failure: parked; the refresh stops (nothing claimable).
	c = a.claim(t, 7, 103)
	if c.Attempts != 2 {
		t.Fatalf("third claim: attempts %d, want 2 (the reap's counted)", c.Attempts)
	}
	if parked, err := a.q.Release(a.ctx, c, fail); err != nil || !parked {
		t.Fatalf("release at the attempt limit: parked %v, %v; want parked", parked, err)
	}
	a.elapse(t, 7) // due, with no request: a parked topic stays parked
	if _, err := a.q.Claim(a.ctx, &queue.ClaimParams{InstanceID: 104}); !errors.Is(err, queue.ErrNoneDue) {
		t.Fatalf("claim of a parked refreshed topic: %v, want ErrNoneDue", err)
	}

	// Unparked, it runs and the schedule resumes.
	if ok, err := a.q.Unpark(a.ctx, 7); err != nil || !ok {
		t.Fatalf("unpark: %v, %v", ok, err)
	}
	c = a.claim(t, 7, 105)
	if err := a.q.Finish(a.ctx, c); err != nil {
		t.Fatal(err)
	}
	if r := a.row(t, 7); r.required != queue.ScopePartial || r.attempts != 0 || r.parked.Valid {
		t.Fatalf("after the successful run: %+v; want partial, 0 attempts, not parked", r)
	}
	a.wantDueIn(t, 7, 3600, "after the successful run")
}

// openApplied opens a queue on cfg and applies the schema, failing on a
// refusal with its plan.
func openApplied(t *testing.T, b *bundle, cfg queue.Config, o queue.ApplyOptions) (*queue.Queue, *queue.BlockingPlan) {
	t.Helper()
	q, err := queue.Open(b.ctx, env.Primary(""), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	plan, err := q.ApplySchemaWith(b.ctx, o)
	if err != nil {
		var be *queue.BlockingError
		if errors.As(err, &be) {
			t.Fatalf("%v\n%s", err, be.Plan)
		}
		t.Fatal(err)
	}
	return q, plan
}

// TestRefreshColumnUpgrade: a mapped table set up before periodic refresh
// (its claimable column VIRTUAL and indexed) cannot get the refresh column
// online: MariaDB adds no column online to a table with an indexed virtual
// column. Schema apply leaves that column out, says so in its plan and
// succeeds; the workers keep working, every topic taking the configured
// interval; the check warns. With AllowBlocking the column is added, and
// a queue opened then reads each topic's own interval.
func TestRefreshColumnUpgrade(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, s := range []string{topicFilterDDL,
		"INSERT INTO TopicFilter SELECT seq, CONCAT('topic ', seq), 2, NOW() - INTERVAL 1 MINUTE, 0, 0, 1 FROM seq_1_to_100"} {
		if _, err := b.db.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	cfg := topicFilterConfig(b.cfg.Schema)
	cfg.RefreshInterval = time.Hour
	openApplied(t, b, cfg, queue.ApplyOptions{})
	// What the previous version left: everything but the refresh column.
	if _, err := b.db.ExecContext(b.ctx, "ALTER TABLE TopicFilter DROP COLUMN refresh_interval"); err != nil {
		t.Fatal(err)
	}
	q, plan := openApplied(t, b, cfg, queue.ApplyOptions{})
	if plan == nil || len(plan.Steps) != 0 || len(plan.Skipped) != 1 || !strings.Contains(plan.Skipped[0].SQL, "ADD COLUMN IF NOT EXISTS `refresh_interval`") {
		t.Fatalf("schema apply over a table with an indexed virtual column: plan %+v; want the refresh column left out", plan)
	}
	if !strings.Contains(plan.String(), "left out 1. (optional; ALGORITHM=INSTANT refused: ") {
		t.Errorf("plan does not say what was left out:\n%s", plan)
	}
	if _, err := q.CheckRefresh(b.ctx); !errors.Is(err, queue.ErrNoRefreshColumn) {
		t.Fatalf("check without the column: %v, want ErrNoRefreshColumn", err)
	}
	if err := q.CheckSchema(b.ctx); err != nil {
		t.Fatalf("schema check without the optional column: %v", err)
	}
	// Claim, finish, topic page: the configured interval for all.
	a := &appTable{bundle: &bundle{q: q, db: b.db, cfg: q.Config(), ctx: b.ctx}, kind: "mapped"}
	c := a.claim(t, 1, 101)
	if err := q.Finish(b.ctx, c); err != nil {
		t.Fatalf("finish without the refresh column: %v", err)
	}
	a.wantDueIn(t, 1, 3600, "finish without the column")
	if tr, err := q.Topic(b.ctx, 1); err != nil || tr.RefreshInterval != time.Hour || tr.RefreshOwn {
		t.Fatalf("topic page without the column: %+v, %v", tr, err)
	}

	// Allowed to block, the column comes in; per-topic intervals work.
	q, plan = openApplied(t, b, cfg, queue.ApplyOptions{AllowBlocking: true})
	if plan == nil || len(plan.Steps) != 1 || plan.Steps[0].Ran == "" {
		t.Fatalf("schema apply --allow-blocking: plan %+v; want the refresh column added", plan)
	}
	if _, err := q.CheckRefresh(b.ctx); err != nil {
		t.Fatalf("check after the column was added: %v", err)
	}
	a.q = q
	a.setRefresh(t, 2, "60")
	c = a.claim(t, 2, 102)
	if err := q.Finish(b.ctx, c); err != nil {
		t.Fatal(err)
	}
	a.wantDueIn(t, 2, 60, "the topic's own interval once the column is there")
}

// TestCheckRefreshColumn: a mapped table that already had a text column
// named refresh_interval keeps it (schema apply adds only missing
// columns): the check fails naming the key to map another, and the finish
// ignores that column (the configured interval applies). Mapped to
// another name on a table set up now, the column is added and the check
// passes.
func TestCheckRefreshColumn(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, s := range []string{topicFilterDDL, "ALTER TABLE TopicFilter ADD COLUMN refresh_interval VARCHAR(20) NULL",
		"INSERT INTO TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, refresh_interval) VALUES (1, 'x', 2, NOW() - INTERVAL 1 MINUTE, 'weekly')"} {
		if _, err := b.db.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	cfg := topicFilterConfig(b.cfg.Schema)
	cfg.RefreshInterval = time.Hour
	q, _ := openApplied(t, b, cfg, queue.ApplyOptions{})
	if _, err := q.CheckRefresh(b.ctx); !errors.Is(err, queue.ErrRefreshColumn) || !strings.Contains(err.Error(), "[topics.columns] refresh_interval") {
		t.Fatalf("check with a text column: %v, want ErrRefreshColumn naming the key", err)
	}
	a := &appTable{bundle: &bundle{q: q, db: b.db, cfg: q.Config(), ctx: b.ctx}, kind: "mapped"}
	c := a.claim(t, 1, 101)
	if err := q.Finish(b.ctx, c); err != nil {
		t.Fatalf("finish beside a text column of that name: %v", err)
	}
	a.wantDueIn(t, 1, 3600, "the configured interval beside a text column")

	b2 := setup(t, nil)
	if _, err := b2.db.ExecContext(b2.ctx, topicFilterDDL); err != nil {
		t.Fatal(err)
	}
	cfg = topicFilterConfig(b2.cfg.Schema)
	cfg.RefreshInterval = time.Hour
	cfg.Columns.Refresh = "influencerRefreshSecs"
	q, _ = openApplied(t, b2, cfg, queue.ApplyOptions{})
	msg, err := q.CheckRefresh(b2.ctx)
	if err != nil || !strings.HasPrefix(msg, "every 1h0m0s after each successful run, scope partial; a topic's influencerRefreshSecs column") {
		t.Fatalf("check with the column mapped elsewhere: %q, %v", msg, err)
	}
}
