package worker_test

import (
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// TestPausedPoolClaimsNothing: a pool started under a pause of its replica
// claims nothing and shows its instances paused; a pause of another
// replica does not stop it once its own is resumed; a pause below a
// priority leaves those topics alone; resuming it lets every topic finish.
func TestPausedPoolClaimsNothing(t *testing.T) {
	b := setup(t, 30*time.Second)
	b.addTopics(t, 1, 10)
	b.exec(t, "UPDATE topic SET priority = 9 WHERE id <= 4")
	ps := &monitor.Pauses{Primary: b.primary, Schema: b.db}
	sid := env.SB.Replicas[0].ServerID
	own, err := ps.Add(b.ctx, &monitor.PauseParams{By: "test@host", Scope: monitor.PauseScope{ReplicaServerID: sid}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Add(b.ctx, &monitor.PauseParams{By: "test@host", Scope: monitor.PauseScope{ReplicaServerID: sid + 1}}); err != nil {
		t.Fatal(err)
	}
	b.startPool(t, 0, 2, nil)
	testdb.WaitFor(t, 30*time.Second, "both instances paused", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = ?", monitor.StatePaused) == 2
	})
	if testdb.Poll(time.Second, func() bool { return b.count(t, "SELECT SUM(claim_token) FROM topic") > 0 }) {
		t.Fatal("a paused pool claimed")
	}
	prio := int64(5)
	if _, err := ps.Add(b.ctx, &monitor.PauseParams{By: "test@host", Scope: monitor.PauseScope{BelowPriority: &prio}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Resume(b.ctx, &monitor.ResumeParams{ID: own.ID, By: "test@host"}); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 60*time.Second, "the priority-9 topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE priority = 9 AND (required > 0 OR running <> 0)") == 0
	})
	if testdb.Poll(time.Second, func() bool { return b.count(t, "SELECT SUM(claim_token) FROM topic WHERE priority < 5") > 0 }) {
		t.Fatal("a topic below the paused priority was claimed")
	}
	if _, err := ps.Resume(b.ctx, &monitor.ResumeParams{All: true, By: "test@host"}); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 60*time.Second, "every topic done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
}
