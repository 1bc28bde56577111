package main

import (
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
)

// TestLatencySummary: scenario 8's rounds give the JSON summary its
// overhead_ms_per_topic_rtt1ms (the median of (T_nonqueue - T_ceiling) /
// topics) and round_trips_per_topic (SQL and SSH turns per topic, median),
// and a missed goal is a failed target.
func TestLatencySummary(t *testing.T) {
	b := &bench{s: defaultSettings(true)}
	sc := &scenario{Key: "nonqueue_1x4_rtt1ms", Kind: "latency", Instances: 4, Topics: 100}
	for _, x := range []struct {
		secs, ceil    float64
		sqlT, sshT, n int64
	}{{3, 1, 700, 300, 800}, {2.5, 1, 800, 400, 900}, {4, 1, 750, 350, 850}} {
		net := netsim.RouteStats{MySQL: netsim.Stats{Turns: x.sqlT, Commands: x.n}, SSH: netsim.Stats{Turns: x.sshT}}
		r := &runResult{Seconds: x.secs, Latency: &latencyRun{CeilingSeconds: x.ceil, Net: net, PerTopic: perTopic(net, 100),
			OverheadMSPerTopic: (x.secs - x.ceil) * 1000 / 100}}
		sc.Runs = append(sc.Runs, r)
	}
	sc.finish()
	sc.finishLatency()
	b.scenarios = []*scenario{sc}
	sum, targets, _ := b.summary()
	if v := sum["overhead_ms_per_topic_rtt1ms"].(*float64); v == nil || *v != 20 {
		t.Errorf("overhead_ms_per_topic_rtt1ms = %v, want the median 20", v)
	}
	if v := sum["overhead_ms_per_topic_per_instance_rtt1ms"].(*float64); v == nil || *v != 80 {
		t.Errorf("per instance = %v, want 80", v)
	}
	if v := sum["round_trips_per_topic"].(*float64); v == nil || *v != 11 {
		t.Errorf("round_trips_per_topic = %v, want the median 11 (7.5 SQL + 3.5 SSH)", v)
	}
	found := false
	for _, tg := range targets {
		if tg.Goal == "<= 15" {
			found = true
			if tg.Pass {
				t.Errorf("20 ms passed the <= 15 ms goal")
			}
		}
	}
	if !found {
		t.Error("no target for overhead_ms_per_topic_rtt1ms")
	}
	b.s.LatencyRTT = 2 * time.Millisecond
	sum, _, _ = b.summary()
	if v := sum["overhead_ms_per_topic_rtt1ms"].(*float64); v != nil {
		t.Errorf("a 2 ms run reported overhead_ms_per_topic_rtt1ms = %v", *v)
	}
}
