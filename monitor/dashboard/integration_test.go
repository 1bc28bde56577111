package dashboard_test

import (
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// stateSQL counts one state straight from the table, independently of
// queue's code: the reference the dashboard must match.
var stateSQL = map[queue.TopicState]string{
	queue.TopicRunning:   "running <> 0",
	queue.TopicParked:    "running = 0 AND parked_at IS NOT NULL",
	queue.TopicInactive:  "running = 0 AND parked_at IS NULL AND active <> 1",
	queue.TopicIdle:      "running = 0 AND parked_at IS NULL AND active = 1 AND required = 0",
	queue.TopicDue:       "running = 0 AND parked_at IS NULL AND active = 1 AND required > 0 AND due <= NOW(6)",
	queue.TopicBackoff:   "running = 0 AND parked_at IS NULL AND active = 1 AND required > 0 AND due > NOW(6) AND attempts > 0",
	queue.TopicScheduled: "running = 0 AND parked_at IS NULL AND active = 1 AND required > 0 AND due > NOW(6) AND attempts = 0",
}

func (b *bundle) sqlCounts(t *testing.T) map[queue.TopicState]int64 {
	t.Helper()
	out := map[queue.TopicState]int64{}
	for st, cond := range stateSQL {
		out[st] = b.count(t, "SELECT COUNT(*) FROM topic WHERE "+cond)
	}
	return out
}

var pageCount = regexp.MustCompile(`data-state="([a-z]+)"><span>[a-z]+</span><b class="count" data-count="([0-9]+)"`)

// pageCounts reads the state counts off the overview's HTML.
func pageCounts(t *testing.T, body string) map[queue.TopicState]int64 {
	t.Helper()
	out := map[queue.TopicState]int64{}
	for _, m := range pageCount.FindAllStringSubmatch(body, -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		out[queue.TopicState(m[1])] = n
	}
	if len(out) != len(queue.TopicStates()) {
		t.Fatalf("overview shows %d state counts, want %d\n%s", len(out), len(queue.TopicStates()), snippet(body))
	}
	return out
}

// TestMillionTopics: the overview on 1,000,000 topics. The issue asks for
// under a second on the sandbox; the figures are logged, and the assertion
// is a generous 5s so a loaded machine does not make it flake. The page's
// counts equal SQL's. The rows are written with sql_log_bin=0: the replica
// need not apply a million rows for a test of the primary's reads.
func TestMillionTopics(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 1,000,000 topics")
	}
	b := setup(t, nil)
	conn, err := b.db.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	for _, s := range []string{
		"SET SESSION sql_log_bin = 0",
		`INSERT INTO topic (id, required, due, priority, running, active, attempts, parked_at, lease_until, heartbeat_at, claimed_at)
 SELECT seq, IF(seq % 7 < 3, seq % 3, 0), NOW(6) - INTERVAL (seq % 5000) SECOND + INTERVAL IF(seq % 11 = 0, 7200, 0) SECOND, -- no due date crosses now during the test
 seq % 10, IF(seq % 5003 = 0, 100101, 0), IF(seq % 97 = 0, 0, 1), IF(seq % 13 = 0, 2, 0), IF(seq % 1009 = 0, NOW(6), NULL),
 IF(seq % 5003 = 0, NOW(6) + INTERVAL 30 SECOND, NULL), IF(seq % 5003 = 0, NOW(6), NULL), IF(seq % 5003 = 0, NOW(6), NULL)
 FROM seq_1_to_1000000`,
		"ANALYZE TABLE topic",
	} {
		if _, err := conn.ExecContext(b.ctx, s); err != nil {
			t.Fatalf("seed: %v", err)
		}
	}
	t.Logf("seeded 1,000,000 topics in %v", time.Since(start).Round(time.Millisecond))

	var overview, page []time.Duration
	c := b.client(t)
	var body string
	for range 5 {
		o, err := b.q.Overview(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if o.Total != 1_000_000 {
			t.Fatalf("overview counted %d topics", o.Total)
		}
		overview = append(overview, o.Elapsed)
		t0 := time.Now()
		r := c.get("/") // CacheTTL is 1ns in tests: every load recomputes
		page = append(page, time.Since(t0))
		if r.status != 200 {
			t.Fatalf("overview page: %d\n%s", r.status, snippet(r.body))
		}
		body = r.body
	}
	slices.Sort(overview)
	slices.Sort(page)
	t.Logf("1,000,000 topics: queue.Overview best %v, median %v; overview page (all its queries + render) best %v, median %v",
		overview[0].Round(time.Millisecond), overview[2].Round(time.Millisecond), page[0].Round(time.Millisecond), page[2].Round(time.Millisecond))
	if page[2] > 5*time.Second {
		t.Errorf("overview page median %v on 1,000,000 topics, want well under 5s (target: under 1s)", page[2])
	}
	got, want := pageCounts(t, body), b.sqlCounts(t)
	for st, n := range want {
		if got[st] != n {
			t.Errorf("page shows %s = %d, SQL counts %d", st, got[st], n)
		}
	}
}

// TestHistoryReports: the run history and registry reads behind the
// pages, on rows written by monitor.History itself.
func TestHistoryReports(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for i, o := range []string{monitor.OutcomeDone, monitor.OutcomeDone, monitor.OutcomeFailed, monitor.OutcomeReleased, monitor.OutcomeDone} {
		b.seedRun(t, monitor.Run{TopicID: int64(1 + i%2), InstanceID: 100101, ClaimToken: uint64(i + 1), Scope: 2, Outcome: o,
			Bytes: 1000, Proc: time.Duration(i+1) * 10 * time.Millisecond, LagWait: time.Millisecond})
	}
	// One run two hours ago: in the day, not in the hour.
	b.exec(t, "INSERT INTO run (topic_id, instance_id, claim_token, outcome, bytes_shipped, finished_at) VALUES (3, 100101, 1, 'done', 7, NOW(6) - INTERVAL 2 HOUR)")

	hour, err := b.hist.Throughput(b.ctx, time.Hour, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	day, err := b.hist.Throughput(b.ctx, 24*time.Hour, 15*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	last := hour.Buckets[len(hour.Buckets)-1]
	if len(hour.Buckets) != 60 || hour.Done != 3 || hour.Failed != 1 || hour.Other != 1 || hour.Bytes != 5000 || last.Total() != 5 {
		t.Errorf("hour: %d buckets, done %d failed %d other %d bytes %d, newest bucket %+v", len(hour.Buckets), hour.Done, hour.Failed, hour.Other, hour.Bytes, last)
	}
	if len(day.Buckets) != 96 || day.Done != 4 || day.Bytes != 5007 || day.FailureRate() != 0.2 {
		t.Errorf("day: %d buckets, done %d bytes %d failure rate %v", len(day.Buckets), day.Done, day.Bytes, day.FailureRate())
	}
	if _, err := b.hist.Throughput(b.ctx, time.Hour, time.Millisecond); err == nil {
		t.Error("3.6 million buckets accepted")
	}
	ph, err := b.hist.Phases(b.ctx, time.Hour, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Done runs' procedures: 10, 20, 50 ms.
	if ph.Runs != 3 || ph.Proc.P50 != 20*time.Millisecond || ph.Proc.P95 != 50*time.Millisecond || ph.Proc.Max != 50*time.Millisecond || ph.LagWait.P50 != time.Millisecond {
		t.Errorf("phases: %+v", ph)
	}
	runs, err := b.hist.TopicRuns(b.ctx, 1, 0)
	if err != nil || len(runs) != 3 || runs[0].ClaimToken != 5 || runs[0].Age > time.Minute {
		t.Errorf("topic 1 runs: %+v %v", runs, err)
	}
	last2, err := b.hist.LastRuns(b.ctx, []int64{1, 2, 3, 4})
	if err != nil || len(last2) != 3 || last2[2].ClaimToken != 4 || last2[3].Age < time.Hour {
		t.Errorf("last runs: %+v %v", last2, err)
	}
	fails, err := b.hist.Failures(b.ctx, time.Hour, 0)
	if err != nil || len(fails) != 1 || fails[0].Outcome != monitor.OutcomeFailed {
		t.Errorf("failures: %+v %v", fails, err)
	}
	if err := b.hist.Register(b.ctx, monitor.InstanceInfo{ID: 100101, Host: "h", PID: 1, Version: "v", ReplicaServerID: 1001}); err != nil {
		t.Fatal(err)
	}
	if err := b.hist.SetState(b.ctx, 100101, monitor.StateIdle, 0, 4, 1); err != nil {
		t.Fatal(err)
	}
	ins, err := b.hist.Instances(b.ctx)
	if err != nil || len(ins) != 1 || ins[0].State != monitor.StateIdle || ins[0].Runs != 4 || ins[0].Failures != 1 || ins[0].HeartbeatAge > time.Minute {
		t.Errorf("instances: %+v %v", ins, err)
	}
}

// TestOverviewMatchesSQL: the overview page's counts equal SQL's after
// topics move through claims, failures and parking.
func TestOverviewMatchesSQL(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seedTopics(t, 1, 40)
	b.exec(t, "UPDATE topic SET required = 0 WHERE id <= 10")
	b.exec(t, "UPDATE topic SET active = 0 WHERE id BETWEEN 11 AND 13")
	b.exec(t, "UPDATE topic SET due = NOW(6) + INTERVAL 1 HOUR WHERE id BETWEEN 14 AND 16")
	for i := range 6 {
		c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: int64(100101 + i)})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := b.q.Release(b.ctx, c, &queue.ReleaseParams{Error: "boom", Backoff: time.Hour, CountAttempt: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := b.q.Park(b.ctx, 40, "test"); err != nil {
		t.Fatal(err)
	}
	r := b.client(t).get("/")
	got, want := pageCounts(t, r.body), b.sqlCounts(t)
	for st, n := range want {
		if got[st] != n {
			t.Errorf("page shows %s = %d, SQL counts %d", st, got[st], n)
		}
	}
	if want[queue.TopicBackoff] != 3 || want[queue.TopicRunning] != 3 {
		t.Errorf("the seeding did not make the states it meant to: %v", want)
	}
}
