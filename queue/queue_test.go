package queue_test

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// TestConcurrentClaimersExactlyOnce: 32 claimers drain 5,000 topics; each
// topic is claimed and finished exactly once. The count comes from a log
// table the claimers write themselves, independent of the claim columns.
func TestConcurrentClaimersExactlyOnce(t *testing.T) {
	t.Parallel()
	// One Queue: claims arriving together are combined. Three Queues (three
	// worker processes): their combined claims skip each other's locked
	// rows, and lone claims wait on them.
	for _, queues := range []int{1, 3} {
		t.Run(fmt.Sprintf("queues=%d", queues), func(t *testing.T) {
			t.Parallel()
			claimExactlyOnce(t, queues)
		})
	}
}

func claimExactlyOnce(t *testing.T, queues int) {
	b := setup(t, nil)
	const topics, claimers = 5000, 32
	b.seed(t, dueTopics(topics)...)
	qs := []*queue.Queue{b.q}
	for range queues - 1 {
		q, err := queue.Open(b.ctx, env.Primary(""), b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		qs = append(qs, q)
	}
	if _, err := b.db.ExecContext(b.ctx, "CREATE TABLE done_log (seq BIGINT AUTO_INCREMENT PRIMARY KEY, topic_id BIGINT NOT NULL, instance_id BIGINT NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, claimers)
	for i := range claimers {
		wg.Add(1)
		go func(inst int64) {
			defer wg.Done()
			for n := 0; n < 2*topics; n++ { // bounded: more than any one claimer can get
				q := qs[int(inst)%queues]
				c, err := q.Claim(b.ctx, &queue.ClaimParams{InstanceID: inst})
				if errors.Is(err, queue.ErrNoneDue) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				if _, err := b.db.ExecContext(b.ctx, "INSERT INTO done_log (topic_id, instance_id) VALUES (?, ?)", c.TopicID, inst); err != nil {
					errs <- err
					return
				}
				if err := q.Finish(b.ctx, c); err != nil {
					errs <- err
					return
				}
			}
			errs <- fmt.Errorf("instance %d never ran out of topics", inst)
		}(int64(101 + i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var total, distinct, left int
	if err := b.db.QueryRowContext(b.ctx, "SELECT COUNT(*), COUNT(DISTINCT topic_id) FROM done_log").Scan(&total, &distinct); err != nil {
		t.Fatal(err)
	}
	if total != topics || distinct != topics {
		t.Fatalf("log has %d runs of %d distinct topics, want %d of %d", total, distinct, topics, topics)
	}
	if err := b.db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM topic WHERE required <> 0 OR running <> 0").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d topics still required or running", left)
	}
	var instances int
	b.db.QueryRowContext(b.ctx, "SELECT COUNT(DISTINCT instance_id) FROM done_log").Scan(&instances)
	var combined int64
	for _, q := range qs {
		combined += q.Stats().Combined
	}
	t.Logf("%d topics by %d distinct claimers over %d queues, %d through combined claims", total, instances, queues, combined)
	if combined == 0 {
		t.Errorf("32 claimers never had their claims combined")
	}
}

// TestCombinedClaimOrder: a combined claim hands out topics in the
// original's order, most urgent to the first request, each marked for its
// own instance with its token bumped; requests beyond the due topics get
// ErrNoneDue, and the pick is served by the claim index in order.
func TestCombinedClaimOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.ActiveValues = []int64{1, 2} })
	b.seed(t,
		topic{id: 1, required: 1, due: -time.Minute, priority: 5, active: 1},
		topic{id: 2, required: 2, due: -time.Hour, priority: 5, active: 2},
		topic{id: 3, required: 1, due: -time.Hour, priority: 9, active: 1},
		topic{id: 5, required: 0, due: -time.Hour, priority: 99, active: 1}, // not required
		topic{id: 6, required: 1, due: time.Hour, priority: 99, active: 1},  // not due yet
		topic{id: 8, required: 1, due: -time.Hour, priority: 99, active: 3}, // active value not in the set
		topic{id: 9, required: 1, due: -time.Hour, priority: 1, active: 1},  // below the minimum priority
		topic{id: 10, required: 1, due: -2 * time.Hour, priority: 2, active: 1},
	)
	before := map[int64]uint64{}
	rows, err := b.db.QueryContext(b.ctx, "SELECT id, claim_token FROM topic")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var tok uint64
		rows.Scan(&id, &tok)
		before[id] = tok
	}
	rows.Close()

	ps := []queue.ClaimParams{{InstanceID: 201, MinPriority: 2}, {InstanceID: 202, MinPriority: 2}, {InstanceID: 203, MinPriority: 2},
		{InstanceID: 204, MinPriority: 2}, {InstanceID: 205, MinPriority: 2}}
	claims, errs := b.q.ClaimTogether(b.ctx, ps)
	want := []int64{3, 2, 1, 10}
	for i, p := range ps {
		if i >= len(want) {
			if !errors.Is(errs[i], queue.ErrNoneDue) {
				t.Errorf("request %d: %v, %v; want ErrNoneDue", i, claims[i], errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		c := claims[i]
		if c.TopicID != want[i] || c.InstanceID != p.InstanceID {
			t.Errorf("request %d got topic %d for instance %d, want topic %d for %d", i, c.TopicID, c.InstanceID, want[i], p.InstanceID)
		}
		if c.PrimaryPos == "" {
			t.Errorf("claim of topic %d carries no primary GTID position", c.TopicID)
		}
		var running int64
		var tok uint64
		if err := b.db.QueryRowContext(b.ctx, "SELECT running, claim_token FROM topic WHERE id = ?", c.TopicID).Scan(&running, &tok); err != nil {
			t.Fatal(err)
		}
		if running != p.InstanceID || tok != c.Token || tok != before[c.TopicID]+1 {
			t.Errorf("topic %d: running %d token %d (claim token %d, before %d), want running %d and the token bumped once",
				c.TopicID, running, tok, c.Token, before[c.TopicID], p.InstanceID)
		}
		// The claim is a real one: fenced writes accept it.
		if err := b.q.Heartbeat(b.ctx, c); err != nil {
			t.Errorf("heartbeat of combined claim of topic %d: %v", c.TopicID, err)
		}
	}
	if claims[1] != nil && claims[1].Scope != 2 {
		t.Errorf("topic 2 claimed with scope %d, want 2", claims[1].Scope)
	}
	var left int
	b.db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM topic WHERE running <> 0 AND id NOT IN (1, 2, 3, 10)").Scan(&left)
	if left != 0 {
		t.Errorf("%d other topics marked running", left)
	}

	// The pick reads the claim index in order (no filesort).
	b.seed(t, dueTopics(2000)[10:]...)
	b.db.ExecContext(b.ctx, "ANALYZE TABLE topic")
	stmt, args := b.q.ClaimPickStatement(8)
	for _, m := range explain(t, b, stmt, args) {
		if m["key"] != "nq_claim" || strings.Contains(m["Extra"], "filesort") {
			t.Errorf("combined pick: key %q, extra %q; want nq_claim without filesort", m["key"], m["Extra"])
		}
	}
}

// TestClaimOrderAndFilters: the original's order (priority desc, due asc,
// id) and filters (required > 0, due, active in the set, priority >= min).
func TestClaimOrderAndFilters(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.ActiveValues = []int64{1, 2} })
	b.seed(t,
		topic{id: 1, required: 1, due: -time.Minute, priority: 5, active: 1},
		topic{id: 2, required: 2, due: -time.Hour, priority: 5, active: 2},  // same priority, older: before 1
		topic{id: 3, required: 1, due: -time.Hour, priority: 9, active: 1},  // highest priority: first
		topic{id: 4, required: 1, due: -time.Hour, priority: 5, active: 1},  // same priority and due as 2: after 2 by id
		topic{id: 5, required: 0, due: -time.Hour, priority: 99, active: 1}, // not required
		topic{id: 6, required: 1, due: time.Hour, priority: 99, active: 1},  // not due yet
		topic{id: 7, required: 1, due: -time.Hour, priority: 99, active: 0}, // inactive
		topic{id: 8, required: 1, due: -time.Hour, priority: 99, active: 3}, // active value not in the set
		topic{id: 9, required: 1, due: -time.Hour, priority: 1, active: 1},  // below the minimum priority
		topic{id: 10, required: 1, due: -2 * time.Hour, priority: 2, active: 1},
	)
	// Topics 2 and 4 must share a due date exactly for the id tiebreak.
	if _, err := b.db.ExecContext(b.ctx, "UPDATE topic SET due = (SELECT due FROM (SELECT due FROM topic WHERE id = 2) x) WHERE id = 4"); err != nil {
		t.Fatal(err)
	}
	var got []int64
	for range 20 {
		c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101, MinPriority: 2})
		if errors.Is(err, queue.ErrNoneDue) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.TopicID)
		if c.PrimaryPos == "" {
			t.Errorf("claim of topic %d carries no primary GTID position", c.TopicID)
		}
		if c.TopicID == 2 && c.Scope != 2 {
			t.Errorf("topic 2 claimed with scope %d, want 2", c.Scope)
		}
	}
	want := []int64{3, 2, 4, 1, 10}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("claimed %v, want %v", got, want)
	}
}

// TestClaimUsesIndexInOrder: the claim is served by the claim index in
// order, with no filesort, on nonqueue's schema.
func TestClaimUsesIndexInOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(2000)...)
	b.db.ExecContext(b.ctx, "ANALYZE TABLE topic")
	explainClaim(t, b, "topic")
}

func explainClaim(t *testing.T, b *bundle, table string) {
	t.Helper()
	stmt, args := b.q.ClaimStatement()
	if !strings.Contains(stmt, "`"+table+"`") {
		t.Fatalf("claim statement is not on %s: %s", table, stmt)
	}
	for _, m := range explain(t, b, stmt, args) {
		if m["key"] != "nq_claim" {
			t.Errorf("claim uses key %q, want nq_claim", m["key"])
		}
		if strings.Contains(m["Extra"], "filesort") {
			t.Errorf("claim sorts: %s", m["Extra"])
		}
	}
}

// explain runs EXPLAIN of stmt and returns each row as column -> value,
// logging it.
func explain(t *testing.T, b *bundle, stmt string, args []any) []map[string]string {
	t.Helper()
	rows, err := b.db.QueryContext(b.ctx, "EXPLAIN "+stmt, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []map[string]string
	for rows.Next() {
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		var line []string
		m := map[string]string{}
		for i, col := range cols {
			m[col] = vals[i].String
			line = append(line, col+"="+vals[i].String)
		}
		t.Logf("EXPLAIN: %s", strings.Join(line, " "))
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLeaseExpiryAndReap: a claim that stops heartbeating is taken back
// after its lease by any instance, recorded, counted as an attempt, and
// the topic is due again; a heartbeating claim is left alone.
func TestLeaseExpiryAndReap(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.Lease = time.Second })
	b.seed(t, dueTopics(2)...)
	dead, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	alive, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := b.q.Reap(b.ctx, 900, 10); len(r) != 0 {
		t.Fatalf("reaped %v before any lease expired", r)
	}
	var reaped []queue.Reaped
	deadline := time.Now().Add(10 * time.Second)
	for len(reaped) == 0 && time.Now().Before(deadline) {
		if err := b.q.Heartbeat(b.ctx, alive); err != nil {
			t.Fatalf("live claim lost its heartbeat: %v", err)
		}
		reaped, err = b.q.Reap(b.ctx, 900, 10)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(reaped) != 1 || reaped[0].TopicID != dead.TopicID || reaped[0].InstanceID != 101 || reaped[0].Token != dead.Token {
		t.Fatalf("reaped %+v, want only topic %d of instance 101", reaped, dead.TopicID)
	}
	r := b.row(t, dead.TopicID)
	if r.running != 0 || r.required == 0 || r.attempts != 1 || !strings.Contains(r.lastError.String, "lease expired") {
		t.Fatalf("after reap: %+v", r)
	}
	var outcome string
	var inst int64
	if err := b.db.QueryRowContext(b.ctx, "SELECT outcome, instance_id FROM run WHERE topic_id = ?", dead.TopicID).Scan(&outcome, &inst); err != nil {
		t.Fatalf("reap not recorded in run history: %v", err)
	}
	if outcome != "reaped" || inst != 900 {
		t.Fatalf("run row: outcome %q by %d", outcome, inst)
	}
	// Due again at once, for anyone.
	again, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 103})
	if err != nil || again.TopicID != dead.TopicID || again.Attempts != 1 {
		t.Fatalf("reclaim after reap: %+v, %v", again, err)
	}
	if err := b.q.Finish(b.ctx, alive); err != nil {
		t.Fatalf("heartbeating claim could not finish: %v", err)
	}
}

// TestStaleTokenIsFenced: once a claim is taken back and re-claimed, the
// old holder can neither heartbeat, finish nor release, even with the same
// instance id, and its attempts change nothing.
func TestStaleTokenIsFenced(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.Lease = time.Second })
	b.seed(t, dueTopics(1)...)
	old, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	// Expire the lease without waiting, then reap and re-claim by the
	// same instance id: only the token tells the claims apart.
	if _, err := b.db.ExecContext(b.ctx, "UPDATE topic SET lease_until = NOW(6) - INTERVAL 1 SECOND"); err != nil {
		t.Fatal(err)
	}
	if r, err := b.q.Reap(b.ctx, 900, 10); err != nil || len(r) != 1 {
		t.Fatalf("reap: %v %v", r, err)
	}
	cur, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if cur.Token == old.Token {
		t.Fatalf("re-claim kept token %d", cur.Token)
	}
	before := b.row(t, 1)
	if err := b.q.Heartbeat(b.ctx, old); !errors.Is(err, queue.ErrClaimLost) {
		t.Errorf("stale heartbeat: %v, want ErrClaimLost", err)
	}
	if err := b.q.Finish(b.ctx, old); !errors.Is(err, queue.ErrClaimLost) {
		t.Errorf("stale finish: %v, want ErrClaimLost", err)
	}
	if _, err := b.q.Release(b.ctx, old, &queue.ReleaseParams{Error: "x", CountAttempt: true, Backoff: time.Hour}); !errors.Is(err, queue.ErrClaimLost) {
		t.Errorf("stale release: %v, want ErrClaimLost", err)
	}
	if after := b.row(t, 1); after != before {
		t.Fatalf("stale writes changed the topic:\nbefore %+v\nafter  %+v", before, after)
	}
	if err := b.q.Finish(b.ctx, cur); err != nil {
		t.Fatalf("current claim: %v", err)
	}
}

// TestHoldsReadsTheFence: Holds accepts the live claim and refuses, with
// ErrClaimLost, a stale token of the same instance, another instance id,
// another topic and a finished claim; and it is a read: the row, claim
// times included, is the same before and after.
func TestHoldsReadsTheFence(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(1)...)
	old, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.q.Holds(b.ctx, old); err != nil {
		t.Fatalf("live claim: %v", err)
	}
	// Taken back and re-claimed by the same instance id: only the token
	// tells the claims apart.
	if _, err := b.db.ExecContext(b.ctx, "UPDATE topic SET lease_until = NOW(6) - INTERVAL 1 SECOND"); err != nil {
		t.Fatal(err)
	}
	if r, err := b.q.Reap(b.ctx, 900, 10); err != nil || len(r) != 1 {
		t.Fatalf("reap: %v %v", r, err)
	}
	cur, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if cur.TopicID != old.TopicID || cur.Token == old.Token {
		t.Fatalf("re-claim %+v, old %+v: want the same topic, another token", cur, old)
	}
	before, beforeTimes := b.row(t, 1), b.claimTimes(t, 1)
	// Any write would stamp NOW(6) after this.
	time.Sleep(5 * time.Millisecond)
	if err := b.q.Holds(b.ctx, cur); err != nil {
		t.Fatalf("live claim after a re-claim: %v", err)
	}
	otherInstance, otherTopic := *cur, *cur
	otherInstance.InstanceID = 102
	otherTopic.TopicID = 2
	for _, c := range []struct {
		name  string
		claim *queue.Claim
	}{{"stale token", old}, {"another instance id", &otherInstance}, {"a topic that does not exist", &otherTopic}} {
		if err := b.q.Holds(b.ctx, c.claim); !errors.Is(err, queue.ErrClaimLost) {
			t.Errorf("%s: %v, want ErrClaimLost", c.name, err)
		}
	}
	if after, afterTimes := b.row(t, 1), b.claimTimes(t, 1); after != before || afterTimes != beforeTimes {
		t.Fatalf("Holds changed the topic:\nbefore %+v %+v\nafter  %+v %+v", before, beforeTimes, after, afterTimes)
	}
	if !beforeTimes.heartbeat.Valid || !beforeTimes.lease.Valid {
		t.Fatalf("a claimed topic without heartbeat or lease: %+v", beforeTimes)
	}
	if err := b.q.Finish(b.ctx, cur); err != nil {
		t.Fatal(err)
	}
	if err := b.q.Holds(b.ctx, cur); !errors.Is(err, queue.ErrClaimLost) {
		t.Fatalf("finished claim: %v, want ErrClaimLost", err)
	}
}

// claimTimes are the times a claim writes, to the microsecond.
type claimTimes struct{ claimed, heartbeat, lease sql.NullString }

func (b *bundle) claimTimes(t testing.TB, id int64) claimTimes {
	t.Helper()
	c := b.cfg.Columns
	var ct claimTimes
	stmt := fmt.Sprintf("SELECT CAST(`%s` AS CHAR), CAST(`%s` AS CHAR), CAST(`%s` AS CHAR) FROM `%s`.`%s` WHERE `%s` = ?",
		c.ClaimedAt, c.HeartbeatAt, c.LeaseUntil, b.cfg.Schema, b.cfg.Table, c.ID)
	if err := b.db.QueryRowContext(b.ctx, stmt, id).Scan(&ct.claimed, &ct.heartbeat, &ct.lease); err != nil {
		t.Fatalf("read claim times of topic %d: %v", id, err)
	}
	return ct
}

// TestRerequestDuringRunSurvivesFinish: a request that arrives while the
// topic runs keeps it required after the run finishes; the next run clears it.
func TestRerequestDuringRunSurvivesFinish(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, topic{id: 1, required: 1, due: -time.Minute, priority: 0, active: 1})
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopeFull}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102}); !errors.Is(err, queue.ErrNoneDue) {
		t.Fatalf("a running topic was claimed twice: %v", err)
	}
	if err := b.q.Finish(b.ctx, c); err != nil {
		t.Fatal(err)
	}
	if r := b.row(t, 1); r.required != 2 || r.running != 0 {
		t.Fatalf("after finish with a re-request: %+v, want required 2, not running", r)
	}
	c2, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102})
	if err != nil || c2.Scope != 2 {
		t.Fatalf("second run: %+v %v", c2, err)
	}
	if err := b.q.Finish(b.ctx, c2); err != nil {
		t.Fatal(err)
	}
	if r := b.row(t, 1); r.required != 0 {
		t.Fatalf("after second finish: required %d", r.required)
	}
}

// TestReleaseBackoffAndPark: a failed run is backed off and counted; at
// MaxAttempts the topic is parked until requested again.
func TestReleaseBackoffAndPark(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.MaxAttempts = 3 })
	b.seed(t, topic{id: 1, required: 2, due: -time.Minute, active: 1})
	claim := func() *queue.Claim {
		t.Helper()
		c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := claim()
	parked, err := b.q.Release(b.ctx, c, &queue.ReleaseParams{Error: "proc failed: boom", Backoff: time.Hour, CountAttempt: true})
	if err != nil || parked {
		t.Fatalf("release: parked=%v err=%v", parked, err)
	}
	r := b.row(t, 1)
	if r.running != 0 || r.attempts != 1 || r.required != 2 || !r.dueInFuture || r.lastError.String != "proc failed: boom" {
		t.Fatalf("after release: %+v", r)
	}
	if _, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101}); !errors.Is(err, queue.ErrNoneDue) {
		t.Fatalf("claimed during back-off: %v", err)
	}
	// A release that is nobody's fault is not an attempt.
	b.db.ExecContext(b.ctx, "UPDATE topic SET due = NOW(6)")
	c = claim()
	if _, err := b.q.Release(b.ctx, c, &queue.ReleaseParams{}); err != nil {
		t.Fatal(err)
	}
	if r := b.row(t, 1); r.attempts != 1 || r.lastError.String != "proc failed: boom" {
		t.Fatalf("plain release changed attempts or error: %+v", r)
	}
	for i := 2; i <= 3; i++ {
		c = claim()
		parked, err = b.q.Release(b.ctx, c, &queue.ReleaseParams{Error: "again", CountAttempt: true})
		if err != nil || parked != (i == 3) {
			t.Fatalf("release %d: parked=%v err=%v", i, parked, err)
		}
	}
	if r := b.row(t, 1); !r.parked.Valid || r.required != 2 || r.attempts != 3 {
		t.Fatalf("not parked after 3 attempts: %+v", r)
	}
	if _, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101}); !errors.Is(err, queue.ErrNoneDue) {
		t.Fatalf("claimed a parked topic: %v", err)
	}
	// A new request unparks it, with its attempts reset, due now.
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopePartial}); err != nil {
		t.Fatal(err)
	}
	c = claim()
	if c.Attempts != 0 || c.Scope != 2 {
		t.Fatalf("after unpark: attempts %d scope %d", c.Attempts, c.Scope)
	}
}

// TestRequest: scope is never downgraded, a pending date is never delayed,
// priority is set only when given, missing ids are reported or created,
// and ids can come from a read-only query.
func TestRequest(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, topic{id: 1, active: 1, priority: 3}, topic{id: 2, active: 1, priority: 3})
	res, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1, 1, 2, 77}, Scope: queue.ScopeFull})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requested != 2 || fmt.Sprint(res.Missing) != "[77]" {
		t.Fatalf("result %+v, want 2 requested, 77 missing", res)
	}
	prio := int64(8)
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopePartial, Delay: time.Hour, Priority: &prio}); err != nil {
		t.Fatal(err)
	}
	r := b.row(t, 1)
	if r.required != 2 || r.dueInFuture || r.reqVersion != 2 {
		t.Fatalf("partial after full: %+v, want full kept, due not delayed, version 2", r)
	}
	var p int64
	b.db.QueryRowContext(b.ctx, "SELECT priority FROM topic WHERE id = 2").Scan(&p)
	if p != 3 {
		t.Fatalf("priority changed without --priority: %d", p)
	}
	b.db.QueryRowContext(b.ctx, "SELECT priority FROM topic WHERE id = 1").Scan(&p)
	if p != 8 {
		t.Fatalf("priority %d, want 8", p)
	}
	// Not yet required: the delay applies.
	res, err = b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{77, 78}, Scope: queue.ScopePartial, Delay: time.Hour, Create: true})
	if err != nil || res.Requested != 2 || len(res.Missing) != 0 {
		t.Fatalf("create: %+v %v", res, err)
	}
	if r := b.row(t, 77); r.required != 1 || !r.dueInFuture {
		t.Fatalf("created topic: %+v", r)
	}
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1}, Scope: 3}); err == nil {
		t.Fatal("scope 3 accepted")
	}
	ids, err := b.q.IDsFromQuery(b.ctx, "SELECT id, 'x' FROM "+b.cfg.Schema+".topic WHERE id >= 2 ORDER BY id")
	if err != nil || fmt.Sprint(ids) != "[2 77 78]" {
		t.Fatalf("ids from query: %v %v", ids, err)
	}
	if _, err := b.q.IDsFromQuery(b.ctx, "DELETE FROM "+b.cfg.Schema+".topic"); err == nil {
		t.Fatal("a DELETE ran as an ids query")
	}
	if r := b.row(t, 2); r.required != 2 {
		t.Fatal("the refused DELETE changed data")
	}
}

// TestMappedTopicFilter: the original TopicFilter table works unchanged
// but for the added protocol columns; the schema is idempotent and the
// claim is served by the index in order.
func TestMappedTopicFilter(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	// The original table, as the application has it, with data.
	_, err := b.db.ExecContext(b.ctx, `CREATE TABLE TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1) ENGINE=InnoDB`)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.db.ExecContext(b.ctx, `INSERT INTO TopicFilter VALUES
  (101, 'Apples', 2, NOW() - INTERVAL 3 HOUR, 9, 0, 1),
  (102, 'Oranges', 0, NOW() - INTERVAL 3 HOUR, 9, 0, 1),
  (103, 'Grapes', 0, NOW() - INTERVAL 3 HOUR, 1, 0, 2),
  (104, 'Bananas', 1, NOW() - INTERVAL 2 HOUR, 9, 0, 2),
  (105, 'Pears', 2, NOW() - INTERVAL 1 HOUR, 1, 0, 1)`)
	if err != nil {
		t.Fatal(err)
	}
	cfg := queue.Config{
		Schema: b.cfg.Schema, Table: "TopicFilter", MetaSchema: b.cfg.MetaSchema, Mapped: true,
		ActiveValues: []int64{1, 2},
		Columns: queue.Columns{
			ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
			Priority: "influencerPriority", Running: "influencerRunning", Active: "active",
		},
	}
	q, err := queue.Open(b.ctx, env.Primary(""), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for range 2 { // idempotent
		if err := q.ApplySchema(b.ctx); err != nil {
			t.Fatalf("apply mapped schema: %v", err)
		}
	}
	var cols int
	b.db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'TopicFilter'").Scan(&cols)
	if cols != 7+11 {
		t.Fatalf("TopicFilter has %d columns, want the 7 original and 11 added", cols)
	}
	mb := &bundle{q: q, db: b.db, cfg: q.Config(), ctx: b.ctx}
	explainClaim(t, mb, "TopicFilter")

	var got []string
	for range 10 {
		c, err := q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
		if errors.Is(err, queue.ErrNoneDue) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var running int64
		b.db.QueryRowContext(b.ctx, "SELECT influencerRunning FROM TopicFilter WHERE topicFilterId = ?", c.TopicID).Scan(&running)
		if running != 101 {
			t.Fatalf("influencerRunning = %d while claimed by 101", running)
		}
		got = append(got, fmt.Sprintf("%d/%d", c.TopicID, c.Scope))
		if err := q.Finish(b.ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(got) != "[101/2 104/1 105/2]" {
		t.Fatalf("claimed %v, want [101/2 104/1 105/2]", got)
	}
	var pending int
	b.db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM TopicFilter WHERE influencerRecalcReqd > 0 OR influencerRunning <> 0").Scan(&pending)
	if pending != 0 {
		t.Fatalf("%d TopicFilter rows still pending", pending)
	}
}
