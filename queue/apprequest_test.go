package queue_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// The application's own re-request (issue 12, item 1): the original
// application requests a recalc with a plain UPDATE, not through nonqueue.
// A run in flight must keep it, whatever way the run ends.

// appTable is a topic table the application writes to directly.
type appTable struct {
	*bundle
	kind string
}

// topicKinds are the two kinds of topic table: nonqueue's own, and the
// original TopicFilter mapped.
var topicKinds = []string{"own", "mapped"}

// newAppTable gives t a topic table of the given kind. before, if set,
// runs on the application's table before the schema is applied (the
// application's own triggers).
func newAppTable(t *testing.T, kind string, tweak func(*queue.Config), before func(*bundle)) *appTable {
	t.Helper()
	b := setup(t, tweak)
	if kind == "own" {
		if before != nil {
			before(b)
		}
		return &appTable{bundle: b, kind: kind}
	}
	// The original table, as the application has it.
	if _, err := b.db.ExecContext(b.ctx, `CREATE TABLE TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1) ENGINE=InnoDB`); err != nil {
		t.Fatal(err)
	}
	cfg := b.cfg
	cfg.Table, cfg.Mapped = "TopicFilter", true
	cfg.ActiveValues = []int64{1, 2}
	cfg.Columns = queue.Columns{
		ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
		Priority: "influencerPriority", Running: "influencerRunning", Active: "active",
	}
	mb := &bundle{db: b.db, ctx: b.ctx}
	if before != nil {
		mb.cfg = cfg.WithDefaults()
		before(mb)
	}
	q, err := queue.Open(b.ctx, env.Primary(""), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(b.ctx); err != nil {
		t.Fatalf("apply mapped schema: %v", err)
	}
	mb.q, mb.cfg = q, q.Config()
	return &appTable{bundle: mb, kind: kind}
}

func (a *appTable) name() string { return "`" + a.cfg.Schema + "`.`" + a.cfg.Table + "`" }

// add inserts a topic the way the application would: required, due at
// NOW() + dueSecs, active.
func (a *appTable) add(t *testing.T, id int64, required, dueSecs int) {
	t.Helper()
	stmt := "INSERT INTO " + a.name() + " (id, required, due) VALUES (?, ?, NOW() + INTERVAL ? SECOND)"
	if a.kind == "mapped" {
		stmt = "INSERT INTO " + a.name() + " (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate) VALUES (?, 'app topic', ?, NOW() + INTERVAL ? SECOND)"
	}
	if _, err := a.db.ExecContext(a.ctx, stmt, id, required, dueSecs); err != nil {
		t.Fatalf("add topic %d: %v", id, err)
	}
}

// appRequest is the application's plain re-request of topic id, due at
// the given SQL date: for the mapped table and id 7 with "NOW()" exactly
// the original's statement.
func (a *appTable) appRequest(id int64, date string) string {
	if a.kind == "mapped" {
		return fmt.Sprintf("UPDATE TopicFilter SET influencerRecalcReqd = 2, influencerRecalcDate = %s WHERE topicFilterId = %d", date, id)
	}
	return fmt.Sprintf("UPDATE topic SET required = 2, due = %s WHERE id = %d", date, id)
}

func (a *appTable) exec(t *testing.T, stmt string) {
	t.Helper()
	if _, err := a.db.ExecContext(a.ctx, stmt); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

// claim claims and insists on topic id.
func (a *appTable) claim(t *testing.T, id, instance int64) *queue.Claim {
	t.Helper()
	c, err := a.q.Claim(a.ctx, &queue.ClaimParams{InstanceID: instance})
	if err != nil {
		t.Fatalf("claim topic %d: %v", id, err)
	}
	if c.TopicID != id {
		t.Fatalf("claimed topic %d, want %d", c.TopicID, id)
	}
	return c
}

// dueSecsFromNow reads how far the topic's due date is from the
// primary's now, in seconds (negative: due).
func (a *appTable) dueSecsFromNow(t *testing.T, id int64) float64 {
	t.Helper()
	c := a.cfg.Columns
	var d float64
	stmt := fmt.Sprintf("SELECT TIMESTAMPDIFF(MICROSECOND, NOW(6), `%s`) / 1e6 FROM %s WHERE `%s` = ?", c.Due, a.name(), c.ID)
	if err := a.db.QueryRowContext(a.ctx, stmt, id).Scan(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestAppRequestDuringRunSurvivesFinish: the application's plain UPDATE
// during a run bumps the request version (the heartbeat does not), the
// finish keeps the request, the topic is claimed a second time, and only
// the second finish clears it. The application's request and the claim
// land in the same whole second (the NOW() edge) and the request still
// counts; `nonqueue request` during a run bumps the version once, not
// twice.
func TestAppRequestDuringRunSurvivesFinish(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, nil, nil)
			a.add(t, 7, 0, -3600)

			// The first request, the claim and the re-request in one second of
			// the primary's clock, so the re-request writes the very due date
			// the claimed row had. Aligned to the start of a second; bounded.
			var first *queue.Claim
			for try := 0; ; try++ {
				if try == 5 {
					t.Fatal("could not fit request, claim and re-request into one second in 5 tries")
				}
				var frac float64
				for i := 0; i < 40; i++ {
					if err := a.db.QueryRowContext(a.ctx, "SELECT MICROSECOND(NOW(6)) / 1e6").Scan(&frac); err != nil {
						t.Fatal(err)
					}
					if frac < 0.3 {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				var s0 string
				a.db.QueryRowContext(a.ctx, "SELECT NOW()").Scan(&s0)
				a.exec(t, a.appRequest(7, "NOW()")) // the first request
				first = a.claim(t, 7, 101)
				if r := a.row(t, 7); r.claimedV != r.reqVersion {
					t.Fatalf("claimed version %d, request version %d: want equal at the claim", r.claimedV, r.reqVersion)
				}
				a.exec(t, a.appRequest(7, "NOW()")) // the re-request, during the run
				var s1 string
				a.db.QueryRowContext(a.ctx, "SELECT NOW()").Scan(&s1)
				if s0 == s1 {
					break
				}
				t.Logf("try %d crossed a second (%s, %s); again", try, s0, s1)
				if err := a.q.Finish(a.ctx, first); err != nil {
					t.Fatal(err)
				}
				a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = 0 WHERE `%s` = 7", a.name(), a.cfg.Columns.Required, a.cfg.Columns.ID))
			}
			r := a.row(t, 7)
			if r.reqVersion != r.claimedV+1 {
				t.Fatalf("after the application's re-request: request version %d, claimed %d; want one bump", r.reqVersion, r.claimedV)
			}
			// Heartbeats are nonqueue's own: no bump.
			if err := a.q.Heartbeat(a.ctx, first); err != nil {
				t.Fatal(err)
			}
			if r2 := a.row(t, 7); r2.reqVersion != r.reqVersion {
				t.Fatalf("heartbeat moved the request version %d -> %d", r.reqVersion, r2.reqVersion)
			}
			if err := a.q.Finish(a.ctx, first); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != 2 || r.running != 0 {
				t.Fatalf("after the first finish: required %d, running %d; want 2 and 0 (the re-request kept)", r.required, r.running)
			}

			// The second run: a nonqueue request during it bumps once (the
			// trigger leaves it alone), and its finish clears the request.
			second := a.claim(t, 7, 102)
			if _, err := a.q.Request(a.ctx, &queue.RequestParams{IDs: []int64{7}, Scope: queue.ScopeFull}); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.reqVersion != second.RequestVersion+1 {
				t.Fatalf("nonqueue request during the run: request version %d, claimed %d; want exactly one bump", r.reqVersion, second.RequestVersion)
			}
			if err := a.q.Finish(a.ctx, second); err != nil {
				t.Fatal(err)
			}
			third := a.claim(t, 7, 103)
			if err := a.q.Finish(a.ctx, third); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != 0 || r.running != 0 {
				t.Fatalf("after the last finish: required %d, running %d; want 0 and 0", r.required, r.running)
			}
			if _, err := a.q.Claim(a.ctx, &queue.ClaimParams{InstanceID: 104}); !errors.Is(err, queue.ErrNoneDue) {
				t.Fatalf("claim after the last finish: %v, want ErrNoneDue", err)
			}
			// The application's write that is no request (required stays 0)
			// bumps nothing.
			before := a.row(t, 7)
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW() + INTERVAL 1 HOUR WHERE `%s` = 7", a.name(), a.cfg.Columns.Due, a.cfg.Columns.ID))
			if r := a.row(t, 7); r.reqVersion != before.reqVersion {
				t.Fatalf("a date change of a topic not required bumped the request version")
			}
		})
	}
}

// TestReleaseKeepsAppRequest: a failed run that is released keeps an
// application request that arrived during it: the topic is not pushed
// back by the back-off past the date the request asked for, and it is not
// parked even at the attempt limit. Without a request during the run the
// same release backs off and parks.
func TestReleaseKeepsAppRequest(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, func(c *queue.Config) { c.MaxAttempts = 2 }, nil)
			fail := &queue.ReleaseParams{Error: "procedure failed", CountAttempt: true, Backoff: time.Hour}
			a.add(t, 7, 2, -60)
			a.add(t, 8, 0, -60)

			// Topic 7, first failure: re-requested for now during the run.
			c := a.claim(t, 7, 101)
			a.exec(t, a.appRequest(7, "NOW()"))
			if parked, err := a.q.Release(a.ctx, c, fail); err != nil || parked {
				t.Fatalf("release: parked %v, %v", parked, err)
			}
			if d := a.dueSecsFromNow(t, 7); d > 0 {
				t.Fatalf("due %.1fs from now after the release: the back-off delayed a request for now", d)
			}
			// Second failure, at the attempt limit, re-requested for in ten
			// minutes: not parked, due at the request's date, not the back-off's.
			c = a.claim(t, 7, 102)
			if c.Attempts != 1 {
				t.Fatalf("second claim: attempts %d, want 1", c.Attempts)
			}
			a.exec(t, a.appRequest(7, "NOW() + INTERVAL 10 MINUTE"))
			if parked, err := a.q.Release(a.ctx, c, fail); err != nil || parked {
				t.Fatalf("release at the attempt limit after a request: parked %v, %v; want not parked", parked, err)
			}
			r := a.row(t, 7)
			if r.parked.Valid || r.required != 2 || r.attempts != 2 {
				t.Fatalf("after the release: parked %v, required %d, attempts %d; want not parked, 2, 2", r.parked.Valid, r.required, r.attempts)
			}
			if d := a.dueSecsFromNow(t, 7); d < 9*60 || d > 11*60 {
				t.Fatalf("due %.0fs from now, want the request's 600s, not the back-off's 3600s", d)
			}

			// Control, topic 8: the same two failures with no request during
			// the runs back off and park.
			a.exec(t, a.appRequest(8, "NOW() - INTERVAL 1 MINUTE"))
			for i, wantParked := range []bool{false, true} {
				c := a.claim(t, 8, 103)
				parked, err := a.q.Release(a.ctx, c, fail)
				if err != nil || parked != wantParked {
					t.Fatalf("control release %d: parked %v, %v; want %v", i+1, parked, err, wantParked)
				}
				if d := a.dueSecsFromNow(t, 8); d < 3500 {
					t.Fatalf("control release %d: due %.0fs from now, want the back-off's 3600s", i+1, d)
				}
				// Due again for the next failure (not after the last: a
				// date change of a required topic is a request, which
				// unparks it).
				if !wantParked {
					a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = `%s` - INTERVAL 2 HOUR WHERE `%s` = 8", a.name(), a.cfg.Columns.Due, a.cfg.Columns.Due, a.cfg.Columns.ID))
				}
			}
			if r := a.row(t, 8); !r.parked.Valid {
				t.Fatalf("control topic not parked at the attempt limit")
			}
		})
	}
}

// TestReapKeepsAppRequest: a claim whose holder died is reaped; if the
// application re-requested the topic during the run, the rescue at the
// attempt limit does not park it and it runs again. The control topic,
// reaped in the same pass without a request, is parked.
func TestReapKeepsAppRequest(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, func(c *queue.Config) { c.MaxAttempts = 1 }, nil)
			a.add(t, 7, 2, -60)
			a.add(t, 8, 2, -30)
			requested := a.claim(t, 7, 101)
			control := a.claim(t, 8, 102)
			a.exec(t, a.appRequest(7, "NOW()"))
			// Both holders die: expire the leases without waiting.
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW(6) - INTERVAL 1 SECOND", a.name(), a.cfg.Columns.LeaseUntil))
			reaped, err := a.q.Reap(a.ctx, 900, 10)
			if err != nil || len(reaped) != 2 {
				t.Fatalf("reap: %+v, %v; want both", reaped, err)
			}
			if r := a.row(t, 7); r.parked.Valid || r.running != 0 || r.required != 2 {
				t.Fatalf("reaped after a request: parked %v, running %d, required %d; want claimable", r.parked.Valid, r.running, r.required)
			}
			if r := a.row(t, 8); !r.parked.Valid {
				t.Fatalf("control: reaped at the attempt limit without a request, not parked")
			}
			again := a.claim(t, 7, 103)
			if again.Token == requested.Token || again.Attempts != 1 {
				t.Fatalf("second run: %+v", again)
			}
			if err := a.q.Finish(a.ctx, again); err != nil {
				t.Fatal(err)
			}
			if r := a.row(t, 7); r.required != 0 {
				t.Fatalf("after the second run: required %d, want 0", r.required)
			}
			if err := a.q.Finish(a.ctx, control); !errors.Is(err, queue.ErrClaimLost) {
				t.Fatalf("the reaped control claim finished: %v", err)
			}
		})
	}
}

// TestAppTriggerCoexists: the application's own BEFORE UPDATE trigger on
// TopicFilter, there before nonqueue, keeps working beside nonqueue's,
// which runs after it and sees its changes to the row; claims work with
// both (a BEFORE UPDATE trigger keeps LAST_INSERT_ID out of the OK packet
// the one-statement claim used to read the claimed id from); applying the
// schema again leaves the triggers alone.
func TestAppTriggerCoexists(t *testing.T) {
	t.Parallel()
	a := newAppTable(t, "mapped", nil, func(b *bundle) {
		for _, s := range []string{
			"ALTER TABLE TopicFilter ADD COLUMN appUpdates INT NOT NULL DEFAULT 0",
			// The application's trigger counts every update, and caps the
			// scope at 2.
			`CREATE TRIGGER app_topicfilter_bu BEFORE UPDATE ON TopicFilter FOR EACH ROW BEGIN
  SET NEW.appUpdates = OLD.appUpdates + 1;
  IF NEW.influencerRecalcReqd > 2 THEN SET NEW.influencerRecalcReqd = 2; END IF;
END`,
		} {
			if _, err := b.db.ExecContext(b.ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	})
	type trig struct {
		name    string
		order   int
		created string
	}
	triggers := func() []trig {
		rows, err := a.db.QueryContext(a.ctx, `SELECT TRIGGER_NAME, ACTION_ORDER, CAST(CREATED AS CHAR) FROM information_schema.TRIGGERS
 WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'TopicFilter' ORDER BY ACTION_ORDER`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []trig
		for rows.Next() {
			var x trig
			if err := rows.Scan(&x.name, &x.order, &x.created); err != nil {
				t.Fatal(err)
			}
			out = append(out, x)
		}
		return out
	}
	got := triggers()
	if len(got) != 2 || got[0].name != "app_topicfilter_bu" || !strings.HasPrefix(got[1].name, "nq_request_") {
		t.Fatalf("triggers %+v: want the application's first, then nonqueue's", got)
	}
	if err := a.q.CheckSchema(a.ctx); err != nil {
		t.Fatalf("schema check: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // CREATED has centiseconds
	if err := a.q.ApplySchema(a.ctx); err != nil {
		t.Fatal(err)
	}
	if again := triggers(); fmt.Sprint(again) != fmt.Sprint(got) {
		t.Fatalf("the second apply touched the triggers: %+v, before %+v", again, got)
	}

	a.add(t, 7, 0, -60)
	var appUpdates int
	readApp := func() int {
		if err := a.db.QueryRowContext(a.ctx, "SELECT appUpdates FROM TopicFilter WHERE topicFilterId = 7").Scan(&appUpdates); err != nil {
			t.Fatal(err)
		}
		return appUpdates
	}
	// Scope 3 is capped by the application's trigger: ours sees its NEW.
	a.exec(t, "UPDATE TopicFilter SET influencerRecalcReqd = 3, influencerRecalcDate = NOW() WHERE topicFilterId = 7")
	c := a.claim(t, 7, 101)
	if c.Scope != 2 {
		t.Fatalf("claimed scope %d, want 2 (the application's trigger caps it)", c.Scope)
	}
	a.exec(t, a.appRequest(7, "NOW()"))
	if r := a.row(t, 7); r.reqVersion != c.RequestVersion+1 {
		t.Fatalf("request version %d after the application's re-request, claimed %d", r.reqVersion, c.RequestVersion)
	}
	if err := a.q.Finish(a.ctx, c); err != nil {
		t.Fatal(err)
	}
	// Request, claim, re-request, finish: four updates the application's
	// trigger saw.
	if n := readApp(); n != 4 {
		t.Fatalf("the application's trigger counted %d updates, want 4", n)
	}
	if r := a.row(t, 7); r.required != 2 {
		t.Fatalf("required %d after the finish, want the re-request kept", r.required)
	}
}

// TestAppUpsertDuringRun: an application that requests with INSERT … ON
// DUPLICATE KEY UPDATE takes the UPDATE path of the row, so its request
// during a run is kept as well.
func TestAppUpsertDuringRun(t *testing.T) {
	t.Parallel()
	a := newAppTable(t, "mapped", nil, nil)
	a.add(t, 7, 2, -60)
	c := a.claim(t, 7, 101)
	a.exec(t, `INSERT INTO TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate) VALUES (7, 'Apples', 2, NOW())
 ON DUPLICATE KEY UPDATE influencerRecalcReqd = VALUES(influencerRecalcReqd), influencerRecalcDate = VALUES(influencerRecalcDate)`)
	if err := a.q.Finish(a.ctx, c); err != nil {
		t.Fatal(err)
	}
	if r := a.row(t, 7); r.required != 2 || r.reqVersion != c.RequestVersion+1 {
		t.Fatalf("after the finish: required %d, request version %d (claimed %d); want the upsert's request kept", r.required, r.reqVersion, c.RequestVersion)
	}
	a.claim(t, 7, 102)
}

// TestAppRequestUnparks: the application's plain UPDATE of a parked topic
// is a request like `nonqueue request`: it unparks the topic and resets
// its attempts, so the topic runs again. Found by the soak (bench/soak):
// with topics parked by faults, the application's re-requests of them
// were kept in request_version but the topics stayed parked, never run.
func TestAppRequestUnparks(t *testing.T) {
	t.Parallel()
	for _, kind := range topicKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			a := newAppTable(t, kind, func(c *queue.Config) { c.MaxAttempts = 2 }, nil)
			fail := &queue.ReleaseParams{Error: "procedure failed", CountAttempt: true, Backoff: time.Hour}
			a.add(t, 9, 2, -60)
			c := a.claim(t, 9, 101)
			if _, err := a.q.Release(a.ctx, c, fail); err != nil {
				t.Fatalf("release 1: %v", err)
			}
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = `%s` - INTERVAL 2 HOUR WHERE `%s` = 9", a.name(), a.cfg.Columns.Due, a.cfg.Columns.Due, a.cfg.Columns.ID))
			c = a.claim(t, 9, 101)
			if _, err := a.q.Release(a.ctx, c, fail); err != nil {
				t.Fatalf("release 2: %v", err)
			}
			before := a.row(t, 9)
			if !before.parked.Valid || before.attempts != 2 {
				t.Fatalf("after two failures: parked %v, attempts %d; want parked, 2", before.parked.Valid, before.attempts)
			}
			a.exec(t, a.appRequest(9, "NOW()"))
			r := a.row(t, 9)
			if r.parked.Valid || r.attempts != 0 || r.required != 2 || r.reqVersion != before.reqVersion+1 {
				t.Fatalf("after the application's request: parked %v, attempts %d, required %d, request version %d (was %d); want unparked, 0, 2, bumped",
					r.parked.Valid, r.attempts, r.required, r.reqVersion, before.reqVersion)
			}
			c = a.claim(t, 9, 102)
			if c.Attempts != 0 {
				t.Fatalf("claim after the request: attempts %d, want 0", c.Attempts)
			}

			// A write the trigger does not take for a request (the date
			// alone, nothing required) leaves a parked topic parked.
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = 0, `%s` = 0 WHERE `%s` = 9", a.name(), a.cfg.Columns.Required, a.cfg.Columns.Running, a.cfg.Columns.ID))
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW(), `%s` = 3 WHERE `%s` = 9", a.name(), a.cfg.Columns.ParkedAt, a.cfg.Columns.Attempts, a.cfg.Columns.ID))
			a.exec(t, fmt.Sprintf("UPDATE %s SET `%s` = NOW() + INTERVAL 1 HOUR WHERE `%s` = 9", a.name(), a.cfg.Columns.Due, a.cfg.Columns.ID))
			if r := a.row(t, 9); !r.parked.Valid || r.attempts != 3 {
				t.Fatalf("a date change of a topic not required: parked %v, attempts %d; want still parked, 3", r.parked.Valid, r.attempts)
			}
		})
	}
}
