package worker_test

import (
	"net/http"
	"net/http/httptest"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// freno stands in for a freno-style throttle check: it answers code, late
// by delay.
type freno struct {
	code  atomic.Int32
	delay atomic.Int64
}

func (f *freno) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d := time.Duration(f.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(int(f.code.Load()))
}

// TestThrottleURLHoldsClaims: two processes on two replicas with a
// throttle URL. While it answers 429, and while it answers 200 too late,
// nothing is claimed (no claim token moves, no run is recorded) and every
// instance reads "throttled (throttle_url)" in the registry, which status
// and the dashboard show; once it answers 200 in time, every topic gets
// done and the instances leave the throttled state.
func TestThrottleURLHoldsClaims(t *testing.T) {
	b := setup(t, 30*time.Second)
	f := &freno{}
	f.code.Store(http.StatusTooManyRequests)
	srv := httptest.NewServer(f)
	defer srv.Close()
	b.depsTweak = func(d *worker.Deps) {
		d.Throttle = &monitor.Throttle{Primary: d.Primary, Config: monitor.ThrottleConfig{
			URL: srv.URL + "/check/nonqueue/mysql/primary", URLTimeout: 300 * time.Millisecond, SampleInterval: 100 * time.Millisecond}}
	}
	b.addTopics(t, 1, 20)
	b.startPool(t, 0, 2, nil)
	b.startPool(t, 1, 2, nil)

	throttled := "SELECT COUNT(*) FROM instance WHERE state = 'throttled' AND reason = 'throttle_url'"
	testdb.WaitFor(t, 30*time.Second, "4 instances throttled for throttle_url in the registry", func() bool {
		return b.count(t, throttled) == 4
	})
	claims := "SELECT COALESCE(SUM(claim_token), 0) FROM topic"
	hold := func(what string, d time.Duration) {
		t.Helper()
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			if n := b.count(t, claims); n != 0 {
				t.Fatalf("%s: %d claims made while the throttle URL said no", what, n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := b.count(t, "SELECT COUNT(*) FROM run"); n != 0 {
			t.Fatalf("%s: %d runs recorded", what, n)
		}
	}
	hold("429", 2*time.Second)
	f.code.Store(http.StatusOK)
	f.delay.Store(int64(time.Second)) // a 200 after the 300ms timeout still says no
	hold("200 after the timeout", 2*time.Second)
	if n := b.count(t, throttled); n != 4 {
		t.Errorf("%d instances throttled during the timeouts, want 4", n)
	}
	f.delay.Store(0)
	testdb.WaitFor(t, 90*time.Second, "all topics done after the URL answered 200", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	testdb.WaitFor(t, 10*time.Second, "20 done runs recorded", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") == 20
	})
	testdb.WaitFor(t, 10*time.Second, "no instance throttled", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'throttled' OR reason IS NOT NULL") == 0
	})
}

// TestPublishOverlapsNeverExceedK: 2 processes × 3 instances on two
// replicas publish 30 topics with max_concurrent_publishes K = 1 and 2.
// From the run history's publish windows (publish_started_at,
// publish_finished_at: the slot's hold on the primary's clock), no more
// than K publishes ever overlap, and every topic is done.
func TestPublishOverlapsNeverExceedK(t *testing.T) {
	for _, k := range []int{1, 2} {
		t.Run(map[int]string{1: "K=1", 2: "K=2"}[k], func(t *testing.T) {
			b := setup(t, 30*time.Second)
			b.depsTweak = func(d *worker.Deps) {
				d.Slots = &monitor.PublishSlots{Schema: b.db, Max: k, Wait: time.Minute}
			}
			b.addTopics(t, 1, 30)
			b.startPool(t, 0, 3, nil)
			b.startPool(t, 1, 3, nil)
			testdb.WaitFor(t, 120*time.Second, "all topics done", func() bool {
				return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
			})
			testdb.WaitFor(t, 10*time.Second, "30 runs recorded", func() bool {
				return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") >= 30
			})
			if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done' AND (publish_started_at IS NULL OR publish_finished_at IS NULL)"); n != 0 {
				t.Fatalf("%d done runs without a publish window", n)
			}
			rows, err := b.primary.QueryContext(b.ctx, "SELECT publish_started_at, publish_finished_at FROM run WHERE publish_started_at IS NOT NULL")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			type edge struct {
				at    time.Time
				delta int
			}
			var edges []edge
			for rows.Next() {
				var from, to time.Time
				if err := rows.Scan(&from, &to); err != nil {
					t.Fatal(err)
				}
				if to.Before(from) {
					t.Fatalf("window %v to %v ends before it starts", from, to)
				}
				edges = append(edges, edge{from, +1}, edge{to, -1})
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			// Ends before starts at the same instant: a slot handed over
			// in the same microsecond is no overlap.
			sort.Slice(edges, func(i, j int) bool {
				if !edges[i].at.Equal(edges[j].at) {
					return edges[i].at.Before(edges[j].at)
				}
				return edges[i].delta < edges[j].delta
			})
			cur, peak := 0, 0
			for _, e := range edges {
				cur += e.delta
				peak = max(peak, cur)
			}
			t.Logf("K=%d: %d publish windows, at most %d at once", k, len(edges)/2, peak)
			if peak > k {
				t.Fatalf("%d publishes overlapped, cap %d", peak, k)
			}
		})
	}
}

// TestThrottleHoldsPublish: a run whose procedure ends while the throttle
// is closed waits before shipping, with its claim kept alive past the
// lease by its heartbeat (no reap, no second claim), shows as throttled on
// its topic in the registry, and publishes once the throttle opens.
func TestThrottleHoldsPublish(t *testing.T) {
	const lease = 4 * time.Second
	b := setup(t, lease)
	f := &freno{}
	f.code.Store(http.StatusOK)
	srv := httptest.NewServer(f)
	defer srv.Close()
	b.depsTweak = func(d *worker.Deps) {
		d.Throttle = &monitor.Throttle{Primary: d.Primary, Config: monitor.ThrottleConfig{
			URL: srv.URL, URLTimeout: 300 * time.Millisecond, SampleInterval: 100 * time.Millisecond}}
	}
	b.addTopics(t, 1, 1)
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (1, 2)"); err != nil { // the procedure takes 2 s
		t.Fatal(err)
	}
	b.startPool(t, 0, 1, nil)
	testdb.WaitFor(t, 30*time.Second, "topic 1 claimed", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running <> 0") == 1
	})
	f.code.Store(http.StatusTooManyRequests)
	testdb.WaitFor(t, 30*time.Second, "the run waiting to publish, throttled on topic 1", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'throttled' AND reason = 'throttle_url' AND topic_id = 1") == 1
	})
	time.Sleep(lease + lease/2) // past the lease: only the heartbeat keeps the claim
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND running <> 0 AND claim_token = 1"); n != 1 {
		t.Fatalf("the waiting run's claim was lost or taken again")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run"); n != 0 {
		t.Fatalf("%d runs recorded while the publish waited", n)
	}
	f.code.Store(http.StatusOK)
	testdb.WaitFor(t, 30*time.Second, "topic 1 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id = 1 AND outcome = 'done' AND claim_token = 1") == 1
	})
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id = 1 AND (required > 0 OR running <> 0)"); n != 0 {
		t.Fatal("topic 1 not finished")
	}
}
