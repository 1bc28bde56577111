package main

import (
	"testing"
)

// TestScale1000Summary: the JSON summary always has scenario 9's keys
// (null when it did not run), and its figures once it did.
func TestScale1000Summary(t *testing.T) {
	check := func(name string, v *float64, goal string, ok func(float64) bool) target {
		return target{Name: name, Value: v, Goal: goal, Pass: v != nil && ok(*v)}
	}
	keys := []string{"scale_efficiency_1000", "scale_claim_p99_ms", "primary_cpu_ms_per_topic_1000", "idle_queries_per_s_per_process",
		"primary_swap_floor_ms_per_topic", "primary_select1_ms"}
	b := &bench{}
	sum := map[string]any{}
	if ts := b.scale1000Summary(sum, check); len(ts) != 3 || ts[0].Pass {
		t.Fatalf("targets without the scenario: %+v", ts)
	}
	for _, k := range keys {
		if v, ok := sum[k]; !ok || v.(*float64) != nil {
			t.Errorf("%s = %v, %v; want present and null", k, v, ok)
		}
	}
	sc := &scenario{Kind: "scale1000", Topics: 3000, MedianS: 3.2, TopicsPerS: 3000 / 3.2,
		Scale: &scaleSummary{Instances: 1000, Processes: 8, IdleQueriesPerSPerProc: 1.5, SwapFloor: &swapFloor{TotalMS: 1.25, Select1MS: 0.05}},
		Runs:  []*runResult{{Seconds: 3.2, CPUMSPerTopic: map[string]float64{"primary": 0.8}, Scale: &scaleRun{ClaimP50MS: 2, ClaimP99MS: 40, PrimaryConns: 300, PrimaryConnsPerProcs: 38}}}}
	sc.finishScale(sc.Scale)
	b.scenarios = []*scenario{sc}
	sum = map[string]any{}
	ts := b.scale1000Summary(sum, check)
	if e := *sum["scale_efficiency_1000"].(*float64); e < 0.93 || e > 0.94 {
		t.Errorf("efficiency %v, want 3000/3.2/1000", e)
	}
	if *sum["scale_claim_p99_ms"].(*float64) != 40 || *sum["primary_cpu_ms_per_topic_1000"].(*float64) != 0.8 ||
		*sum["idle_queries_per_s_per_process"].(*float64) != 1.5 || *sum["primary_swap_floor_ms_per_topic"].(*float64) != 1.25 || sum["scale_primary_connections_per_process"] != 38 {
		t.Errorf("summary %v", sum)
	}
	for _, tg := range ts {
		if !tg.Pass {
			t.Errorf("target %s failed with %v", tg.Name, *tg.Value)
		}
	}
}

// TestPercentile: nearest rank on sorted values.
func TestPercentile(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{0.5, 50}, {0.99, 99}, {1, 100}, {0, 1}} {
		if got := percentile(v, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p*100, got, c.want)
		}
	}
	if got := percentile([]float64{7}, 0.99); got != 7 {
		t.Errorf("one value: %v", got)
	}
}
