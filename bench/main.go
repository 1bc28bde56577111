// Command nqbench is nonqueue's benchmark harness, run by `make bench`
// (built to bin/nqbench) or `go run ./bench` from the repository root.
//
// It starts its own sandbox (a MariaDB primary, two GTID replicas and
// sshd on loopback), runs every scenario of bench/README.md on that one
// topology, prints a table, writes bench/results.json and stops everything
// it started, also on errors and on Ctrl-C. The last line it prints is one
// JSON object with the headline figures. BENCH_QUICK=1 (or -quick) runs a
// smaller version that finishes in under two minutes.
//
// The exit status is 0 when every scenario ran and nonqueue computed no
// topic twice; missed performance targets are reported, never fatal.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nonqueue/nonqueue/transfer"
)

// settings are the sizes of one bench run.
type settings struct {
	Quick bool `json:"quick"`
	// Runs is how many times each scenario is measured; the median is
	// reported.
	Runs int `json:"runs"`
	// SeedTopics are topics 1..SeedTopics for the original loop;
	// Topics are topics 1..Topics for nonqueue and the ceiling.
	SeedTopics int `json:"seed_topics"`
	Topics     int `json:"topics"`
	// SeedInstances and HeadToHead: the original loop's instances on one
	// replica, and nonqueue's on one replica for the head-to-head figure.
	SeedInstances int `json:"seed_instances"`
	// Sweep are the nonqueue topologies (replicas × instances each).
	Sweep []topology `json:"sweep"`
	// SweepRuns is the number of runs of the sweep's topologies other than
	// the head-to-head one (quick mode: 1, to stay under two minutes).
	SweepRuns int `json:"sweep_runs"`
	// ScaleTopics for the one-second procedure at ScaleTopo.
	ScaleTopics int      `json:"scale_topics"`
	ScaleTopo   topology `json:"scale_topology"`
	// BigMB is the size of the big result (both tables together).
	BigMB int `json:"big_mb"`
	// Verify is the workers' [results] verify for every scenario but the
	// big result, which always compares bytes.
	Verify string `json:"verify"`
	// IdleWait is the workers' [worker] idle_wait.
	IdleWait time.Duration `json:"idle_wait_ns"`
	// Pipeline is the workers' [worker] pipeline (their default, true).
	Pipeline bool `json:"pipeline"`
	// PostsMin and PostsMax bound the generated source rows per topic.
	PostsMin int `json:"posts_min"`
	PostsMax int `json:"posts_max"`
	// LatencyTopics at 1 replica x 4 with LatencyRTT added to every round
	// trip to the primary (scenario 8).
	LatencyTopics int           `json:"latency_topics"`
	LatencyRTT    time.Duration `json:"latency_rtt_ns"`
	// Follow: scenario 10's sizes (bench/follow.go).
	Follow followSettings `json:"follow"`
}

type topology struct {
	Replicas  int `json:"replicas"`
	Instances int `json:"instances"` // per replica
}

func (t topology) String() string { return fmt.Sprintf("%dx%d", t.Replicas, t.Instances) }
func (t topology) total() int     { return t.Replicas * t.Instances }

// headToHead is the nonqueue topology compared with the original loop and
// the ceiling: one replica, four instances.
var headToHead = topology{1, 4}

func defaultSettings(quick bool) settings {
	s := settings{
		Quick: quick, Runs: 3,
		SeedTopics: 200, Topics: 1000, SeedInstances: 4,
		Sweep: []topology{headToHead, {2, 1}, {2, 4}, {2, 8}, {2, 16}}, SweepRuns: 3,
		ScaleTopics: 320, ScaleTopo: topology{2, 16},
		BigMB:    512,
		Verify:   transfer.VerifyBytes,
		IdleWait: 20 * time.Millisecond,
		Pipeline: true,
		PostsMin: 200, PostsMax: 400,
		LatencyTopics: 400, LatencyRTT: time.Millisecond,
		Follow: defaultFollowSettings(quick),
	}
	if quick {
		s.SeedTopics, s.Topics, s.ScaleTopics, s.BigMB, s.SweepRuns = 60, 200, 96, 64, 1
		s.LatencyTopics = 100
	}
	return s
}

// Limits on every wait, so a broken worker or server cannot hang the run.
const (
	workerReadyTimeout = 60 * time.Second
	workerStopGrace    = 30 * time.Second // the worker's own grace period is 20s
	seedStopGrace      = 10 * time.Second
	teardownTimeout    = 2 * time.Minute
	// pollInterval paces the harness's "all done?" query on the primary
	// during a round. The round's time comes from the run history, not
	// from the poll, so a slower poll only takes the harness's own load
	// (a COUNT over the round's run rows) off the server it measures.
	pollInterval = 100 * time.Millisecond
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nqbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", os.Getenv("BENCH_QUICK") == "1", "the small version (< 2 min); default from BENCH_QUICK=1")
	nqPath := fs.String("nonqueue", "", "the nonqueue binary (default: REPO/bin/nonqueue; make bench builds it)")
	seedPath := fs.String("seed", "", "the original loop (default: REPO/bench/seed/seed-worker.sh, the project's rebuild of it)")
	dir := fs.String("dir", "", "sandbox directory (default: a new temporary directory, removed after a clean run)")
	out := fs.String("out", "", "results file (default: REPO/bench/results.json)")
	runs := fs.Int("runs", 0, "runs per scenario (default 3)")
	sweep := fs.String("sweep", "", "run only these nonqueue topologies of scenario 2, comma-separated REPLICASxINSTANCES such as 1x4,2x16 (for debugging)")
	pipeline := fs.Bool("pipeline", true, "the workers' [worker] pipeline (their default: true); -pipeline=false runs each topic to its end before the next claim")
	verify := fs.String("verify", transfer.VerifyBytes, "the workers' [results] verify outside the big result: bytes (their default) or checksum")
	only := fs.String("only", "", "run only these scenarios, comma-separated: seed, ceiling, sweep, scale, big, sync, latency, scale1000, follow (the summary then has gaps; sync compares with sweep and big when they ran too)")
	rtt := fs.Duration("rtt", time.Millisecond, "the latency scenario's round trip to the primary, whole milliseconds (0: the proxies only, to see their own cost)")
	compare := fs.String("compare", "", "a second nonqueue binary, measured in the latency scenario alternately with the first on the same sandbox (A/B of a change)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "nqbench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	s := defaultSettings(*quick)
	if *runs != 0 {
		if *runs < 1 || *runs > 9 {
			fmt.Fprintln(stderr, "nqbench: -runs wants 1..9")
			return 2
		}
		s.Runs, s.SweepRuns, s.Follow.Runs = *runs, *runs, *runs
	}
	switch *verify {
	case transfer.VerifyBytes, transfer.VerifyChecksum:
		s.Verify = *verify
	default:
		fmt.Fprintf(stderr, "nqbench: -verify wants checksum or bytes, not %q\n", *verify)
		return 2
	}
	s.Pipeline = *pipeline
	if *sweep != "" {
		s.Sweep = nil
		for _, t := range strings.Split(*sweep, ",") {
			var topo topology
			if _, err := fmt.Sscanf(strings.TrimSpace(t), "%dx%d", &topo.Replicas, &topo.Instances); err != nil ||
				topo.Replicas < 1 || topo.Replicas > 2 || topo.Instances < 1 || topo.Instances > 64 {
				fmt.Fprintf(stderr, "nqbench: -sweep: %q is not REPLICASxINSTANCES with 1..2 replicas and 1..64 instances\n", t)
				return 2
			}
			s.Sweep = append(s.Sweep, topo)
		}
	}

	// The first SIGINT/SIGTERM cancels the run; everything started is then
	// stopped (bounded). Later signals are reported and ignored so the
	// teardown is not cut short and nothing is left running.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		n := 0
		for range sigs {
			if n++; n == 1 {
				fmt.Fprintln(stderr, "nqbench: interrupted: stopping workers and the sandbox (bounded wait)")
				cancel()
			} else {
				fmt.Fprintln(stderr, "nqbench: still stopping what was started; please wait")
			}
		}
	}()

	b := &bench{s: s, stdout: stdout, stderr: stderr, started: time.Now()}
	if *only != "" {
		b.only = map[string]bool{}
		for _, k := range strings.Split(*only, ",") {
			switch k = strings.TrimSpace(k); k {
			case "seed", "ceiling", "sweep", "scale", "big", "sync", "latency", "scale1000", "follow":
				b.only[k] = true
			default:
				fmt.Fprintf(stderr, "nqbench: -only: unknown scenario %q\n", k)
				return 2
			}
		}
	}
	if *rtt < 0 || *rtt%time.Millisecond != 0 || *rtt > time.Second {
		fmt.Fprintln(stderr, "nqbench: -rtt wants whole milliseconds from 0 to 1s")
		return 2
	}
	b.s.LatencyRTT = *rtt
	if *compare != "" {
		p, err := filepath.Abs(*compare)
		if err == nil {
			_, err = os.Stat(p)
		}
		if err != nil {
			fmt.Fprintf(stderr, "nqbench: -compare: %v\n", err)
			return 2
		}
		b.compare = p
	}
	b.command = commandLine(args)
	if err := b.locate(*nqPath, *seedPath, *out); err != nil {
		fmt.Fprintln(stderr, "nqbench:", err)
		// Even now the last line is the JSON summary, for scripts.
		line, _ := json.Marshal(map[string]any{"ok": false, "error": err.Error()})
		fmt.Fprintln(stdout, string(line))
		return 1
	}
	err := b.runAll(ctx, *dir)
	b.elapsed = time.Since(b.started)
	return b.finish(err)
}

// commandLine reconstructs how the harness was invoked, for results.json.
func commandLine(args []string) string {
	parts := []string{}
	if v, ok := os.LookupEnv("BENCH_QUICK"); ok {
		parts = append(parts, "BENCH_QUICK="+v)
	}
	parts = append(parts, os.Args[0])
	parts = append(parts, args...)
	cmd := strings.Join(parts, " ")
	if os.Getenv("MAKELEVEL") != "" {
		cmd += " (via make bench)"
	}
	return cmd
}

// defaultSeed is the original loop the harness runs unless -seed names
// another: the project's rebuild from the seed presentation's slides,
// checked against the reference script by TestSeedLoopEquivalent.
const defaultSeed = "bench/seed/seed-worker.sh"

// locate finds the repository root, the nonqueue binary and the seed loop.
func (b *bench) locate(nqPath, seedPath, out string) error {
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		return fmt.Errorf("find the repository root with git rev-parse --show-toplevel (run from inside the nonqueue repository): %w", err)
	}
	b.root = strings.TrimSpace(string(top))
	if seedPath == "" {
		seedPath = filepath.Join(b.root, defaultSeed)
	}
	if b.seed, err = filepath.Abs(seedPath); err != nil {
		return err
	}
	if st, err := os.Stat(b.seed); err != nil || st.IsDir() {
		return fmt.Errorf("the original loop (the baseline) is missing: %s not found; the repository has it at %s, or give -seed PATH", b.seed, defaultSeed)
	}
	if nqPath == "" {
		nqPath = filepath.Join(b.root, "bin", "nonqueue")
	}
	if b.nonqueue, err = filepath.Abs(nqPath); err != nil {
		return err
	}
	if _, err := os.Stat(b.nonqueue); err != nil {
		return fmt.Errorf("nonqueue binary %s not found: run make build (make bench builds it first)", b.nonqueue)
	}
	if _, err := exec.LookPath("scp"); err != nil {
		return errors.New("scp not found: install openssh-client")
	}
	if _, err := exec.LookPath("mariadb"); err != nil {
		return errors.New("mariadb client not found: apt-get install -y mariadb-client")
	}
	b.out = out
	if b.out == "" {
		b.out = filepath.Join(b.root, "bench", "results.json")
	}
	return nil
}
