package worker_test

import (
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// TestPoolRenewsLeasesTogether: the instances of one process do not renew
// their leases one statement each: the pool's keeper renews all of its
// running claims in one statement per beat, so the running topics carry
// the same heartbeat time (a statement's NOW(6)), and runs longer than
// the lease still finish, none reaped or lost.
func TestPoolRenewsLeasesTogether(t *testing.T) {
	const lease = 2 * time.Second
	b := setup(t, lease)
	ids := b.addTopics(t, 1, 4)
	for _, id := range ids {
		// Twice the lease: only renewals keep the claims.
		if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (?, 4)", id); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	p := b.startPool(t, 0, 4, func(c *worker.Config, _ *monitor.GateConfig) { c.HeartbeatInterval = 300 * time.Millisecond })
	defer p.stop(t)
	testdb.WaitFor(t, 30*time.Second, "the four topics running, each renewed once at least", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0 AND heartbeat_at > claimed_at") == 4
	})
	// A beat may fall between two reads: look a few times.
	same := false
	for range 10 {
		if b.count(t, "SELECT COUNT(DISTINCT heartbeat_at) FROM topic WHERE running <> 0 AND heartbeat_at > claimed_at") == 1 &&
			b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0 AND heartbeat_at > claimed_at") == 4 {
			same = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !same {
		t.Fatalf("the running topics' heartbeat times differ: one renewal per claim, not one per beat")
	}
	testdb.WaitFor(t, 60*time.Second, "the four slow topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") == 4
	})
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome IN ('reaped', 'lost')"); n != 0 {
		t.Fatalf("%d runs reaped or lost: the keeper did not keep the leases", n)
	}
}
