package dashboard_test

import (
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// instance is a registry row as History.Instances reads it.
func instance(id int64, state string, topic int64, age time.Duration) monitor.InstanceRecord {
	return monitor.InstanceRecord{InstanceInfo: monitor.InstanceInfo{ID: id}, State: state, TopicID: topic, HeartbeatAge: age}
}

// held is a running topic as Queue.Running reads it; age < 0 means no
// claim heartbeat recorded.
func held(topic, by int64, age time.Duration) queue.TopicRow {
	r := queue.TopicRow{ID: topic, State: queue.TopicRunning, Running: by}
	if age >= 0 {
		r.At = time.Now()
		r.HeartbeatAt, r.HeartbeatAge = r.At.Add(-age), age
	}
	return r
}

// TestInstanceViews: the running topics, not the registry (written on
// state changes and refreshes, not per topic), say which topic an instance
// holds; a claim heartbeat is a sign of life; an instance silent for longer
// than the lease is stale unless it exited.
func TestInstanceViews(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	lease := b.q.Config().Lease
	recs := []monitor.InstanceRecord{
		instance(1101, monitor.StateRunning, 5, lease*8/10),      // moved on to topic 9, whose claim beat since
		instance(1102, monitor.StateRunning, 5, lease/10),        // holds 10, its registry row the younger sign
		instance(1103, monitor.StateRunning, 5, lease/2),         // finished 5, holds nothing
		instance(1104, monitor.StateRunning, 5, 2*lease),         // holds nothing, silent: stale
		instance(1105, monitor.StateIdle, 0, 2*lease),            // registry not refreshed yet, but holds 11 and beats
		instance(1106, monitor.StateExited, 0, 100*lease),        // gone for good: never stale
		instance(1107, monitor.StateRunning, 12, 2*lease),        // holds 12 with no claim heartbeat: stale
		instance(1108, monitor.StateRunning, 13, lease/2),        // 13 is someone else's now
		instance(1109, monitor.StateRunning, 14, lease+lease/10), // just over the lease, its topic's beat older still
	}
	running := []queue.TopicRow{
		held(9, 1101, lease/10),
		held(10, 1102, lease*7/10),
		held(11, 1105, lease/5),
		held(12, 1107, -1),
		held(13, 1199, 0),
		held(14, 1109, 2*lease),
	}
	want := map[int64]struct {
		topic    int64
		lastSeen time.Duration
		stale    bool
	}{
		1101: {9, lease / 10, false},
		1102: {10, lease / 10, false},
		1103: {0, lease / 2, false},
		1104: {0, 2 * lease, true},
		1105: {11, lease / 5, false},
		1106: {0, 100 * lease, false},
		1107: {12, 2 * lease, true},
		1108: {0, lease / 2, false},
		1109: {14, lease + lease/10, true},
	}
	views := b.src.InstanceViews(b.ctx, recs, running)
	if len(views) != len(recs) {
		t.Fatalf("%d views for %d instances", len(views), len(recs))
	}
	for i, v := range views {
		w := want[recs[i].ID]
		if v.ID != recs[i].ID || v.State != recs[i].State || v.TopicID != w.topic || v.LastSeen != w.lastSeen || v.Stale != w.stale {
			t.Errorf("instance %d: topic %d, last seen %v, stale %v; want topic %d, last seen %v, stale %v",
				recs[i].ID, v.TopicID, v.LastSeen, v.Stale, w.topic, w.lastSeen, w.stale)
		}
	}
	// The registry's rows are not rewritten.
	if recs[0].TopicID != 5 || recs[2].TopicID != 5 {
		t.Errorf("instanceViews changed its input: %+v", recs[:3])
	}
}

// TestInstanceViewsCappedRunning: when the running list is capped at
// queue.MaxTopicLimit an instance missing from it may still hold the topic
// its registry row names: that one topic is looked up in the topic table.
func TestInstanceViewsCappedRunning(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	lease := b.q.Config().Lease
	b.seedTopics(t, 5, 1)
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 1101})
	if err != nil || c.TopicID != 5 {
		t.Fatalf("claim: %+v, %v", c, err)
	}
	b.exec(t, "INSERT INTO topic (id, required) VALUES (6, 0)")
	running := make([]queue.TopicRow, queue.MaxTopicLimit)
	for i := range running {
		running[i] = held(int64(10000+i), int64(50000+i), lease/10)
	}
	recs := []monitor.InstanceRecord{
		instance(1101, monitor.StateRunning, 5, 2*lease),  // holds 5, its claim just made: alive
		instance(1102, monitor.StateRunning, 6, 2*lease),  // 6 runs no more
		instance(1103, monitor.StateRunning, 77, lease/2), // no such topic
		instance(1104, monitor.StateIdle, 5, lease/2),     // not running: not looked up
	}
	views := b.src.InstanceViews(b.ctx, recs, running)
	if v := views[0]; v.TopicID != 5 || v.LastSeen >= lease || v.Stale {
		t.Errorf("holder of topic 5: topic %d, last seen %v, stale %v; want topic 5, seen within the lease", v.TopicID, v.LastSeen, v.Stale)
	}
	if v := views[1]; v.TopicID != 0 || v.LastSeen != 2*lease || !v.Stale {
		t.Errorf("former holder of topic 6: topic %d, last seen %v, stale %v", v.TopicID, v.LastSeen, v.Stale)
	}
	if v := views[2]; v.TopicID != 0 || v.LastSeen != lease/2 || v.Stale {
		t.Errorf("registry naming a missing topic: topic %d, last seen %v, stale %v", v.TopicID, v.LastSeen, v.Stale)
	}
	if v := views[3]; v.TopicID != 0 || v.LastSeen != lease/2 || v.Stale {
		t.Errorf("idle instance: topic %d, last seen %v, stale %v", v.TopicID, v.LastSeen, v.Stale)
	}
}
