package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// machineInfo says where the figures were measured.
type machineInfo struct {
	NProc    int    `json:"nproc"`
	CPU      string `json:"cpu"`
	MemMB    int    `json:"mem_mb"`
	Kernel   string `json:"kernel"`
	MariaDB  string `json:"mariadb"`
	Go       string `json:"go"`
	OpenSSH  string `json:"openssh"`
	Nonqueue string `json:"nonqueue"`
	Commit   string `json:"commit"`
	// LoadAvg at the start and the end of the run: other work on a
	// shared machine shows here and in the min/max spread.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func (m *machineInfo) collect(ctx context.Context, b *bench) error {
	m.NProc = runtime.NumCPU()
	m.LoadAvgStart = loadAvg()
	m.Go = runtime.Version()
	if out, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		if _, err := fmt.Sscanf(string(out), "MemTotal: %d kB", &kb); err == nil {
			m.MemMB = kb / 1024
		}
	}
	if out, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("ssh", "-V").CombinedOutput(); err == nil {
		m.OpenSSH = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(b.nonqueue, "version").Output(); err == nil {
		m.Nonqueue = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "-C", b.root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return b.primary.QueryRowContext(ctx, "SELECT VERSION()").Scan(&m.MariaDB)
}

// target is one goal the issue sets; only duplicates fail the run.
type target struct {
	Name  string   `json:"name"`
	Value *float64 `json:"value"`
	Goal  string   `json:"goal"`
	Pass  bool     `json:"pass"`
}

func (b *bench) find(key string) *scenario {
	for _, sc := range b.scenarios {
		if sc.Key == key && sc.Error == "" && sc.MedianS > 0 {
			return sc
		}
	}
	return nil
}

// findKind is the first completed scenario of a kind.
func (b *bench) findKind(kind string) *scenario {
	for _, sc := range b.scenarios {
		if sc.Kind == kind && sc.Error == "" && sc.MedianS > 0 {
			return sc
		}
	}
	return nil
}

func num(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	v = math.Round(v*1000) / 1000
	return &v
}

// summary computes the headline figures; a figure whose scenarios did not
// complete is null.
func (b *bench) summary() (map[string]any, []target, int) {
	sum := map[string]any{}
	var seedTPS, nqTPS, ratio, overhead, eff, pubVsScp, bigRSS *float64
	seed, nq, ceil := b.find("seed_1x4"), b.find("nonqueue_"+headToHead.String()), b.find("ceiling_1x4")
	if seed != nil {
		seedTPS = num(seed.TopicsPerS)
		dups := 0
		for _, r := range seed.Runs {
			dups += r.Duplicates
		}
		sum["seed_duplicates"] = dups
	}
	if nq != nil {
		nqTPS = num(nq.TopicsPerS)
	}
	if seed != nil && nq != nil {
		ratio = num(nq.TopicsPerS / seed.TopicsPerS)
	}
	if ceil != nil {
		sum["ceiling_topics_per_s"] = num(ceil.TopicsPerS)
	}
	if nq != nil && ceil != nil {
		// The definition: (nonqueue time - procedure time) per
		// topic, both at 1 x 4 on the same topics. Also reported: the same
		// per instance (x 4), the extra latency each instance sees.
		overhead = num((nq.MedianS - ceil.MedianS) * 1000 / float64(nq.Topics))
		sum["overhead_ms_per_topic_per_instance"] = num(*overhead * float64(headToHead.Instances))
	}
	if sc := b.find("scale_" + b.s.ScaleTopo.String()); sc != nil {
		eff = num(sc.TopicsPerS / float64(b.s.ScaleTopo.total()))
	}
	if big := b.find("big_result"); big != nil {
		if big.TransferPublishS > 0 {
			pubVsScp = num(big.ScpS / big.TransferPublishS)
		}
		if big.MaxRSSMB > 0 {
			bigRSS = num(big.MaxRSSMB)
		}
		sum["big_result_mb"] = num(float64(big.Runs[0].Bytes) / (1 << 20))
	}
	// Scenario 7 against 2 and 5: what syncing the shipped files costs.
	if on, off := b.find("nonqueue_"+headToHead.String()), b.find("nonqueue_"+headToHead.String()+"_nosync"); on != nil && off != nil {
		sum["fsync_transfer_ms_per_topic"] = map[string]*float64{"on": num(medianAvg(on, "transfer")), "off": num(medianAvg(off, "transfer"))}
		sum["fsync_topics_per_s"] = map[string]*float64{"on": num(on.TopicsPerS), "off": num(off.TopicsPerS)}
	}
	if on, off := b.find("big_result"), b.find("big_result_nosync"); on != nil && off != nil {
		sum["fsync_big_transfer_publish_s"] = map[string]*float64{"on": num(on.TransferPublishS), "off": num(off.TransferPublishS)}
	}
	// Scenario 8: a 1 ms round trip to the primary.
	var overRTT *float64
	if lat := b.findKind("latency"); lat != nil && lat.RoundTripsPerTopic != nil {
		if b.s.LatencyRTT == time.Millisecond {
			overRTT = num(lat.OverheadMSPerTopic)
			sum["overhead_ms_per_topic_per_instance_rtt1ms"] = num(lat.OverheadMSPerTopic * float64(lat.Instances))
		} else {
			sum["overhead_ms_per_topic_rtt"] = map[string]any{"rtt_ms": b.s.LatencyRTT.Milliseconds(), "ms": num(lat.OverheadMSPerTopic)}
		}
		sum["round_trips_per_topic"] = num(lat.RoundTripsPerTopic["round_trips"])
		sum["round_trips_per_topic_detail"] = map[string]*float64{
			"sql_commands": num(lat.RoundTripsPerTopic["sql_commands"]), "sql": num(lat.RoundTripsPerTopic["sql_round_trips"]),
			"ssh": num(lat.RoundTripsPerTopic["ssh_round_trips"])}
		sum["latency_topics_per_s"] = num(lat.TopicsPerS)
	} else {
		sum["round_trips_per_topic"] = nil
	}
	sum["overhead_ms_per_topic_rtt1ms"] = overRTT
	dups := 0
	var rssAll float64
	for _, sc := range b.scenarios {
		if sc.Kind == "nonqueue" || sc.Kind == "scale" || sc.Kind == "big" || sc.Kind == "latency" || sc.Kind == "scale1000" {
			for _, r := range append(slices.Clone(sc.Runs), sc.Compare...) {
				dups += r.Duplicates + r.Unexpected
			}
			rssAll = max(rssAll, sc.MaxRSSMB)
		}
	}
	sum["seed_topics_per_s"] = seedTPS
	sum["nonqueue_topics_per_s"] = nqTPS
	sum["ratio_vs_seed"] = ratio
	sum["overhead_ms_per_topic"] = overhead
	sum["efficiency_1s_proc"] = eff
	sum["duplicates"] = dups
	sum["publish_vs_scp"] = pubVsScp
	sum["worker_max_rss_mb"] = bigRSS
	sum["worker_max_rss_mb_all"] = num(rssAll)
	sum["quick"] = b.s.Quick

	check := func(name string, v *float64, goal string, ok func(float64) bool) target {
		return target{Name: name, Value: v, Goal: goal, Pass: v != nil && ok(*v)}
	}
	d := float64(dups)
	targets := []target{
		check("nonqueue vs the original loop, 1 replica x 4 (ratio_vs_seed)", ratio, ">= 20", func(v float64) bool { return v >= 20 }),
		check("overhead per topic, ms (overhead_ms_per_topic)", overhead, "<= 10", func(v float64) bool { return v <= 10 }),
		check("efficiency with a 1 s procedure, 2 x 16 (efficiency_1s_proc)", eff, ">= 0.90", func(v float64) bool { return v >= 0.9 }),
		check("topics computed twice by nonqueue (duplicates)", &d, "0", func(v float64) bool { return v == 0 }),
		check("publish vs plain scp (publish_vs_scp)", pubVsScp, ">= 0.8", func(v float64) bool { return v >= 0.8 }),
		check(fmt.Sprintf("worker peak RSS shipping %d MB, MB (worker_max_rss_mb)", b.s.BigMB), bigRSS, "<= 64", func(v float64) bool { return v <= 64 }),
		check("overhead per topic at a 1 ms round trip, ms (overhead_ms_per_topic_rtt1ms)", overRTT, "<= 15", func(v float64) bool { return v <= 15 }),
	}
	targets = append(targets, b.scale1000Summary(sum, check)...)
	targets = append(targets, b.followSummary(sum)...)
	met := 0
	for _, t := range targets {
		if t.Pass {
			met++
		}
	}
	sum["targets_met"] = fmt.Sprintf("%d/%d", met, len(targets))
	return sum, targets, dups
}

// finish prints the table and the targets, writes results.json and prints
// the one-line JSON summary last. It returns the exit status.
func (b *bench) finish(runErr error) int {
	w := b.stdout
	b.machine.LoadAvgEnd = loadAvg()
	sum, targets, dups := b.summary()
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-44s %6s %9s %8s %8s %9s  %s\n", "scenario", "topics", "median s", "min s", "max s", "topics/s", "notes")
	fmt.Fprintln(w, strings.Repeat("-", 120))
	for _, sc := range b.scenarios {
		notes := slices.Clone(sc.Notes)
		if sc.Kind != "seed" && sc.Kind != "ceiling" && sc.Kind != "follow" && len(sc.Runs) > 0 {
			notes = append([]string{fmt.Sprintf("computed twice %d", sc.Duplicates)}, notes...)
		}
		if sc.MaxRSSMB > 0 && sc.Kind != "big" {
			notes = append(notes, fmt.Sprintf("RSS %.0f MB", sc.MaxRSSMB))
		}
		if sc.Error != "" {
			notes = append(notes, "ERROR: "+firstLine(sc.Error))
		}
		if len(sc.Runs) < sc.want {
			notes = append(notes, fmt.Sprintf("only %d of %d runs", len(sc.Runs), sc.want))
		} else if sc.want == 1 {
			notes = append(notes, "1 run")
		}
		if len(sc.Runs) == 0 {
			fmt.Fprintf(w, "%-44s %6d %9s %8s %8s %9s  %s\n", sc.Title, sc.Topics, "-", "-", "-", "-", strings.Join(notes, "; "))
			continue
		}
		fmt.Fprintf(w, "%-44s %6d %9.2f %8.2f %8.2f %9.1f  %s\n", sc.Title, sc.Topics, sc.MedianS, sc.MinS, sc.MaxS, sc.TopicsPerS, strings.Join(notes, "; "))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-66s %10s %8s  %s\n", "target", "measured", "goal", "")
	for _, t := range targets {
		v, mark := "n/a", "FAIL"
		if t.Value != nil {
			v = fmt.Sprintf("%.3g", *t.Value)
		}
		if t.Pass {
			mark = "pass"
		}
		fmt.Fprintf(w, "%-66s %10s %8s  %s\n", t.Name, v, t.Goal, mark)
	}
	fmt.Fprintln(w, "overhead_ms_per_topic = (T_nonqueue - T_procedure_alone) / topics, at 1 replica x 4 (x 4 instances: overhead_ms_per_topic_per_instance); see bench/README.md")
	if busy(b.machine.LoadAvgStart, b.machine.NProc) || busy(b.machine.LoadAvgEnd, b.machine.NProc) {
		fmt.Fprintf(w, "note: load average %s at the start, %s at the end, on %d CPUs: other work on this machine shows in the figures\n",
			b.machine.LoadAvgStart, b.machine.LoadAvgEnd, b.machine.NProc)
	}

	status := 0
	switch {
	case b.interrupted:
		status = 130
	case runErr != nil || len(b.errs) > 0:
		status = 1
	case dups > 0:
		status = 1
	}
	if runErr != nil {
		fmt.Fprintln(w, "ERROR:", runErr)
	}
	for _, e := range b.errs {
		fmt.Fprintln(w, "ERROR:", e)
	}
	if dups > 0 {
		fmt.Fprintf(w, "FAIL: nonqueue computed %d topics more than once\n", dups)
	}

	sum["ok"] = status == 0
	errs := append([]string{}, b.errs...)
	if runErr != nil {
		errs = append(errs, runErr.Error())
	}
	res := map[string]any{
		"date":            b.started.UTC().Format(time.RFC3339),
		"command":         b.command,
		"machine":         b.machine,
		"settings":        b.s,
		"setup_s":         b.setupS,
		"scenarios":       b.scenarios,
		"summary":         sum,
		"targets":         targets,
		"errors":          errs,
		"harness_s":       math.Round(b.elapsed.Seconds()*10) / 10,
		"seed_script":     b.seed,
		"latency_method":  "scenario 8: every worker connection to the primary (MySQL, SSH) through toxiproxy with the round trip added to replies; overhead as overhead_method against the procedure alone measured in the same run; round trips counted on the links (internal/netsim): SQL commands from the MySQL framing, round trips as client turns",
		"overhead_method": "(T_nonqueue_1x4 - T_procedure_alone_4_connections) / topics: extra wall time per topic; x 4 = per instance (overhead_ms_per_topic_per_instance)",
		"exit_status":     status,
	}
	buf, err := json.MarshalIndent(res, "", "  ")
	if err == nil {
		err = os.WriteFile(b.out, append(buf, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(w, "ERROR: write results:", err)
		if status == 0 {
			status = 1
		}
	} else {
		fmt.Fprintf(w, "wrote %s (harness %.0f s)\n", b.out, b.elapsed.Seconds())
	}
	line, _ := json.Marshal(sum)
	fmt.Fprintln(w, string(bytes.TrimSpace(line)))
	return status
}

// busy reports whether a 1-minute load average (from /proc/loadavg) is
// above the number of CPUs.
func busy(loadavg string, nproc int) bool {
	var one float64
	if _, err := fmt.Sscanf(loadavg, "%g", &one); err != nil {
		return false
	}
	return one > float64(nproc)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func minOf(v []float64) float64 { return slices.Min(v) }
func maxOf(v []float64) float64 { return slices.Max(v) }
