package monitor

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestDecidePause pins the pause watch's rule on stored reads; each case
// says what it proves.
func TestDecidePause(t *testing.T) {
	t.Parallel()
	cfg := GateConfig{MaxLag: time.Second, SampleInterval: 100 * time.Millisecond}.WithDefaults()
	now := time.Unix(1_700_000_000, 0)
	p5 := int64(5)
	p9 := int64(9)
	all := heldPause{Pause: Pause{ID: 1, By: "ops@host", Reason: "incident 42"}}
	below5 := heldPause{Pause: Pause{ID: 2, Scope: PauseScope{BelowPriority: &p5}}}
	below9 := heldPause{Pause: Pause{ID: 3, Scope: PauseScope{BelowPriority: &p9, ReplicaServerID: 7}}}
	expired := all
	expired.until = now.Add(-time.Millisecond)
	later := all
	later.until = now.Add(time.Minute)
	read := func(ps ...heldPause) *pauseSample { return &pauseSample{pauses: ps, at: now} }
	cases := []struct {
		name    string
		s       *pauseSample
		now     time.Time
		minIn   int64
		wantMin int64
		want    error
		backoff time.Duration
	}{
		{"no read yet: closed (fail closed), look again after one interval", nil, now, 0, 0, ErrPauseUnknown, cfg.SampleInterval},
		{"no pause: open, minimum unchanged", read(), now, 3, 3, nil, 0},
		{"a pause of everything closes", read(all), now, 0, 0, ErrPaused, cfg.SampleInterval},
		{"a timed pause before its end closes", read(later), now, 0, 0, ErrPaused, cfg.SampleInterval},
		{"a timed pause past its end (local clock) is ignored between reads", read(expired), now, 0, 0, nil, 0},
		{"below priority raises the claim's minimum", read(below5), now, 0, 5, nil, 0},
		{"below priority never lowers a higher configured minimum", read(below5), now, 8, 8, nil, 0},
		{"the highest bound of several wins", read(below5, below9), now, 0, 9, nil, 0},
		{"a pause of everything wins over a bound", read(below5, all), now, 0, 0, ErrPaused, cfg.SampleInterval},
		{"a read just inside the stale bound is trusted", read(), now.Add(cfg.staleAfter()), 0, 0, nil, 0},
		{"a stale read (primary unreadable) closes", read(), now.Add(cfg.staleAfter() + time.Millisecond), 0, 0, ErrPauseUnknown, cfg.SampleInterval},
	}
	for _, c := range cases {
		gotMin, backoff, err := decidePause(c.s, cfg, c.now, c.minIn)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) || backoff != c.backoff || gotMin != c.wantMin {
			t.Errorf("%s: min %d, %v, %v; want %d, %v, %v", c.name, gotMin, backoff, err, c.wantMin, c.backoff, c.want)
		}
	}
	// The verdict names who paused and why.
	if _, _, err := decidePause(read(all), cfg, now, 0); !strings.Contains(err.Error(), "ops@host") || !strings.Contains(err.Error(), "incident 42") {
		t.Errorf("verdict %q does not say who paused and why", err)
	}
}

// TestPauseParamsValidate: the bounds of a pause's inputs, each with the
// sentinel the CLI and the dashboard map to a usage error.
func TestPauseParamsValidate(t *testing.T) {
	t.Parallel()
	big := int64(1) << 40
	cases := []struct {
		name string
		p    PauseParams
		ok   bool
	}{
		{"a plain pause of everything", PauseParams{By: "a@b"}, true},
		{"a timed pause with a reason", PauseParams{By: "a@b", Reason: "incident", For: 30 * time.Minute}, true},
		{"who paused is required", PauseParams{}, false},
		{"a negative duration is refused", PauseParams{By: "a@b", For: -time.Second}, false},
		{"a duration over a year is refused", PauseParams{By: "a@b", For: MaxPauseFor + time.Hour}, false},
		{"a reason over the limit is refused", PauseParams{By: "a@b", Reason: strings.Repeat("x", MaxPauseReason+1)}, false},
		{"a reason at the limit, in characters not bytes, passes", PauseParams{By: "a@b", Reason: strings.Repeat("é", MaxPauseReason)}, true},
		{"control characters in a reason are refused", PauseParams{By: "a@b", Reason: "a\nb"}, false},
		{"a priority bound outside INT is refused", PauseParams{By: "a@b", Scope: PauseScope{BelowPriority: &big}}, false},
	}
	for _, c := range cases {
		err := c.p.Validate()
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrBadPause)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
