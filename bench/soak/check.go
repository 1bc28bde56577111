package main

import (
	"fmt"
	"sort"
	"strings"
)

// History is what the soak recorded and read back after the drain, the
// checker's only input. Check is a pure function of it, so its rules are
// tested on synthetic histories (check_test.go).
type History struct {
	// Requests are the load generator's log, one per request sent.
	Requests []Request
	// Calls are the procedure's own records on every replica (soak_calls),
	// by tag.
	Calls map[int64]Call
	// Runs are the run history on the primary (best effort: a worker
	// killed before its batch was written loses its last rows).
	Runs []Run
	// Topics are the topic rows and their published results on the
	// primary after the drain.
	Topics []Topic
	// Reads is how many reads the application readers made; Torn the
	// ones that saw two calls at once.
	Reads int
	Torn  []Read
	// Seen are, per reader and topic, the tags the reader saw in the
	// order it saw them (a new entry each time the tag changed).
	Seen []Seen
	// StagingLeft: staging tables and files (nqtmp_, nqold_) on the
	// primary, and result tables on the replicas, that the workers' own
	// sweep, run with a zero window after the workers stopped, left.
	StagingLeft []string
	// Errant: GTID-state entries on a replica that are not the primary's
	// (domain 0, the primary's server_id).
	Errant []string
	// ChecksumDiffs: chunks pt-table-checksum found different on a
	// replica; ChecksumErr a failure to run it (counted as one diff).
	ChecksumDiffs int
	ChecksumErr   string
	// MaxAttempts is the workers' [topics] max_attempts.
	MaxAttempts int
	// Faults are the injected faults.
	Faults []Fault
	// SoakSeconds is how long the load ran (topics_per_s counts the done
	// runs that finished meanwhile); Drained whether the fleet
	// finished everything within the drain bound.
	SoakSeconds float64
	Drained     bool
}

// Request is one request of the load generator. Version is the topic's
// request_version read back in the request's own transaction (so exactly
// the version this request made, or kept when it changed nothing); Err
// is set when the outcome is unknown (the commit may or may not have
// happened), and such a request is not checked.
type Request struct {
	Topic   int64  `json:"topic"`
	Kind    string `json:"kind"` // "request" (queue.Request) or "update" (the application's plain UPDATE)
	Version uint64 `json:"version"`
	At      string `json:"at"`
	Err     string `json:"err,omitempty"`
}

// Call is one call of the procedure on a replica: its tag, and the claim
// the replica's copy of the topic row held when the call began.
type Call struct {
	Tag            int64
	Replica        string
	Topic          int64
	Token          uint64
	ClaimedVersion uint64
}

// Run is one row of the run history.
type Run struct {
	Topic   int64
	Token   uint64
	Outcome string
	// InSoak: it finished while the load and the faults ran (not in the
	// drain), by the primary's clock.
	InSoak bool
}

// Topic is a topic row on the primary after the drain, with the tags its
// published result tables carry: each table's MIN and MAX of tag (null
// when the table is empty, as before any publish), read in one statement.
type Topic struct {
	ID             int64
	Required       int
	Running        int64
	Token          uint64
	RequestVersion uint64
	ClaimedVersion uint64
	Parked         bool
	Tags           [4]*int64 // Post min, max; Dynamics min, max
}

// Read is a reader's observation of one topic's two result tables in one
// statement.
type Read struct {
	Topic int64     `json:"topic"`
	At    string    `json:"at"`
	Tags  [4]*int64 `json:"tags"`
}

// Seen is a change of the published tag one reader saw for a topic.
type Seen struct {
	Reader int    `json:"reader"`
	Topic  int64  `json:"topic"`
	Tag    int64  `json:"tag"`
	At     string `json:"at"`
}

// Fault is one injected fault.
type Fault struct {
	Kind   string  `json:"kind"`
	Target string  `json:"target"`
	At     float64 `json:"at_s"`  // seconds since the load started
	For    float64 `json:"for_s"` // how long it lasted (0: instantaneous)
	Wall   string  `json:"wall"`  // UTC time of day it started
	Note   string  `json:"note,omitempty"`
	Err    string  `json:"err,omitempty"`
}

// Result is the soak's verdict: the last line printed, as JSON.
type Result struct {
	LostRequests   int      `json:"lost_requests"`
	StalePublishes int      `json:"stale_publishes"`
	TornReads      int      `json:"torn_reads"`
	Leftovers      int      `json:"leftovers"`
	ErrantGTIDs    int      `json:"errant_gtids"`
	ChecksumDiffs  int      `json:"checksum_diffs"`
	TopicsPerS     float64  `json:"topics_per_s"`
	FaultsInjected int      `json:"faults_injected"`
	Details        []string `json:"-"`
	// Parked counts requests not served because their topic was parked
	// by failures of later claims (reported, not a violation).
	Parked int `json:"-"`
}

// ok is true when every count is zero.
func (r *Result) ok() bool {
	return r.LostRequests == 0 && r.StalePublishes == 0 && r.TornReads == 0 && r.Leftovers == 0 &&
		r.ErrantGTIDs == 0 && r.ChecksumDiffs == 0
}

// maxDetails bounds the lines printed per kind of violation.
const maxDetails = 10

// single returns the one tag of a published pair, whether the pair is
// consistent (both tables empty, or every row of both tables carrying one
// tag), and whether it has a tag at all.
func single(t [4]*int64) (tag int64, consistent, has bool) {
	nulls := 0
	for _, v := range t {
		if v == nil {
			nulls++
		}
	}
	if nulls == 4 {
		return 0, true, false
	}
	if nulls > 0 {
		return 0, false, false
	}
	for _, v := range t[1:] {
		if *v != *t[0] {
			return 0, false, false
		}
	}
	return *t[0], true, true
}

// Torn reports whether a read saw two calls (or a table of one call beside
// an empty one).
func Torn(t [4]*int64) bool {
	_, ok, _ := single(t)
	return !ok
}

// Check applies the soak's rules to h:
//
//   - lost_requests: a request with a known outcome and version v is
//     served when the topic's published result comes from a call whose
//     claim had claimed_version ≥ v (the claim read the row after the
//     request committed) and that claim is the topic's last, finished done
//     (stale_publishes checks that). A topic parked after the drain
//     whose last claim was made after the request failed max_attempts
//     times on it: counted apart (parked), not lost; a request after that
//     claim must have unparked it. Anything else is lost: no published
//     call, or one claimed before the request.
//   - stale_publishes: the published pair is one call's (one tag), the
//     tag is a known call, and that call's claim is the newest finished
//     claim: after the drain a topic that is neither required, running nor
//     parked had its last claim finish done, so the call's claim token
//     must be the topic's claim_token; and no done run in the history may
//     have a newer token than the published one.
//   - stale_publishes also counts a reader seeing a topic go back: an older
//     claim's result after a newer one's (a publish is fenced on its claim
//     being the topic's current one, so published claims only move
//     forward).
//   - torn_reads: reads that saw two calls in one statement.
//   - leftovers: topics still running or still required (not parked)
//     after the drain, parked topics whose history shows no failure, and
//     staging left after the sweep.
//   - errant_gtids and checksum_diffs as recorded.
func Check(h *History) *Result {
	r := &Result{}
	add := func(kind string, n *int, format string, a ...any) {
		*n++
		if *n <= maxDetails {
			r.Details = append(r.Details, kind+": "+fmt.Sprintf(format, a...))
		}
	}
	newestDone := map[int64]uint64{}
	failures := map[int64]int{}
	done := 0
	for _, run := range h.Runs {
		switch run.Outcome {
		case "done":
			if run.InSoak {
				done++
			}
			newestDone[run.Topic] = max(newestDone[run.Topic], run.Token)
		case "failed", "reaped", "parked":
			failures[run.Topic]++
		}
	}
	published := map[int64]*Call{} // topic -> the call its published pair comes from
	for i := range h.Topics {
		t := &h.Topics[i]
		tag, consistent, has := single(t.Tags)
		switch {
		case !consistent:
			add("stale_publishes", &r.StalePublishes, "topic %d: the published tables carry different tags %s", t.ID, tagString(t.Tags))
			continue
		case !has:
			if nd := newestDone[t.ID]; nd > 0 {
				add("stale_publishes", &r.StalePublishes, "topic %d: nothing published, but claim %d finished done", t.ID, nd)
			}
			continue
		}
		c, ok := h.Calls[tag]
		if !ok {
			add("stale_publishes", &r.StalePublishes, "topic %d: published tag %d is no recorded call", t.ID, tag)
			continue
		}
		if c.Topic != t.ID {
			add("stale_publishes", &r.StalePublishes, "topic %d: published tag %d is a call for topic %d", t.ID, tag, c.Topic)
			continue
		}
		published[t.ID] = &c
		if nd := newestDone[t.ID]; nd > c.Token {
			add("stale_publishes", &r.StalePublishes, "topic %d: published claim %d (tag %d), but claim %d finished done after it", t.ID, c.Token, tag, nd)
			continue
		}
		if t.Required == 0 && t.Running == 0 && !t.Parked && c.Token != t.Token {
			add("stale_publishes", &r.StalePublishes, "topic %d: published claim %d (tag %d, %s), but its last claim is %d", t.ID, c.Token, tag, c.Replica, t.Token)
		}
	}
	type key struct {
		reader int
		topic  int64
	}
	last := map[key]Seen{}
	for _, sn := range h.Seen {
		k := key{sn.Reader, sn.Topic}
		prev, ok := last[k]
		last[k] = sn
		if !ok {
			continue
		}
		pc, ok1 := h.Calls[prev.Tag]
		cc, ok2 := h.Calls[sn.Tag]
		if ok1 && ok2 && cc.Token < pc.Token {
			add("stale_publishes", &r.StalePublishes, "topic %d: reader %d saw claim %d (tag %d) at %s, then the older claim %d (tag %d) at %s",
				sn.Topic, sn.Reader, pc.Token, prev.Tag, prev.At, cc.Token, sn.Tag, sn.At)
		}
	}
	topics := map[int64]*Topic{}
	for i := range h.Topics {
		topics[h.Topics[i].ID] = &h.Topics[i]
	}
	for _, q := range h.Requests {
		if q.Err != "" {
			continue
		}
		c := published[q.Topic]
		if t := topics[q.Topic]; t != nil && t.Parked && t.ClaimedVersion >= q.Version && (c == nil || c.ClaimedVersion < q.Version) {
			// Parked by the failures of claims made after the request: the
			// documented end of a topic that fails max_attempts times.
			r.Parked++
			continue
		}
		switch {
		case c == nil:
			add("lost_requests", &r.LostRequests, "topic %d: %s at %s (version %d): no run published a result", q.Topic, q.Kind, q.At, q.Version)
		case c.ClaimedVersion < q.Version:
			add("lost_requests", &r.LostRequests, "topic %d: %s at %s (version %d): the published run (claim %d) claimed version %d, before it",
				q.Topic, q.Kind, q.At, q.Version, c.Token, c.ClaimedVersion)
		}
	}
	for _, rd := range h.Torn {
		add("torn_reads", &r.TornReads, "topic %d at %s: tags %s", rd.Topic, rd.At, tagString(rd.Tags))
	}
	for _, t := range h.Topics {
		switch {
		case t.Running != 0:
			add("leftovers", &r.Leftovers, "topic %d still held by instance %d after the drain", t.ID, t.Running)
		case t.Parked && failures[t.ID] == 0:
			add("leftovers", &r.Leftovers, "topic %d parked, but its history shows no failed, reaped or parked run", t.ID)
		case t.Required > 0 && !t.Parked:
			add("leftovers", &r.Leftovers, "topic %d still required after the drain (request version %d, claimed %d)", t.ID, t.RequestVersion, t.ClaimedVersion)
		}
	}
	for _, s := range h.StagingLeft {
		add("leftovers", &r.Leftovers, "%s left after the cleanup sweep", s)
	}
	for _, e := range h.Errant {
		add("errant_gtids", &r.ErrantGTIDs, "%s", e)
	}
	r.ChecksumDiffs = h.ChecksumDiffs
	if h.ChecksumErr != "" {
		add("checksum_diffs", &r.ChecksumDiffs, "pt-table-checksum: %s", h.ChecksumErr)
	} else if h.ChecksumDiffs > 0 {
		r.Details = append(r.Details, fmt.Sprintf("checksum_diffs: %d chunks differ on a replica", h.ChecksumDiffs))
	}
	if h.SoakSeconds > 0 {
		r.TopicsPerS = float64(int(float64(done)/h.SoakSeconds*100+0.5)) / 100
	}
	for _, f := range h.Faults {
		if f.Err == "" {
			r.FaultsInjected++
		}
	}
	return r
}

func tagString(t [4]*int64) string {
	var parts []string
	for _, v := range t {
		if v == nil {
			parts = append(parts, "NULL")
		} else {
			parts = append(parts, fmt.Sprint(*v))
		}
	}
	return "Post " + parts[0] + ".." + parts[1] + ", Dynamics " + parts[2] + ".." + parts[3]
}

// indeterminate counts the requests whose outcome is unknown, and those
// that never reached the primary.
func (h *History) indeterminate() (unknown, unsent int) {
	for _, q := range h.Requests {
		switch {
		case strings.HasPrefix(q.Err, notSent):
			unsent++
		case q.Err != "":
			unknown++
		}
	}
	return unknown, unsent
}

// outcomes counts the run history by outcome, for the report.
func (h *History) outcomes() string {
	by := map[string]int{}
	for _, r := range h.Runs {
		by[r.Outcome]++
	}
	return countString(by)
}

// faultSummary counts the injected faults by kind, for the report.
func faultSummary(fs []Fault) string {
	by := map[string]int{}
	for _, f := range fs {
		if f.Err == "" {
			by[f.Kind]++
		}
	}
	return countString(by)
}

// countString prints counts by key, keys sorted.
func countString(by map[string]int) string {
	var keys []string
	for k := range by {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, by[k]))
	}
	return strings.Join(parts, ", ")
}
