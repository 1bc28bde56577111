package queue_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// seedEveryState gives b one or more topics in each state and returns the
// ids expected in each. Topic 50 is claimed by instance 101.
func seedEveryState(t *testing.T, b *bundle) map[queue.TopicState][]int64 {
	t.Helper()
	b.seed(t,
		topic{id: 10, required: 2, due: -2 * time.Hour, priority: 5, active: 1}, // due, the oldest
		topic{id: 11, required: 1, due: -time.Minute, priority: 5, active: 1},   // due
		topic{id: 12, required: 2, due: -time.Minute, priority: 1, active: 2},   // due (active value 2 is in the set)
		topic{id: 20, required: 2, due: time.Hour, priority: 5, active: 1},      // scheduled
		topic{id: 30, required: 1, due: time.Hour, priority: 1, active: 1},      // backoff (attempts set below)
		topic{id: 40, required: 1, due: -time.Hour, priority: 9, active: 1},     // parked (set below)
		topic{id: 41, required: 0, due: -time.Hour, priority: 0, active: 0},     // parked and inactive: parked wins
		topic{id: 50, required: 2, due: -time.Hour, priority: 99, active: 1},    // running (claimed below)
		topic{id: 60, required: 1, due: -time.Hour, priority: 9, active: 0},     // inactive although required
		topic{id: 61, required: 0, due: -time.Hour, priority: 9, active: 3},     // inactive
		topic{id: 70, required: 0, due: -time.Hour, priority: 0, active: 1},     // idle
		topic{id: 71, required: 0, due: time.Hour, priority: 3, active: 2},      // idle
	)
	for _, s := range []string{
		"UPDATE topic SET attempts = 2 WHERE id = 30",
		"UPDATE topic SET parked_at = NOW(6), attempts = 5 WHERE id IN (40, 41)",
	} {
		if _, err := b.db.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil || c.TopicID != 50 {
		t.Fatalf("claim: %+v %v, want topic 50", c, err)
	}
	return map[queue.TopicState][]int64{
		queue.TopicDue:       {10, 11, 12},
		queue.TopicScheduled: {20},
		queue.TopicBackoff:   {30},
		queue.TopicParked:    {40, 41},
		queue.TopicRunning:   {50},
		queue.TopicInactive:  {60, 61},
		queue.TopicIdle:      {70, 71},
	}
}

// TestOverviewAndTopicsAgree: Overview's counts (Go's state rule over
// grouped flags) and Topics' lists (the rule in SQL) put every topic in
// the state it was seeded for; the backlog and the queue latency add up.
func TestOverviewAndTopicsAgree(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.ActiveValues = []int64{1, 2} })
	want := seedEveryState(t, b)

	o, err := b.q.Overview(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range queue.TopicStates() {
		if o.States[st] != int64(len(want[st])) {
			t.Errorf("overview: %s = %d, want %d", st, o.States[st], len(want[st]))
		}
		page, err := b.q.Topics(b.ctx, &queue.TopicFilter{State: st})
		if err != nil {
			t.Fatal(err)
		}
		var ids []int64
		for _, tp := range page.Topics {
			ids = append(ids, tp.ID)
			if tp.State != st {
				t.Errorf("topic %d listed under %s says it is %s", tp.ID, st, tp.State)
			}
		}
		if !slices.Equal(ids, want[st]) {
			t.Errorf("topics in state %s: %v, want %v", st, ids, want[st])
		}
	}
	if o.Total != 12 || o.Required != 8 {
		t.Errorf("total %d required %d, want 12 and 8", o.Total, o.Required)
	}
	// Backlog: priority desc, then scope.
	wantBacklog := []queue.BacklogRow{
		{Priority: 5, Scope: 1, Due: 1},
		{Priority: 5, Scope: 2, Due: 1, Scheduled: 1},
		{Priority: 1, Scope: 1, Backoff: 1},
		{Priority: 1, Scope: 2, Due: 1},
	}
	if fmt.Sprint(o.Backlog) != fmt.Sprint(wantBacklog) {
		t.Errorf("backlog %+v, want %+v", o.Backlog, wantBacklog)
	}
	if o.OldestDueAge < 2*time.Hour-time.Minute || o.OldestDueAge > 2*time.Hour+time.Minute {
		t.Errorf("oldest due age %v, want about 2h", o.OldestDueAge)
	}

	// The running topic's row carries its claim and heartbeat.
	tp, err := b.q.Topic(b.ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	if tp.State != queue.TopicRunning || tp.Running != 101 || tp.ClaimToken != 1 || tp.HeartbeatAt.IsZero() || tp.HeartbeatAge > time.Minute {
		t.Errorf("running topic: %+v", tp)
	}
	run, err := b.q.Running(b.ctx, 10)
	if err != nil || len(run) != 1 || run[0].ID != 50 {
		t.Errorf("running list: %+v %v", run, err)
	}
	if _, err := b.q.Topic(b.ctx, 999); !errors.Is(err, queue.ErrTopicNotFound) {
		t.Errorf("missing topic: %v, want ErrTopicNotFound", err)
	}
}

// TestOverviewChunksCountEachTopicOnce: ids spread over a wide span make
// the overview count in several id ranges at once; each topic is counted
// exactly once, including at the range ends and for negative ids.
func TestOverviewChunksCountEachTopicOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	var ts []topic
	for i := range 1000 {
		ts = append(ts, topic{id: int64(i)*997 - 3000, required: i % 3, due: -time.Minute, priority: int64(i % 4), active: 1})
	}
	ts = append(ts, topic{id: 1 << 40, required: 1, due: -time.Minute, active: 1})
	b.seed(t, ts...)
	o, err := b.q.Overview(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n, due int64
	if err := b.db.QueryRowContext(b.ctx, "SELECT COUNT(*), SUM(required > 0) FROM topic").Scan(&n, &due); err != nil {
		t.Fatal(err)
	}
	if o.Total != n || o.States[queue.TopicDue] != due || o.States[queue.TopicIdle] != n-due {
		t.Fatalf("overview total %d due %d idle %d; SQL: %d topics, %d due", o.Total, o.States[queue.TopicDue], o.States[queue.TopicIdle], n, due)
	}
}

// TestTopicsPagesAndFilters: keyset pages cover every match once; id and
// priority filters; bad filters are ErrBadFilter.
func TestTopicsPagesAndFilters(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(25)...) // priorities 0..4
	var seen []int64
	f := &queue.TopicFilter{Limit: 10}
	for range 10 { // bounded: 3 pages expected
		page, err := b.q.Topics(b.ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, tp := range page.Topics {
			seen = append(seen, tp.ID)
		}
		if page.Next == 0 {
			break
		}
		f.AfterID = page.Next
	}
	if len(seen) != 25 || !slices.IsSorted(seen) || seen[0] != 1 || seen[24] != 25 {
		t.Fatalf("pages saw %v", seen)
	}
	lo, hi := int64(3), int64(4)
	page, err := b.q.Topics(b.ctx, &queue.TopicFilter{MinPriority: &lo, MaxPriority: &hi, Limit: 100})
	if err != nil || len(page.Topics) != 10 {
		t.Fatalf("priority 3..4: %d topics, %v; want 10", len(page.Topics), err)
	}
	page, err = b.q.Topics(b.ctx, &queue.TopicFilter{ID: 7})
	if err != nil || len(page.Topics) != 1 || page.Topics[0].ID != 7 || page.Next != 0 {
		t.Fatalf("id 7: %+v %v", page, err)
	}
	for _, bad := range []*queue.TopicFilter{
		{State: "sleeping"},                  // unknown state
		{Limit: queue.MaxTopicLimit + 1},     // page too large
		{Limit: -1},                          // negative page
		{MinPriority: &hi, MaxPriority: &lo}, // empty priority range
	} {
		if _, err := b.q.Topics(b.ctx, bad); !errors.Is(err, queue.ErrBadFilter) {
			t.Errorf("filter %+v: %v, want ErrBadFilter", bad, err)
		}
	}
}

// BenchmarkOverview counts 1,000,000 topics in mixed states: the overview
// the dashboard and `nonqueue status` show. Seeding takes a few seconds
// and is not timed. Run: go test -run '^$' -bench Overview ./queue/
func BenchmarkOverview(b *testing.B) {
	tb := setup(b, nil)
	seedMillion(b, tb)
	b.ResetTimer()
	for b.Loop() {
		o, err := tb.q.Overview(tb.ctx)
		if err != nil {
			b.Fatal(err)
		}
		if o.Total != 1_000_000 {
			b.Fatalf("counted %d topics", o.Total)
		}
	}
}

// seedMillion inserts 1,000,000 topics in every state from MariaDB's
// sequence engine, in one statement.
func seedMillion(t testing.TB, b *bundle) {
	t.Helper()
	start := time.Now()
	_, err := b.db.ExecContext(b.ctx, `INSERT INTO topic (id, required, due, priority, running, active, attempts, parked_at, lease_until, heartbeat_at)
 SELECT seq, IF(seq % 7 < 3, seq % 3, 0), NOW(6) - INTERVAL (seq % 5000) SECOND + INTERVAL IF(seq % 11 = 0, 3600, 0) SECOND,
 seq % 10, IF(seq % 5003 = 0, 101, 0), IF(seq % 97 = 0, 0, 1), IF(seq % 13 = 0, 2, 0), IF(seq % 1009 = 0, NOW(6), NULL),
 IF(seq % 5003 = 0, NOW(6) + INTERVAL 30 SECOND, NULL), IF(seq % 5003 = 0, NOW(6), NULL)
 FROM seq_1_to_1000000`)
	if err != nil {
		t.Fatalf("seed 1,000,000 topics: %v", err)
	}
	b.db.ExecContext(b.ctx, "ANALYZE TABLE topic")
	t.Logf("seeded 1,000,000 topics in %v", time.Since(start).Round(time.Millisecond))
}
