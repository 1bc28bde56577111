package transfer

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func testNames(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

// groupNames lists each group's names, in order.
func groupNames(gs []*dropGroup) [][]string {
	var out [][]string
	for _, g := range gs {
		out = append(out, g.names)
	}
	return out
}

// The pause after each failed try starts at 1 s, doubles, and stays at
// 1 min.
func TestDropRetryPause(t *testing.T) {
	r := newDropRetries()
	var got []time.Duration
	for tries := 1; tries <= 9; tries++ {
		got = append(got, r.pause(tries))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second,
		32 * time.Second, time.Minute, time.Minute, time.Minute}
	if !slices.Equal(got, want) {
		t.Fatalf("pauses %v, want %v", got, want)
	}
}

// Tables beyond the cap are not queued but returned (left to
// CleanupPrimary); room made by a drop is used again.
func TestDropRetryCap(t *testing.T) {
	r := newDropRetries()
	r.cap = 5
	t0 := time.Unix(1000, 0)
	if over := r.add(testNames("a", 3), t0); len(over) != 0 {
		t.Fatalf("over the cap with 3 of 5: %v", over)
	}
	if over := r.add(testNames("b", 4), t0); !slices.Equal(over, []string{"b2", "b3"}) {
		t.Fatalf("over the cap: %v, want b2 b3", over)
	}
	if over := r.add(testNames("c", 1), t0); !slices.Equal(over, []string{"c0"}) {
		t.Fatalf("over a full cap: %v, want c0", over)
	}
	if r.pending() != 5 {
		t.Fatalf("pending %d, want 5", r.pending())
	}
	due := r.due(t0.Add(time.Second))
	if len(due) != 2 {
		t.Fatalf("due: %v", groupNames(due))
	}
	// Taken out for a round, the tables still count against the cap.
	if over := r.add(testNames("d", 1), t0); len(over) != 1 {
		t.Fatalf("room while a round is out: %v", over)
	}
	r.done(due[0])
	if over := r.add(testNames("e", 4), t0); !slices.Equal(over, []string{"e3"}) {
		t.Fatalf("after a drop of 3: over %v, want e3", over)
	}
}

// A round takes the groups due, in order; a failure puts the untried
// groups first and the failed one last, split in halves on a lock wait,
// each a pause further; success forgets the group.
func TestDropRetryRound(t *testing.T) {
	r := newDropRetries()
	t0 := time.Unix(1000, 0)
	r.add(testNames("a", 4), t0)
	r.add(testNames("b", 2), t0)
	r.add(testNames("c", 1), t0.Add(10*time.Second)) // due at t0+11s
	if at, ok := r.next(); !ok || !at.Equal(t0.Add(time.Second)) {
		t.Fatalf("next = %v %v, want t0+1s", at, ok)
	}
	if due := r.due(t0.Add(999 * time.Millisecond)); len(due) != 0 {
		t.Fatalf("due before their pause: %v", groupNames(due))
	}
	t1 := t0.Add(time.Second)
	due := r.due(t1)
	if got := groupNames(due); len(got) != 2 || got[0][0] != "a0" || got[1][0] != "b0" {
		t.Fatalf("due at t0+1s: %v, want a and b in order", got)
	}
	// a fails on a table's lock: b is not tried.
	if gaveUp := r.failed(due[0], true, due[1:], t1); len(gaveUp) != 0 {
		t.Fatalf("gave up after 1s: %v", gaveUp)
	}
	if got, want := groupNames(r.groups), [][]string{{"b0", "b1"}, {"c0"}, {"a0", "a1"}, {"a2", "a3"}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the failure: %v, want %v", got, want)
	}
	for _, g := range r.groups {
		if g.names[0] != "c0" && (g.tries != 2 || !g.next.Equal(t1.Add(2*time.Second))) {
			t.Fatalf("group %v: tries %d, next %v; want 2 tries, due at t0+3s", g.names, g.tries, g.next.Sub(t0))
		}
	}
	if r.pending() != 7 {
		t.Fatalf("pending %d, want 7", r.pending())
	}
	// Next round: b first, then the halves of a; b and a0 a1 go, a2 a3
	// fails (a connection error: no split).
	t3 := t0.Add(3 * time.Second)
	due = r.due(t3)
	if got := groupNames(due); fmt.Sprint(got) != fmt.Sprint([][]string{{"b0", "b1"}, {"a0", "a1"}, {"a2", "a3"}}) {
		t.Fatalf("due at t0+3s: %v", got)
	}
	r.done(due[0])
	r.done(due[1])
	r.failed(due[2], false, nil, t3)
	if got := groupNames(r.groups); fmt.Sprint(got) != fmt.Sprint([][]string{{"c0"}, {"a2", "a3"}}) {
		t.Fatalf("after the second round: %v", got)
	}
	if g := r.groups[1]; g.tries != 3 || !g.next.Equal(t3.Add(4*time.Second)) {
		t.Fatalf("a2 a3: tries %d, due at t0+%v; want 3, t0+7s", g.tries, g.next.Sub(t0))
	}
	if r.pending() != 3 {
		t.Fatalf("pending %d, want 3", r.pending())
	}
}

// A group still failing giveUpAfter past its first failure is given up
// (returned, no longer pending), whether it was tried or only postponed;
// younger groups stay.
func TestDropRetryGivesUp(t *testing.T) {
	r := newDropRetries()
	t0 := time.Unix(1000, 0)
	r.add(testNames("old", 2), t0)
	r.add(testNames("held", 1), t0)
	r.add(testNames("young", 1), t0.Add(14*time.Minute))
	now := t0.Add(dropRetryFor)
	due := r.due(now)
	if len(due) != 3 {
		t.Fatalf("due after 15 min: %v", groupNames(due))
	}
	gaveUp := r.failed(due[1], true, []*dropGroup{due[0], due[2]}, now)
	slices.Sort(gaveUp)
	if want := []string{"held0", "old0", "old1"}; !slices.Equal(gaveUp, want) {
		t.Fatalf("gave up %v, want %v", gaveUp, want)
	}
	if got := groupNames(r.groups); fmt.Sprint(got) != fmt.Sprint([][]string{{"young0"}}) || r.pending() != 1 {
		t.Fatalf("left %v (pending %d), want young0 alone", got, r.pending())
	}
	if all := r.all(); len(all) != 1 || r.pending() != 0 {
		t.Fatalf("all: %v, pending after %d", groupNames(all), r.pending())
	}
	if _, ok := r.next(); ok {
		t.Fatal("next after all: a group is left")
	}
}
