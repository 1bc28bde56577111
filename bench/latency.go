package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/transfer"
)

// ---- 8. a network between the workers and the primary ----

// latencyRun is what one round of scenario 8 adds to a runResult.
type latencyRun struct {
	// Binary is the nonqueue binary measured (A/B runs with -compare).
	Binary string `json:"binary"`
	// CeilingSeconds: the procedure alone on the same topics, just before.
	CeilingSeconds float64 `json:"ceiling_seconds"`
	// OverheadMSPerTopic: (T_nonqueue - T_ceiling) / topics, the
	// definition of overhead_ms_per_topic (scenario 2 against 3) at a
	// network; PerInstance is the same x instances, the extra wall time
	// each topic costs its own instance.
	OverheadMSPerTopic     float64 `json:"overhead_ms_per_topic"`
	OverheadMSPerTopicInst float64 `json:"overhead_ms_per_topic_per_instance"`
	// Net: what the links counted over the round; PerTopic the same
	// divided by the topics.
	Net      netsim.RouteStats  `json:"net"`
	PerTopic map[string]float64 `json:"per_topic"`
}

// perTopic divides a round's link counts by its topics.
func perTopic(s netsim.RouteStats, n int) map[string]float64 {
	d := float64(n)
	return map[string]float64{
		"sql_commands":    float64(s.MySQL.Commands) / d,
		"sql_round_trips": float64(s.MySQL.Turns) / d,
		"ssh_round_trips": float64(s.SSH.Turns) / d,
		"round_trips":     float64(s.MySQL.Turns+s.SSH.Turns) / d,
	}
}

// scenarioLatency is 1 replica x 4 instances whose every connection to the
// primary (MySQL and SSH) goes through toxiproxy with a 1 ms round trip
// (internal/netsim). Each run measures the procedure alone first (the
// ceiling, on the replica, which the network does not touch), then the
// same topics with nonqueue, counting the round trips on the links. With
// -compare, a second binary's round follows each run's, on the same
// sandbox, so a change is measured A/B alternately.
func (b *bench) scenarioLatency(ctx context.Context) (*scenario, error) {
	n, topo, rtt := b.s.LatencyTopics, headToHead, b.s.LatencyRTT
	sc := &scenario{Key: fmt.Sprintf("nonqueue_%s_rtt%dms", topo, rtt.Milliseconds()),
		Title: fmt.Sprintf("nonqueue, %d replica x %d, %v round trip", topo.Replicas, topo.Instances, rtt),
		Kind:  "latency", Procedure: procSmall, Replicas: topo.Replicas, Instances: topo.Instances,
		Concurrency: topo.total(), Topics: n, want: b.s.Runs, budget: 500 * time.Millisecond}
	defer sc.finish()
	if err := b.checkClean(ctx); err != nil {
		return sc, err
	}
	nw, err := netsim.New(rtt)
	if err != nil {
		return sc, err
	}
	defer nw.Close()
	route, err := nw.RouteSandbox(b.sb)
	if err != nil {
		return sc, err
	}
	b.info("primary through toxiproxy: mysql 127.0.0.1:%d -> %s, ssh 127.0.0.1:%d -> %s, %v added to every reply",
		route.MySQL.Port(), route.MySQL.Upstream, route.SSH.Port(), route.SSH.Upstream, rtt)
	configs := make([]string, topo.Replicas)
	for k := range configs {
		configs[k] = filepath.Join(b.dir, "bench", fmt.Sprintf("replica%d-proc-rtt%dms.toml", k+1, rtt.Milliseconds()))
		if err := b.writeConfig(configs[k], route.Sandbox, k, procSmall, false); err != nil {
			return sc, err
		}
	}
	bins := []string{b.nonqueue}
	if b.compare != "" {
		bins = append(bins, b.compare)
	}
	for i := 1; i <= sc.want; i++ {
		secs, err := b.ceilingRound(ctx, n, topo.Instances)
		if err != nil {
			return sc, fmt.Errorf("run %d: ceiling: %w", i, err)
		}
		if err := b.clearCalls(ctx); err != nil {
			return sc, err
		}
		for j, bin := range bins {
			key := fmt.Sprintf("%s-%c", sc.Key, 'a'+j)
			r, err := b.latencyRound(ctx, sc, key, bin, configs, route, topo, n)
			if r != nil {
				r.Latency.CeilingSeconds = secs
				r.Latency.OverheadMSPerTopic = (r.Seconds - secs) * 1000 / float64(n)
				r.Latency.OverheadMSPerTopicInst = r.Latency.OverheadMSPerTopic * float64(topo.Instances)
				if j == 0 {
					sc.Runs = append(sc.Runs, r)
				} else {
					sc.Compare = append(sc.Compare, r)
				}
				pt := r.Latency.PerTopic
				b.info("run %d/%d %s: %6.2f s  %6.1f topics/s  ceiling %.2f s  overhead %.2f ms/topic (x %d instances: %.1f)  per topic: sql %.1f commands, %.1f round trips; ssh %.1f round trips  computed twice %d  outcomes %v",
					i, sc.want, filepath.Base(bin), r.Seconds, float64(n)/r.Seconds, secs, r.Latency.OverheadMSPerTopic, topo.Instances, r.Latency.OverheadMSPerTopicInst,
					pt["sql_commands"], pt["sql_round_trips"], pt["ssh_round_trips"], r.Duplicates, r.Outcomes)
				b.info("        avg ms: claim %.2f gtid %.2f proc %.2f transfer %.2f publish %.2f run %.2f; sql commands %v",
					r.AvgMS["claim"], r.AvgMS["lag_wait"], r.AvgMS["proc"], r.AvgMS["transfer"], r.AvgMS["publish"], r.AvgMS["run_total"],
					r.Latency.Net.MySQL.ByCommand)
			}
			if err != nil {
				return sc, fmt.Errorf("run %d (%s): %w", i, bin, err)
			}
		}
	}
	sc.finish()
	sc.finishLatency()
	b.noteOutcomes(sc)
	return sc, nil
}

// latencyRound starts the workers of one binary, runs one round and stops
// them (so A and B never run together).
func (b *bench) latencyRound(ctx context.Context, sc *scenario, key, bin string, configs []string, route *netsim.Route,
	topo topology, n int) (r *runResult, err error) {
	ws, err := b.startWorkersOf(ctx, key, topo, bin, func(k int) string { return configs[k] })
	defer func() {
		if serr := b.stopWorkers(ws, sc); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	if err != nil {
		return nil, err
	}
	before := route.Stats()
	r, err = b.nqRound(ctx, ws, 1, n, topo, sc.budget)
	if r != nil {
		net := route.Stats().Sub(before)
		r.Latency = &latencyRun{Binary: bin, Net: net, PerTopic: perTopic(net, n)}
	}
	return r, err
}

// finishLatency sets the scenario's medians of overhead and round trips.
func (sc *scenario) finishLatency() {
	var over []float64
	per := map[string][]float64{}
	for _, r := range sc.Runs {
		if r.Latency == nil {
			continue
		}
		over = append(over, r.Latency.OverheadMSPerTopic)
		for k, v := range r.Latency.PerTopic {
			per[k] = append(per[k], v)
		}
	}
	if len(over) == 0 {
		return
	}
	sc.OverheadMSPerTopic = median(over)
	sc.RoundTripsPerTopic = map[string]float64{}
	for k, v := range per {
		sc.RoundTripsPerTopic[k] = median(v)
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("overhead %.2f ms/topic (min %.2f, max %.2f); per topic: sql %.1f commands, %.1f round trips; ssh %.1f round trips",
		sc.OverheadMSPerTopic, minOf(over), maxOf(over), sc.RoundTripsPerTopic["sql_commands"],
		sc.RoundTripsPerTopic["sql_round_trips"], sc.RoundTripsPerTopic["ssh_round_trips"]))
	if len(sc.Compare) > 0 {
		var o, t []float64
		for _, r := range sc.Compare {
			o = append(o, r.Latency.OverheadMSPerTopic)
			t = append(t, r.Seconds)
		}
		sc.Notes = append(sc.Notes, fmt.Sprintf("-compare %s: median %.2f s, overhead %.2f ms/topic (min %.2f, max %.2f)",
			filepath.Base(sc.Compare[0].Latency.Binary), median(t), median(o), minOf(o), maxOf(o)))
	}
}

// writeConfig writes one worker configuration for replica k of sb (the
// sandbox, or its view through a network).
func (b *bench) writeConfig(path string, sb any, k int, proc string, noSync bool) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	// A big result is verified by its bytes (no second read of it
	// through the primary); the others by -verify (default bytes, the
	// workers' default too).
	verify := b.s.Verify
	if proc == procBig {
		verify = transfer.VerifyBytes
	}
	err = workerConfig.Execute(f, map[string]any{"SB": sb, "Replica": b.sb.Replicas[k], "Proc": proc,
		"LogDir": filepath.Join(b.dir, "runs"), "IdleWait": b.s.IdleWait.String(), "Verify": verify, "Sync": !noSync,
		"Pipeline": b.s.Pipeline})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
