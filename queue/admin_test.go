package queue_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// TestSetPriority changes one topic's priority; a missing topic is
// ErrTopicNotFound, also when the value would not change anything.
func TestSetPriority(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(2)...)
	if err := b.q.SetPriority(b.ctx, 2, 42); err != nil {
		t.Fatal(err)
	}
	if err := b.q.SetPriority(b.ctx, 2, 42); err != nil { // unchanged value still matches the row
		t.Fatal(err)
	}
	tp, _ := b.q.Topic(b.ctx, 2)
	if tp.Priority != 42 {
		t.Fatalf("priority %d, want 42", tp.Priority)
	}
	if err := b.q.SetPriority(b.ctx, 99, 1); !errors.Is(err, queue.ErrTopicNotFound) {
		t.Fatalf("missing topic: %v", err)
	}
}

// TestParkUnpark: a parked topic is never claimed and keeps its request;
// unparking makes it due again with attempts reset; a running topic is not
// parked; unparking an unparked topic changes nothing.
func TestParkUnpark(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(2)...)
	if err := b.q.Park(b.ctx, 1, "parked by a test"); err != nil {
		t.Fatal(err)
	}
	if err := b.q.Park(b.ctx, 99, ""); !errors.Is(err, queue.ErrTopicNotFound) {
		t.Fatalf("park missing: %v", err)
	}
	r := b.row(t, 1)
	if !r.parked.Valid || r.required == 0 || r.lastError.String != "parked by a test" {
		t.Fatalf("parked row: %+v", r)
	}
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil || c.TopicID != 2 {
		t.Fatalf("claim with topic 1 parked: %+v %v, want topic 2", c, err)
	}
	if err := b.q.Park(b.ctx, 2, ""); !errors.Is(err, queue.ErrTopicRunning) {
		t.Fatalf("park running topic: %v, want ErrTopicRunning", err)
	}
	if _, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102}); !errors.Is(err, queue.ErrNoneDue) {
		t.Fatalf("second claim: %v, want ErrNoneDue (topic 1 parked)", err)
	}
	was, err := b.q.Unpark(b.ctx, 1)
	if err != nil || !was {
		t.Fatalf("unpark: %v %v", was, err)
	}
	if r := b.row(t, 1); r.parked.Valid || r.attempts != 0 {
		t.Fatalf("unparked row: %+v", r)
	}
	if c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102}); err != nil || c.TopicID != 1 {
		t.Fatalf("claim after unpark: %+v %v", c, err)
	}
	if was, err := b.q.Unpark(b.ctx, 2); err != nil || was {
		t.Fatalf("unpark of an unparked topic: %v %v", was, err)
	}
	if _, err := b.q.Unpark(b.ctx, 99); !errors.Is(err, queue.ErrTopicNotFound) {
		t.Fatalf("unpark missing: %v", err)
	}
}

// TestReleaseClaim: an operator's release is fenced on the claim seen,
// waits for the publish lock, records a 'released' run naming the
// operator, keeps the request (due again at once, no attempt counted), and
// the holder's next heartbeat finds its claim lost.
func TestReleaseClaim(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(1)...)
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 101})
	if err != nil {
		t.Fatal(err)
	}
	p := &queue.AdminReleaseParams{TopicID: 1, InstanceID: 101, Token: c.Token + 1, Operator: "alice", Reason: "stuck"}
	if err := b.q.ReleaseClaim(b.ctx, p); !errors.Is(err, queue.ErrClaimLost) {
		t.Fatalf("release with a stale token: %v, want ErrClaimLost", err)
	}
	if r := b.row(t, 1); r.running != 101 {
		t.Fatalf("a refused release changed the row: %+v", r)
	}
	if err := b.q.ReleaseClaim(b.ctx, &queue.AdminReleaseParams{TopicID: 1, InstanceID: 101, Token: c.Token}); err == nil {
		t.Fatal("release without an operator name succeeded")
	}

	// Someone holds the publish lock: the release waits, then gives up.
	lockConn, err := b.db.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lockConn.Close()
	var got int
	if err := lockConn.QueryRowContext(b.ctx, "SELECT GET_LOCK(?, 0)", b.q.LockName(1)).Scan(&got); err != nil || got != 1 {
		t.Fatalf("take the publish lock: %v %v", got, err)
	}
	p.Token, p.LockWait = c.Token, 200*time.Millisecond
	if err := b.q.ReleaseClaim(b.ctx, p); !errors.Is(err, queue.ErrTopicLocked) {
		t.Fatalf("release while published: %v, want ErrTopicLocked", err)
	}
	lockConn.ExecContext(b.ctx, "DO RELEASE_LOCK(?)", b.q.LockName(1))

	if err := b.q.ReleaseClaim(b.ctx, p); err != nil {
		t.Fatal(err)
	}
	r := b.row(t, 1)
	if r.running != 0 || r.required == 0 || r.attempts != 0 || r.dueInFuture || !strings.Contains(r.lastError.String, "alice") {
		t.Fatalf("released row: %+v", r)
	}
	var outcome, msg string
	var inst int64
	var token uint64
	err = b.db.QueryRowContext(b.ctx, "SELECT outcome, error, instance_id, claim_token FROM run WHERE topic_id = 1").Scan(&outcome, &msg, &inst, &token)
	if err != nil || outcome != "released" || inst != 101 || token != c.Token || !strings.Contains(msg, "released by operator alice") || !strings.Contains(msg, "stuck") {
		t.Fatalf("run record: %q %q %d %d %v", outcome, msg, inst, token, err)
	}
	if err := b.q.Heartbeat(b.ctx, c); !errors.Is(err, queue.ErrClaimLost) {
		t.Fatalf("holder's heartbeat after the release: %v, want ErrClaimLost", err)
	}
	if c2, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 102}); err != nil || c2.TopicID != 1 {
		t.Fatalf("claim after release: %+v %v", c2, err)
	}
	if err := b.q.ReleaseClaim(b.ctx, p); !errors.Is(err, queue.ErrClaimLost) {
		t.Fatalf("second release of the old claim: %v, want ErrClaimLost", err)
	}
}

// TestRequestMatching requests every topic in a state (here: parked, which
// unparks them); an empty filter and a filter matching more than the limit
// change nothing.
func TestRequestMatching(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seed(t, dueTopics(6)...)
	if _, err := b.db.ExecContext(b.ctx, "UPDATE topic SET parked_at = NOW(6), attempts = 5, required = 0 WHERE id IN (2, 4)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.RequestMatching(b.ctx, &queue.TopicFilter{}, &queue.RequestParams{Scope: queue.ScopeFull}); !errors.Is(err, queue.ErrBadFilter) {
		t.Fatalf("empty filter: %v, want ErrBadFilter", err)
	}
	res, err := b.q.RequestMatching(b.ctx, &queue.TopicFilter{State: queue.TopicParked}, &queue.RequestParams{Scope: queue.ScopeFull})
	if err != nil || res.Requested != 2 {
		t.Fatalf("request parked: %+v %v", res, err)
	}
	for _, id := range []int64{2, 4} {
		if r := b.row(t, id); r.parked.Valid || r.required != queue.ScopeFull || r.attempts != 0 {
			t.Errorf("topic %d after request: %+v", id, r)
		}
	}
	if _, err := b.q.MatchingIDs(b.ctx, &queue.TopicFilter{State: queue.TopicDue}, 3); !errors.Is(err, queue.ErrTooMany) {
		t.Fatalf("6 due topics with a limit of 3: %v, want ErrTooMany", err)
	}
}
