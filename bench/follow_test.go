package main

import (
	"strings"
	"testing"
)

// TestFollowSummary: scenario 10's summary keys are the medians of its runs
// (events/s and CPU of the 1-row runs, delay percentiles of the delay
// runs), its two targets pass or FAIL on their thresholds, and a part that
// did not run leaves its keys null and its target failed.
func TestFollowSummary(t *testing.T) {
	s := defaultSettings(false)
	tput := func(eps ...float64) *scenario {
		sc := &scenario{Key: "follow_tput_1", Kind: "follow", Topics: 100_000}
		for i, v := range eps {
			sc.Runs = append(sc.Runs, &runResult{Seconds: 100_000 / v, Follow: &followRun{EventsPerS: v, CPUMSPer1000: float64(10 + i)}})
		}
		sc.finish()
		return sc
	}
	delay := func(p99 ...float64) *scenario {
		sc := &scenario{Key: "follow_delay_2000", Kind: "follow", Topics: 40_000}
		for _, v := range p99 {
			sc.Runs = append(sc.Runs, &runResult{Seconds: 20, Follow: &followRun{ChangesPerS: 2000,
				DelayMS: map[string]float64{"p50": v / 4, "p99": v}, ReplicationMS: map[string]float64{"p99": v / 2}}})
		}
		sc.finish()
		return sc
	}
	for _, c := range []struct {
		name      string
		scenarios []*scenario
		eps, p99  any // *float64 values or nil
		pass      [2]bool
	}{
		{"both met", []*scenario{tput(25_000, 21_000, 30_000), delay(400, 900, 300)}, 25_000.0, 400.0, [2]bool{true, true}},
		{"both missed", []*scenario{tput(19_000, 15_000, 21_000), delay(1200, 800, 1500)}, 19_000.0, 1200.0, [2]bool{false, false}},
		{"not run", nil, nil, nil, [2]bool{false, false}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := &bench{s: s, scenarios: c.scenarios}
			sum := map[string]any{}
			targets := b.followSummary(sum)
			for key, want := range map[string]any{"follow_events_per_s": c.eps, "follow_delay_p99_ms": c.p99} {
				got, ok := sum[key]
				if !ok {
					t.Fatalf("summary lacks %s", key)
				}
				g, _ := got.(*float64)
				switch {
				case want == nil && g != nil:
					t.Errorf("%s = %v, want null", key, *g)
				case want != nil && (g == nil || *g != want.(float64)):
					t.Errorf("%s = %v, want %v", key, got, want)
				}
			}
			if len(targets) != 2 || !strings.Contains(targets[0].Name, "follow_events_per_s") || !strings.Contains(targets[1].Name, "follow_delay_p99_ms") {
				t.Fatalf("targets %+v", targets)
			}
			for i, tg := range targets {
				if tg.Pass != c.pass[i] {
					t.Errorf("target %q: pass %v, want %v", tg.Name, tg.Pass, c.pass[i])
				}
			}
		})
	}
}

func TestGTIDReached(t *testing.T) {
	for _, c := range []struct {
		got, want string
		ok        bool
	}{
		{"0-1-10", "0-1-10", true},
		{"0-1-11", "0-1-10", true},
		{"0-1-9", "0-1-10", false},
		{"0-1-10,1-2-5", "0-1-10", true},
		{"1-2-5", "0-1-10", false},
		{"", "0-1-1", false},
	} {
		if got := gtidReached(c.got, c.want); got != c.ok {
			t.Errorf("gtidReached(%q, %q) = %v, want %v", c.got, c.want, got, c.ok)
		}
	}
}

func TestPercentilesMS(t *testing.T) {
	us := make([]int64, 0, 1000)
	for i := 1000; i >= 1; i-- {
		us = append(us, int64(i)*1000) // 1..1000 ms, unsorted
	}
	p := percentilesMS(us)
	if p["p50"] != 501 || p["p99"] != 991 || p["max"] != 1000 {
		t.Errorf("percentiles %v: want p50 501, p99 991, max 1000", p)
	}
	if us[0] != 1_000_000 {
		t.Error("percentilesMS sorted its argument in place")
	}
	if commas(2000) != "2,000" || commas(1234567) != "1,234,567" || commas(12) != "12" {
		t.Errorf("commas: %s %s %s", commas(2000), commas(1234567), commas(12))
	}
}
