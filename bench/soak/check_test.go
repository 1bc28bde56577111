package main

import (
	"strings"
	"testing"
)

func tag(v int64) *int64 { return &v }

// pair is a published pair whose every row carries one tag.
func pair(v int64) [4]*int64 { return [4]*int64{tag(v), tag(v), tag(v), tag(v)} }

// clean is a history that passes: topic 1 requested twice (versions 1
// and 2), claimed after both (claimed version 2, token 7), done and
// published by call 1001000000005; topic 2 never requested, nothing
// published; a read of each, whole.
func clean() *History {
	return &History{
		MaxAttempts: 5,
		Requests: []Request{
			{Topic: 1, Kind: "request", Version: 1, At: "t1"},
			{Topic: 1, Kind: "update", Version: 2, At: "t2"},
		},
		Calls: map[int64]Call{
			1001000000004: {Tag: 1001000000004, Replica: "replica1", Topic: 1, Token: 6, ClaimedVersion: 1},
			1001000000005: {Tag: 1001000000005, Replica: "replica1", Topic: 1, Token: 7, ClaimedVersion: 2},
		},
		Runs: []Run{
			{Topic: 1, Token: 6, Outcome: "reaped"},
			{Topic: 1, Token: 7, Outcome: "done", InSoak: true},
			{Topic: 1, Token: 8, Outcome: "lost", InSoak: true},
		},
		Topics: []Topic{
			{ID: 1, Token: 7, RequestVersion: 2, ClaimedVersion: 2, Tags: pair(1001000000005)},
			{ID: 2},
		},
		Reads: 2,
		// Reader 0 saw the topic move forward; reader 1 saw only the
		// newest.
		Seen: []Seen{{Reader: 0, Topic: 1, Tag: 1001000000004, At: "t1"}, {Reader: 0, Topic: 1, Tag: 1001000000005, At: "t2"},
			{Reader: 1, Topic: 1, Tag: 1001000000005, At: "t2"}},
		SoakSeconds: 1,
		Faults:      []Fault{{Kind: "worker_kill"}, {Kind: "net_reset", Err: "boom"}},
	}
}

func TestCheckCleanHistoryPasses(t *testing.T) {
	r := Check(clean())
	if !r.ok() {
		t.Fatalf("a clean history failed: %+v %v", r, r.Details)
	}
	// A done run of the drain does not count in topics_per_s.
	h := clean()
	h.Runs = append(h.Runs, Run{Topic: 2, Token: 1, Outcome: "done"})
	h.Topics[1].Token, h.Topics[1].Tags = 1, pair(1001000000006)
	h.Calls[1001000000006] = Call{Tag: 1001000000006, Topic: 2, Token: 1}
	if r := Check(h); !r.ok() || r.TopicsPerS != 1 {
		t.Errorf("with a done run in the drain: topics/s %v (want 1), %v", r.TopicsPerS, r.Details)
	}
	if r.FaultsInjected != 1 || r.TopicsPerS != 1 {
		t.Errorf("faults %d (want 1: the failed one does not count), topics/s %v (want 1)", r.FaultsInjected, r.TopicsPerS)
	}
}

// TestCheckDetects: each case breaks one rule of a clean history, and the
// checker must count it under the right key (and nothing else).
func TestCheckDetects(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(h *History)
		key    string
		// also: a key the break counts as well, as a consequence.
		also string
	}{
		// A request after the published run's claim (version 3 > claimed
		// 2): the finish erased it, the original loop's bug.
		{"lost request during the run", func(h *History) {
			h.Requests = append(h.Requests, Request{Topic: 1, Kind: "update", Version: 3, At: "t3"})
		}, "lost_requests", ""},
		// A request for a topic nothing ever published.
		{"lost request never run", func(h *History) {
			h.Requests = append(h.Requests, Request{Topic: 2, Kind: "request", Version: 1, At: "t3"})
		}, "lost_requests", ""},
		// The reaped claim's call (token 6) is what is live: an older claim
		// published over the newer one's done run.
		{"stale publish of a reaped claim", func(h *History) {
			h.Topics[0].Tags = pair(1001000000004)
			h.Requests = h.Requests[:1]
		}, "stale_publishes", ""},
		// The run history lost the done row (best effort), but the topic's
		// last claim is 8 while the published call is claim 7's.
		{"stale publish against the topic's last claim", func(h *History) {
			h.Topics[0].Token = 8
		}, "stale_publishes", ""},
		// The published pair mixes two calls (then no run's result serves
		// the requests either).
		{"published pair of two calls", func(h *History) {
			h.Topics[0].Tags[2], h.Topics[0].Tags[3] = tag(1001000000004), tag(1001000000004)
		}, "stale_publishes", "lost_requests"},
		// A published tag no call recorded.
		{"unknown tag", func(h *History) {
			h.Topics[0].Tags = pair(42)
		}, "stale_publishes", "lost_requests"},
		// A reader saw claim 7's result, then claim 6's: an older claim
		// published after a newer one (and the newer was put back).
		{"reader saw a topic go back", func(h *History) {
			h.Seen = []Seen{{Reader: 0, Topic: 1, Tag: 1001000000005, At: "t3"}, {Reader: 0, Topic: 1, Tag: 1001000000004, At: "t4"},
				{Reader: 0, Topic: 1, Tag: 1001000000005, At: "t5"}}
		}, "stale_publishes", ""},
		// A reader saw Post of one call and Dynamics of another.
		{"torn read", func(h *History) {
			h.Torn = append(h.Torn, Read{Topic: 1, At: "t4", Tags: [4]*int64{tag(1), tag(1), tag(2), tag(2)}})
		}, "torn_reads", ""},
		{"topic still running", func(h *History) { h.Topics[1].Running = 101 }, "leftovers", ""},
		{"topic still required", func(h *History) { h.Topics[1].Required = 2 }, "leftovers", ""},
		{"parked without a failure", func(h *History) { h.Topics[1].Parked = true }, "leftovers", ""},
		{"staging left", func(h *History) { h.StagingLeft = []string{"primary table influencer.nqtmp_7_Post_1"} }, "leftovers", ""},
		{"errant GTID", func(h *History) { h.Errant = []string{"replica1: 1001-1001-3"} }, "errant_gtids", ""},
		{"checksum diff", func(h *History) { h.ChecksumDiffs = 2 }, "checksum_diffs", ""},
		{"checksum not run", func(h *History) { h.ChecksumErr = "not found" }, "checksum_diffs", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := clean()
			c.break_(h)
			r := Check(h)
			got := map[string]int{"lost_requests": r.LostRequests, "stale_publishes": r.StalePublishes, "torn_reads": r.TornReads,
				"leftovers": r.Leftovers, "errant_gtids": r.ErrantGTIDs, "checksum_diffs": r.ChecksumDiffs}
			for k, n := range got {
				if k == c.key && n == 0 {
					t.Errorf("%s not detected: %+v", k, r)
				}
				if k != c.key && k != c.also && n != 0 {
					t.Errorf("%s = %d, want 0 (only %s broken): %v", k, n, c.key, r.Details)
				}
			}
			if r.ok() {
				t.Error("ok() is true")
			}
			if len(r.Details) == 0 || !strings.HasPrefix(r.Details[0], c.key) {
				t.Errorf("details %q do not name %s", r.Details, c.key)
			}
		})
	}
}

// TestCheckUnknownOutcomeNotChecked: a request whose commit may not have
// happened (the primary restarted under it) is not counted as lost.
func TestCheckUnknownOutcomeNotChecked(t *testing.T) {
	h := clean()
	h.Requests = append(h.Requests, Request{Topic: 2, Kind: "request", At: "t5", Err: "invalid connection"})
	if r := Check(h); !r.ok() {
		t.Fatalf("an indeterminate request was checked: %v", r.Details)
	}
}

// TestCheckParkedTopic: a parked topic with failures in its history is no
// leftover, and a request its failing claims covered is not lost, but a
// request after its last claim is (a request must unpark it).
func TestCheckParkedTopic(t *testing.T) {
	h := clean()
	h.Topics[1].Parked, h.Topics[1].Required = true, 2
	h.Runs = append(h.Runs, Run{Topic: 2, Token: 1, Outcome: "failed"}, Run{Topic: 2, Token: 2, Outcome: "parked"})
	if r := Check(h); !r.ok() {
		t.Fatalf("a parked topic with failures failed the check: %v", r.Details)
	}
	// A request the failing claims covered (claimed version 4): parked,
	// not lost.
	h.Topics[1].ClaimedVersion = 4
	h.Requests = append(h.Requests, Request{Topic: 2, Kind: "update", Version: 4, At: "t6"})
	if r := Check(h); !r.ok() || r.Parked != 1 {
		t.Fatalf("a request covered by the claims that parked the topic: parked %d, %v", r.Parked, r.Details)
	}
	// A request after the last claim should have unparked the topic.
	h.Requests = append(h.Requests, Request{Topic: 2, Kind: "update", Version: 5, At: "t7"})
	if r := Check(h); r.LostRequests != 1 {
		t.Fatalf("lost_requests %d, want 1: %v", r.LostRequests, r.Details)
	}
}

func TestParseChecksum(t *testing.T) {
	out := `Checking if all tables can be checksummed ...
Starting checksum ...
            TS ERRORS  DIFFS     ROWS  DIFF_ROWS  CHUNKS SKIPPED    TIME TABLE
12-06T19:56:58      0      0      200          0       1       0   0.021 app.TopicFilter
12-06T19:56:58      1      2      800          3       1       0   0.020 nonqueue.run
`
	d, e, n := parseChecksum(out)
	if d != 2 || e != 1 || n != 2 {
		t.Errorf("diffs %d errors %d tables %d, want 2 1 2", d, e, n)
	}
}
