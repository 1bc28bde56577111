package queue

import (
	"math"
	"testing"
)

// TestSplitRange: the id ranges of Overview cover [lo, hi] exactly once,
// in order, without gaps or overlaps, even at the ends of int64.
func TestSplitRange(t *testing.T) {
	for _, c := range []struct {
		name   string
		lo, hi int64
		n      int
		want   int // number of ranges
	}{
		{"one id", 5, 5, 4, 1},                                        // nothing to split
		{"span under the minimum", 1, 49_999, 4, 1},                   // small tables: one statement
		{"a million ids", 1, 1_000_000, 4, 4},                         // the usual case
		{"negative to positive", -500_000, 500_000, 4, 4},             // ids may be negative
		{"the whole int64 range", math.MinInt64, math.MaxInt64, 4, 4}, // the span overflows int64
		{"no split asked", 1, 1_000_000, 1, 1},                        // n < 2
	} {
		rs := splitRange(c.lo, c.hi, c.n, 50_000)
		if len(rs) != c.want {
			t.Errorf("%s: %d ranges %v, want %d", c.name, len(rs), rs, c.want)
			continue
		}
		if rs[0][0] != c.lo || rs[len(rs)-1][1] != c.hi {
			t.Errorf("%s: ranges %v do not span [%d, %d]", c.name, rs, c.lo, c.hi)
		}
		for i, r := range rs {
			if r[0] > r[1] {
				t.Errorf("%s: empty range %v", c.name, r)
			}
			if i > 0 && r[0] != rs[i-1][1]+1 {
				t.Errorf("%s: gap or overlap between %v and %v", c.name, rs[i-1], r)
			}
		}
	}
}

// TestClassifyMatchesStateConditions: the Go rule and its SQL form name
// the same inputs; every combination lands in exactly one state.
func TestClassifyMatchesStateConditions(t *testing.T) {
	seen := map[TopicState]bool{}
	for flags := range 32 {
		for _, req := range []int{0, 1, 2} {
			st := classify(flags&1 != 0, flags&2 != 0, flags&4 != 0, req, flags&16 != 0, flags&8 != 0)
			if stateCondition(st) == "FALSE" {
				t.Errorf("flags %05b required %d: state %q has no SQL condition", flags, req, st)
			}
			seen[st] = true
		}
	}
	if len(seen) != len(TopicStates()) {
		t.Errorf("classify reaches %d states, TopicStates lists %d", len(seen), len(TopicStates()))
	}
}
