package queue_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

// TestLeasesRenewTogether: one beat renews every kept claim's lease with
// one UPDATE; a claim taken back meanwhile (reaped and re-claimed by the
// same instance id: only the token differs) is reported lost to its owner
// alone, once, and is no longer kept; the others keep their leases, and a
// claim whose keeping stopped is no longer renewed.
func TestLeasesRenewTogether(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.Lease = 2 * time.Second })
	b.seed(t, dueTopics(4)...)
	var claims []*queue.Claim
	for i := range 4 {
		c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: int64(101 + i)})
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, c)
	}
	l := b.q.NewLeases(time.Hour, nil)
	var mu sync.Mutex
	lost := map[int64][]error{}
	stops := map[int64]func(){}
	for _, c := range claims {
		stops[c.TopicID] = l.Keep(c, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			lost[c.TopicID] = append(lost[c.TopicID], err)
		})
	}
	leaseOf := func(id int64) time.Time {
		t.Helper()
		var at time.Time
		if err := b.db.QueryRowContext(b.ctx, "SELECT lease_until FROM topic WHERE id = ?", id).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}

	before := map[int64]time.Time{}
	for _, c := range claims {
		before[c.TopicID] = leaseOf(c.TopicID)
	}
	time.Sleep(20 * time.Millisecond)
	if err := l.Renew(b.ctx); err != nil {
		t.Fatal(err)
	}
	// One statement: NOW(6) is the statement's start, the same for every
	// row it writes; a renewal per claim would stamp each differently.
	var stamps int
	if err := b.db.QueryRowContext(b.ctx, "SELECT COUNT(DISTINCT heartbeat_at) FROM topic WHERE heartbeat_at IS NOT NULL").Scan(&stamps); err != nil {
		t.Fatal(err)
	}
	if stamps != 1 {
		t.Errorf("one beat for 4 claims left %d distinct heartbeat times, want 1 (one statement)", stamps)
	}
	for _, c := range claims {
		if a := leaseOf(c.TopicID); !a.After(before[c.TopicID]) {
			t.Errorf("topic %d: lease %v not renewed (was %v)", c.TopicID, a, before[c.TopicID])
		}
	}
	if len(lost) != 0 {
		t.Fatalf("claims reported lost while all held: %v", lost)
	}

	// Take claims[1] back: expire, reap, re-claim by the same instance.
	stolen := claims[1]
	if _, err := b.db.ExecContext(b.ctx, "UPDATE topic SET lease_until = NOW(6) - INTERVAL 1 SECOND WHERE id = ?", stolen.TopicID); err != nil {
		t.Fatal(err)
	}
	if r, err := b.q.Reap(b.ctx, 900, 10); err != nil || len(r) != 1 {
		t.Fatalf("reap: %v %v", r, err)
	}
	again, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: stolen.InstanceID})
	if err != nil || again.TopicID != stolen.TopicID {
		t.Fatalf("re-claim: %+v %v", again, err)
	}
	// Stop keeping claims[3]: its lease must be left alone.
	stops[claims[3].TopicID]()
	againLease, stoppedLease := leaseOf(again.TopicID), leaseOf(claims[3].TopicID)
	time.Sleep(20 * time.Millisecond)
	for range 2 {
		if err := l.Renew(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lost) != 1 || len(lost[stolen.TopicID]) != 1 || !errors.Is(lost[stolen.TopicID][0], queue.ErrClaimLost) {
		t.Fatalf("lost = %v, want one ErrClaimLost for topic %d", lost, stolen.TopicID)
	}
	if got := leaseOf(again.TopicID); !got.Equal(againLease) {
		t.Errorf("the new claim's lease moved (%v → %v): the stale claim's renewal wrote it", againLease, got)
	}
	if got := leaseOf(claims[3].TopicID); !got.Equal(stoppedLease) {
		t.Errorf("a claim no longer kept was renewed (%v → %v)", stoppedLease, got)
	}
	if l.Held() != 2 {
		t.Errorf("keeper holds %d claims, want 2 (lost and stopped ones dropped)", l.Held())
	}
	for _, c := range []*queue.Claim{claims[0], claims[2], claims[3], again} {
		if err := b.q.Finish(b.ctx, c); err != nil {
			t.Errorf("finish topic %d: %v", c.TopicID, err)
		}
	}
}

// TestLeasesBeatIsBounded: when the primary's connections hang (a
// half-open network: toxiproxy's timeout toxic holds every byte), a beat
// gives up within twice the interval and says so, instead of holding up
// every later renewal until the leases run out; once the network is back,
// the next beats renew the lease again.
func TestLeasesBeatIsBounded(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *queue.Config) { c.Lease = 10 * time.Second })
	b.seed(t, dueTopics(1)...)
	mc := env.Primary(b.cfg.Schema)
	n, err := netsim.New(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	link, err := n.Add("primary", mc.Addr, netsim.MySQL)
	if err != nil {
		t.Fatal(err)
	}
	mc.Addr = link.Addr()
	q, err := queue.Open(b.ctx, mc, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	c, err := q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	var logs testdb.SyncBuffer
	l := q.NewLeases(200*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	l.Keep(c, func(err error) { t.Errorf("claim reported lost: %v", err) })
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if _, err := link.Proxy().Toxics.AddToxicJson(strings.NewReader(`{"name":"hang","type":"timeout","stream":"downstream","toxicity":1,"attributes":{"timeout":0}}`)); err != nil {
		t.Fatal(err)
	}
	hung := time.Now()
	testdb.WaitFor(t, 10*time.Second, "a beat to give up on the hung network", func() bool {
		return strings.Contains(logs.String(), "renew leases failed")
	})
	// The bound is max(2 x interval, 1 s); allow for a loaded machine.
	if waited := time.Since(hung); waited > 5*time.Second {
		t.Errorf("the first failed beat was reported after %v", waited)
	}
	if err := link.Proxy().Toxics.RemoveToxic(context.Background(), "hang"); err != nil {
		t.Fatal(err)
	}
	var before time.Time
	if err := b.db.QueryRowContext(b.ctx, "SELECT lease_until FROM topic WHERE id = ?", c.TopicID).Scan(&before); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 15*time.Second, "a renewal once the network is back", func() bool {
		var now time.Time
		if err := b.db.QueryRowContext(b.ctx, "SELECT lease_until FROM topic WHERE id = ?", c.TopicID).Scan(&now); err != nil {
			t.Fatal(err)
		}
		return now.After(before)
	})
}
