package follow_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker/follow"
)

// fast is the follower configuration of the tests: quick flushes and lock
// polls, a name per test.
func fast(name string) follow.Config {
	return follow.Config{Name: name, FlushInterval: 100 * time.Millisecond, LockPoll: 200 * time.Millisecond}
}

// TestFollowNothingMissed: under a steady write load on the source rows
// (inserts, updates that move rows between topics, deletes), every topic
// whose rows changed is requested, the old one of an update too, and no
// other.
func TestFollowNothingMissed(t *testing.T) {
	b := setup(t)
	f, _ := b.start(t, fast("steady"), b.rules(0))
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	l := b.startLoad(t, time.Millisecond)
	time.Sleep(4 * time.Second)
	l.end()
	b.waitCaughtUp(t, "steady", 60*time.Second)
	b.checkSets(t, l, true)
	if st := f.Stats(); st.Events < uint64(l.opsDone()) || st.Requests == 0 || st.Flushes == 0 {
		t.Errorf("stats %+v after %d writes: want events ≥ writes and requests", st, l.opsDone())
	}
	fr, err := b.q.Followers(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fr) != 1 || fr[0].Name != "steady" || !fr[0].Active || fr[0].Events < int64(l.opsDone()) || fr[0].Requests == 0 {
		t.Errorf("followers %+v: want steady, active, with its events and requests", fr)
	}
}

// TestFollowKillRestart: a follower process SIGKILLed mid-stream and
// started again resumes from its saved position: 0 missing.
func TestFollowKillRestart(t *testing.T) {
	b := setup(t)
	c := b.startChild(t, fast("kill"), b.rules(0))
	b.waitActive(t, "kill", c.cmd.Process.Pid)
	l := b.startLoad(t, time.Millisecond)
	testdb.WaitFor(t, 30*time.Second, "writes before the kill", func() bool { return l.opsDone() > 500 })
	c.kill()
	// Writes go on while no follower runs.
	time.Sleep(time.Second)
	c2 := b.startChild(t, fast("kill"), b.rules(0))
	b.waitActive(t, "kill", c2.cmd.Process.Pid)
	time.Sleep(time.Second)
	l.end()
	b.waitCaughtUp(t, "kill", 60*time.Second)
	b.checkSets(t, l, true)
}

// TestFollowSourceRestart: the source replica restarts mid-stream; the
// follower reconnects and misses nothing.
func TestFollowSourceRestart(t *testing.T) {
	b := setup(t)
	f, _ := b.start(t, fast("srcrestart"), b.rules(0))
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	l := b.startLoad(t, time.Millisecond)
	testdb.WaitFor(t, 30*time.Second, "writes before the restart", func() bool { return l.opsDone() > 300 })
	if err := env.SB.Restart(b.ctx, env.SB.Replicas[0].Name, false); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	l.end()
	b.waitCaughtUp(t, "srcrestart", 90*time.Second)
	b.checkSets(t, l, true)
}

// TestFollowRotation: the source's binary log rotates (FLUSH BINARY LOGS)
// several times mid-stream; the follower reads on into each new file and
// misses nothing.
func TestFollowRotation(t *testing.T) {
	b := setup(t)
	f, _ := b.start(t, fast("rotation"), b.rules(0))
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	l := b.startLoad(t, time.Millisecond)
	for i := range 3 {
		n := l.opsDone()
		testdb.WaitFor(t, 30*time.Second, "writes before the rotation", func() bool { return l.opsDone() > n+200 })
		if _, err := b.replica.ExecContext(b.ctx, "FLUSH BINARY LOGS"); err != nil {
			t.Fatalf("rotation %d: %v", i+1, err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	l.end()
	b.waitCaughtUp(t, "rotation", 60*time.Second)
	b.checkSets(t, l, true)
	if st := f.Stats(); st.Errors != 0 {
		t.Errorf("%d errors: rotation should not interrupt following", st.Errors)
	}
}

// TestFollowCoalesce: 1,000 changes to one topic within the after window
// make one pending request, and so one run.
func TestFollowCoalesce(t *testing.T) {
	b := setup(t)
	f, _ := b.start(t, fast("coalesce"), b.rules(6*time.Second))
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO post (id, topic) VALUES (1, 7)"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 999 {
		if _, err := b.primary.ExecContext(b.ctx, "UPDATE post SET body = ? WHERE id = 1", i); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Skipf("1,000 changes took %v, longer than the after window: the host is too loaded to test coalescing", el)
	}
	b.waitCaughtUp(t, "coalesce", 60*time.Second)
	// Claim like an instance until nothing is due for a while: topic 7
	// runs once.
	runs := 0
	deadline := time.Now().Add(20 * time.Second)
	lastRun := time.Now()
	for time.Now().Before(deadline) && time.Since(lastRun) < 10*time.Second {
		c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 1})
		if errors.Is(err, queue.ErrNoneDue) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.TopicID != 7 {
			t.Fatalf("claimed topic %d: only topic 7 changed", c.TopicID)
		}
		if c.Scope != queue.ScopePartial {
			t.Errorf("claim scope %d: want partial", c.Scope)
		}
		if time.Since(start) < 5*time.Second {
			t.Errorf("topic 7 ran %v after the first change: want not before the 6s after window", time.Since(start))
		}
		runs++
		lastRun = time.Now()
		if err := b.q.Finish(b.ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if runs != 1 {
		t.Errorf("1,000 changes within the after window made %d runs: want 1", runs)
	}
	if st := f.Stats(); st.Events < 1000 {
		t.Errorf("events %d: want 1,000", st.Events)
	}
}

// TestFollowFailover: two followers under one name; the active one is
// SIGKILLed mid-stream and the standby continues from the saved position:
// 0 missing.
func TestFollowFailover(t *testing.T) {
	b := setup(t)
	c1 := b.startChild(t, fast("failover"), b.rules(0))
	b.waitActive(t, "failover", c1.cmd.Process.Pid)
	c2 := b.startChild(t, fast("failover"), b.rules(0))
	l := b.startLoad(t, time.Millisecond)
	testdb.WaitFor(t, 30*time.Second, "writes before the kill", func() bool { return l.opsDone() > 500 })
	c1.kill()
	killed := time.Now()
	b.waitActive(t, "failover", c2.cmd.Process.Pid)
	took := time.Since(killed)
	t.Logf("standby took over %v after the kill", took)
	if took > 10*time.Second {
		t.Errorf("standby took over after %v: want within seconds", took)
	}
	time.Sleep(time.Second)
	l.end()
	b.waitCaughtUp(t, "failover", 60*time.Second)
	b.checkSets(t, l, true)
}

// TestFollowDDL: ALTER TABLE ADD COLUMN FIRST on the followed table in
// mid-stream shifts every column; the follower still reads the topic
// column (by name, from the table map), so nothing is missed and no other
// column's value is taken for a topic id.
func TestFollowDDL(t *testing.T) {
	b := setup(t)
	f, _ := b.start(t, fast("ddl"), b.rules(0))
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	l := b.startLoad(t, time.Millisecond)
	testdb.WaitFor(t, 30*time.Second, "writes before the ALTER", func() bool { return l.opsDone() > 300 })
	// A first column whose values are a topic's id that no write
	// touches: a row mis-mapped to it requests topic 5000.
	for _, s := range []string{"INSERT INTO topic (id) VALUES (5000)", "ALTER TABLE post ADD COLUMN lead INT NOT NULL DEFAULT 5000 FIRST"} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	n := l.opsDone()
	testdb.WaitFor(t, 30*time.Second, "writes after the ALTER", func() bool { return l.opsDone() > n+300 })
	l.end()
	b.waitCaughtUp(t, "ddl", 60*time.Second)
	b.checkSets(t, l, true)
}

// TestFollowLookup: the indirect mapping. Changes to comment rows (keyed
// by post) request the topic of their post, found by the lookup on the
// replica.
func TestFollowLookup(t *testing.T) {
	b := setup(t)
	for _, s := range []string{
		"CREATE TABLE comment (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, post_id INT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO post (id, topic) VALUES (10, 41), (11, 42), (12, 43)",
	} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	rules := []follow.Rule{{Table: b.db + ".comment", KeyColumn: "post_id", Lookup: "SELECT topic FROM " + b.db + ".post WHERE id = ?"}}
	f, _ := b.start(t, fast("lookup"), rules)
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
	for _, s := range []string{"INSERT INTO comment (post_id) VALUES (10), (12)", "UPDATE comment SET post_id = 11 WHERE post_id = 12"} {
		if _, err := b.primary.ExecContext(b.ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	b.waitCaughtUp(t, "lookup", 60*time.Second)
	got := b.requested(t)
	if len(got) != 3 || !got[41] || !got[42] || !got[43] {
		t.Errorf("requested %v: want 41, 42, 43", got)
	}
	var scope int
	if err := b.primary.QueryRowContext(b.ctx, "SELECT required FROM topic WHERE id = 41").Scan(&scope); err != nil || scope != queue.ScopeFull {
		t.Errorf("topic 41 required %d (%v): want full, the default scope", scope, err)
	}
}

// waitActive waits until the follower row names pid as its active process.
func (b *bundle) waitActive(t *testing.T, name string, pid int) {
	t.Helper()
	testdb.WaitFor(t, 30*time.Second, "follower "+name+" active in process "+strconv.Itoa(pid), func() bool {
		fr, err := b.q.Followers(b.ctx)
		if err != nil {
			return false
		}
		for _, r := range fr {
			if r.Name == name && r.PID == pid && r.Active {
				return true
			}
		}
		return false
	})
}
