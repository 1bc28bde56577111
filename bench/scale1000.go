package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/prometheus/procfs"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// ---- 9. 1,000 instances against one primary ----
//
// A fleet of 50 replicas x 20 instances, simulated: scale1000Processes
// worker processes (at least 8) share the sandbox's two replicas, each
// with its own instance ids, and run a stand-in procedure of one second:
// SLEEP(1) on the replica session, then one tiny MyISAM result table. So
// claims, lease heartbeats, GTID waits, transfers, publishes, finishes,
// the run history and the registry are all real, and the ideal is one
// topic per instance per second. The scenario also measures what the idle
// fleet costs the primary before the first round.

// scaleBase: the scenario's topics are scaleBase+1..scaleBase+Topics, rows
// of app.TopicFilter it adds, far from the other scenarios' ids.
const scaleBase = 2000000

// scaleRoundPoll is how often scenario 9's rounds count their done runs.
const scaleRoundPoll = 500 * time.Millisecond

// procScale is the stand-in procedure (scaleProcSQL).
const procScale = "influencer.proc_scale"

// scaleSettings size scenario 9.
type scaleSettings struct {
	Processes int `json:"processes"`
	Instances int `json:"instances_per_process"`
	Topics    int `json:"topics"`
	// IdleWindow is how long the idle fleet's queries are counted.
	IdleWindow time.Duration `json:"idle_window_ns"`
}

func (s scaleSettings) total() int { return s.Processes * s.Instances }

// scale1000Settings: 8 x 125 = 1,000 instances and 3 topics each; quick
// mode 4 x 25 = 100.
func scale1000Settings(quick bool) scaleSettings {
	if quick {
		return scaleSettings{Processes: 4, Instances: 25, Topics: 300, IdleWindow: 5 * time.Second}
	}
	return scaleSettings{Processes: 8, Instances: 125, Topics: 3000, IdleWindow: 10 * time.Second}
}

// scaleRun is what a round of scenario 9 adds to a runResult.
type scaleRun struct {
	// Claim latency (the run history's claim_us: from asking for a topic
	// to holding it) over the round's done runs, milliseconds.
	ClaimP50MS float64 `json:"claim_p50_ms"`
	ClaimP99MS float64 `json:"claim_p99_ms"`
	ClaimMaxMS float64 `json:"claim_max_ms"`
	// PrimaryConns: the primary's Threads_connected at its highest during
	// the round, less the harness's own (read before the workers
	// started); PerProcessMax the most TCP connections one worker process
	// held to the primary's port at any sample (from /proc).
	PrimaryConns         int `json:"primary_connections"`
	PrimaryConnsPerProcs int `json:"primary_connections_per_process_max"`
	// ReplicaConns: the most connections a replica had during the round.
	ReplicaConns int `json:"replica_connections_max"`
	// StatementsPerTopic: the primary's statement counters (Com_*,
	// Questions) over the round, per topic; the ones above 0.05.
	StatementsPerTopic map[string]float64 `json:"primary_statements_per_topic"`
}

// scaleSummary is the scenario's figures across its runs.
type scaleSummary struct {
	Processes  int     `json:"processes"`
	Instances  int     `json:"instances"`
	Efficiency float64 `json:"efficiency"`
	ClaimP50MS float64 `json:"claim_p50_ms"`
	ClaimP99MS float64 `json:"claim_p99_ms"`
	// PrimaryCPUMSPerTopic: the primary mariadbd's CPU per topic (median
	// run), from /proc.
	PrimaryCPUMSPerTopic float64 `json:"primary_cpu_ms_per_topic"`
	PrimaryConns         int     `json:"primary_connections"`
	PrimaryConnsPerProc  int     `json:"primary_connections_per_process_max"`
	ReplicaConns         int     `json:"replica_connections_max"`
	// The idle fleet: the primary's Questions per second over the idle
	// window, per process, and the primary's CPU per second.
	IdleQueriesPerSPerProc float64 `json:"idle_queries_per_s_per_process"`
	IdlePrimaryCPUMSPerS   float64 `json:"idle_primary_cpu_ms_per_s"`
	// BasePrimaryCPUMSPerS: the primary's CPU per second with no worker
	// running, over the same window before the workers start (its own
	// background work and the other tenants' effect on it).
	BasePrimaryCPUMSPerS float64 `json:"base_primary_cpu_ms_per_s"`
	// SwapFloor: the primary's CPU for the table swaps alone, timed before
	// the workers start (swapfloor.go).
	SwapFloor *swapFloor `json:"swap_floor,omitempty"`
}

// scaleProcSQL creates the stand-in procedure on the primary (it
// replicates): it counts its call (influencer.calls, on the replicas only),
// sleeps a second, and leaves one MyISAM table of one row.
const scaleProcSQL = `DROP PROCEDURE IF EXISTS influencer.proc_scale;
DELIMITER //
CREATE PROCEDURE influencer.proc_scale(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  INSERT INTO influencer.calls (topic_id) VALUES (p_topic);
  DO SLEEP(1);
  SET @s = CONCAT('DROP TABLE IF EXISTS influencer.Scale_', p_topic);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE influencer.Scale_', p_topic, ' (k INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=MyISAM');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('INSERT INTO influencer.Scale_', p_topic, ' VALUES (1, ', p_topic * 10 + p_scope, ')');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, p_topic AS topic, p_scope AS scope;
END//
DELIMITER ;
`

// scaleConfig is one process's configuration: the workers' defaults
// (idle_wait too: the idle fleet is measured as it runs in production),
// the stand-in procedure, and an id_base of its own so that processes
// sharing a replica have distinct instance ids ((server_id - id_base) x
// 1000 + n).
var scaleConfig = template.Must(template.New("scale").Parse(`# nonqueue bench, scenario 9 (1,000 instances), process {{.Process}} on {{.Replica.Name}}; written by nqbench.
` + sandbox.ConnectionsTOML + `
` + sandbox.MappedTopicsTOML + `
[procedure]
name = "` + procScale + `"
marker = "SUMMARY"
timeout = "10m"

[results]
schema = "influencer"
tables = ["Scale_{id}"]

[worker]
log_dir = "{{.LogDir}}"
id_base = {{.IDBase}}
id_multiplier = 1000

` + sandbox.SSHTOML))

// scenarioScale1000 runs scenario 9.
func (b *bench) scenarioScale1000(ctx context.Context) (sc *scenario, err error) {
	s := scale1000Settings(b.s.Quick)
	n := s.Topics
	sc = &scenario{Key: fmt.Sprintf("scale1000_%dx%d", s.Processes, s.Instances),
		Title: fmt.Sprintf("%d instances (%d processes), 1 s stand-in", s.total(), s.Processes),
		Kind:  "scale1000", Procedure: procScale, Replicas: len(b.sb.Replicas), Instances: s.total() / len(b.sb.Replicas),
		Concurrency: s.total(), Topics: n, want: b.s.Runs, budget: 2 * time.Minute}
	if b.s.Quick {
		sc.want = b.s.SweepRuns // one, as the sweep's: quick mode stays short
	}
	defer sc.finish()
	if err := b.checkClean(ctx); err != nil {
		return sc, err
	}
	if err := b.scaleSetup(ctx, s); err != nil {
		return sc, err
	}
	defer func() {
		if derr := b.scaleDropResults(context.WithoutCancel(ctx), n); derr != nil {
			b.info("drop the scenario's result tables: %v", derr)
		}
	}()
	baseConns, err := threadsConnected(ctx, b.primary)
	if err != nil {
		return sc, err
	}
	sum := &scaleSummary{Processes: s.Processes, Instances: s.total()}
	sc.Scale = sum
	if sum.SwapFloor, err = b.measureSwapFloor(ctx, swapFloorTopics(b.s.Quick)); err != nil {
		return sc, err
	}
	f := sum.SwapFloor
	b.info("the primary's floor, %d one-table swaps alone: %.2f ms of its CPU per topic (RENAME %.2f, or %.2f 16 topics a statement; first open %.2f; DROP in 64s %.2f); SELECT 1 %.3f ms",
		f.Topics, f.TotalMS, f.RenameMS, f.RenameBatchedMS, f.OpenMS, f.DropMS, f.Select1MS)
	if sum.BasePrimaryCPUMSPerS, err = b.primaryCPUPerS(ctx, s.IdleWindow/2); err != nil {
		return sc, err
	}
	ws, err := b.startScaleWorkers(ctx, sc.Key, s)
	defer func() {
		if serr := b.stopWorkers(ws, sc); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	if err != nil {
		return sc, err
	}
	if err := b.scaleIdle(ctx, ws, s, sum); err != nil {
		return sc, fmt.Errorf("idle fleet: %w", err)
	}
	b.info("idle: %d processes x %d instances: %.2f queries/s per process on the primary (%.1f ms of its CPU per s; %.1f with no worker) over %v",
		s.Processes, s.Instances, sum.IdleQueriesPerSPerProc, sum.IdlePrimaryCPUMSPerS, sum.BasePrimaryCPUMSPerS, s.IdleWindow)
	topo := topology{Replicas: 1, Instances: s.total()}
	// The round's time comes from the run history's finished_at, not
	// from when the poll saw it done: a slower poll only costs the
	// primary less.
	b.roundPoll = scaleRoundPoll
	defer func() { b.roundPoll = 0 }()
	for i := 1; i <= sc.want; i++ {
		var lastRun int64
		if err := b.primary.QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0) FROM nonqueue.run").Scan(&lastRun); err != nil {
			return sc, err
		}
		watch := b.watchConnections(ctx, ws, baseConns)
		com0, cerr := comCounters(ctx, b.primary)
		if cerr != nil {
			return sc, cerr
		}
		r, err := b.nqRound(ctx, ws, scaleBase+1, scaleBase+n, topo, sc.budget)
		conns := watch()
		if r != nil {
			r.Scale = conns
			if com1, cerr := comCounters(ctx, b.primary); cerr == nil {
				conns.StatementsPerTopic = map[string]float64{}
				for k, v := range com1 {
					if d := float64(v-com0[k]) / float64(n); d >= 0.05 {
						conns.StatementsPerTopic[k] = math.Round(d*100) / 100
					}
				}
			}
			if cerr := b.claimLatency(ctx, lastRun, conns); cerr != nil && err == nil {
				err = cerr
			}
			sc.Runs = append(sc.Runs, r)
			b.info("run %d/%d: %6.2f s  %7.1f topics/s (%.1f%% of %d)  computed twice %d  outcomes %v",
				i, sc.want, r.Seconds, float64(n)/r.Seconds, 100*float64(n)/r.Seconds/float64(s.total()), s.total(), r.Duplicates, r.Outcomes)
			b.info("        claim p50 %.1f ms p99 %.1f ms max %.1f ms; primary connections %d (at most %d per process), replica at most %d",
				conns.ClaimP50MS, conns.ClaimP99MS, conns.ClaimMaxMS, conns.PrimaryConns, conns.PrimaryConnsPerProcs, conns.ReplicaConns)
			b.info("        avg ms: claim %.2f gtid %.2f proc %.2f transfer %.2f publish %.2f run %.2f",
				r.AvgMS["claim"], r.AvgMS["lag_wait"], r.AvgMS["proc"], r.AvgMS["transfer"], r.AvgMS["publish"], r.AvgMS["run_total"])
			b.info("        CPU ms per topic: %s", formatCPU(r.CPUMSPerTopic))
			b.info("        primary statements per topic: %s", formatCounts(conns.StatementsPerTopic))
			if r.Duplicates > 0 || r.Unexpected > 0 {
				sc.Notes = append(sc.Notes, fmt.Sprintf("FAIL run %d: %d topics computed twice", i, r.Duplicates))
			}
		}
		if err != nil {
			return sc, fmt.Errorf("run %d: %w", i, err)
		}
	}
	sc.finish()
	sc.finishScale(sum)
	b.noteOutcomes(sc)
	return sc, nil
}

// scaleSetup adds the scenario's topics, creates the stand-in procedure,
// and raises the servers' connection limits for a thousand sessions on
// the replicas (each instance holds a replica session for its run, two
// with the pipeline).
func (b *bench) scaleSetup(ctx context.Context, s scaleSettings) error {
	if _, err := b.primary.ExecContext(ctx, fmt.Sprintf(`INSERT IGNORE INTO app.TopicFilter
 (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, influencerPriority, influencerRunning, active)
 SELECT %d + seq, CONCAT('scale ', seq), 0, NOW(), 0, 0, 1 FROM app.seq_1_to_%d`, scaleBase, s.Topics)); err != nil {
		return fmt.Errorf("add the scenario's topics: %w", err)
	}
	if err := mariadbClient(ctx, b.sb.Primary.Socket, scaleProcSQL); err != nil {
		return fmt.Errorf("create %s: %w", procScale, err)
	}
	// Every topic has a published result already, as in the other
	// scenarios: each run replaces it, as a recompute does.
	for lo := 1; lo <= s.Topics; lo += 100 {
		var sb strings.Builder
		for id := lo; id <= min(lo+99, s.Topics); id++ {
			fmt.Fprintf(&sb, "CREATE TABLE IF NOT EXISTS influencer.Scale_%d (k INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=MyISAM;", scaleBase+id)
		}
		if _, err := b.primaryNoBin.ExecContext(ctx, sb.String()); err != nil {
			return fmt.Errorf("create published results on the primary: %w", err)
		}
	}
	for _, srv := range b.sb.Servers() {
		if err := mariadbClient(ctx, srv.Socket, "SET GLOBAL max_connections = 4000;"); err != nil {
			return fmt.Errorf("raise max_connections on %s: %w", srv.Name, err)
		}
	}
	return b.waitReplicas(ctx, time.Minute)
}

// scaleDropResults drops the published stand-in tables on the primary
// (they never replicate), 100 per statement.
func (b *bench) scaleDropResults(ctx context.Context, n int) error {
	for lo := 1; lo <= n; lo += 100 {
		var names []string
		for id := lo; id <= min(lo+99, n); id++ {
			names = append(names, "influencer.Scale_"+strconv.Itoa(scaleBase+id))
		}
		if _, err := b.primaryNoBin.ExecContext(ctx, "DROP TABLE IF EXISTS "+strings.Join(names, ", ")); err != nil {
			return err
		}
	}
	return nil
}

// startScaleWorkers starts the processes, process j on replica j mod 2
// with instance ids (j+1)*1000+1.., and waits until every instance has
// looked for work once.
func (b *bench) startScaleWorkers(ctx context.Context, key string, s scaleSettings) ([]*child.Process, error) {
	var ws []*child.Process
	for j := range s.Processes {
		r := b.sb.Replicas[j%len(b.sb.Replicas)]
		path := filepath.Join(b.dir, "bench", fmt.Sprintf("scale-process%d.toml", j+1))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		if err != nil {
			return ws, err
		}
		err = scaleConfig.Execute(f, map[string]any{"SB": b.sb, "Replica": r, "Process": j + 1,
			"LogDir": filepath.Join(b.dir, "runs-scale"), "IDBase": int(r.ServerID) - (j + 1)})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return ws, fmt.Errorf("write %s: %w", path, err)
		}
		c, err := b.kids.Start(fmt.Sprintf("nonqueue work (%s, process %d on %s)", key, j+1, r.Name),
			filepath.Join(b.dir, "bench", fmt.Sprintf("worker-%s-process%d.log", key, j+1)), false,
			b.nonqueue, "work", "--config", path, "--instances", itoa(s.Instances))
		if err != nil {
			return ws, err
		}
		ws = append(ws, c)
	}
	return ws, b.waitWorkersIdle(ctx, ws, s.Instances, 2*workerReadyTimeout, 100*time.Millisecond)
}

// scaleIdle counts the primary's Questions while the fleet idles (nothing
// due), after a settling pause, and the primary's CPU over the same window.
func (b *bench) scaleIdle(ctx context.Context, ws []*child.Process, s scaleSettings, sum *scaleSummary) error {
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}
	q0, err := questions(ctx, b.primary)
	if err != nil {
		return err
	}
	cpu0, err := b.sampleCPU(ws)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, s.IdleWindow); err != nil {
		return err
	}
	q1, err := questions(ctx, b.primary)
	if err != nil {
		return err
	}
	cpu1, err := b.sampleCPU(ws)
	if err != nil {
		return err
	}
	secs := time.Since(t0).Seconds()
	// Less the harness's own SHOW STATUS (one).
	sum.IdleQueriesPerSPerProc = float64(q1-q0-1) / secs / float64(s.Processes)
	sum.IdlePrimaryCPUMSPerS = (cpu1["primary"] - cpu0["primary"]) * 1000 / secs
	return nil
}

// primaryCPUPerS is the primary mariadbd's CPU, ms per second, over d.
func (b *bench) primaryCPUPerS(ctx context.Context, d time.Duration) (float64, error) {
	c0, err := b.sampleCPU(nil)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return 0, err
	}
	c1, err := b.sampleCPU(nil)
	if err != nil {
		return 0, err
	}
	return (c1["primary"] - c0["primary"]) * 1000 / time.Since(t0).Seconds(), nil
}

func questions(ctx context.Context, db *sql.DB) (int64, error) {
	var name string
	var v int64
	if err := db.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Questions'").Scan(&name, &v); err != nil {
		return 0, fmt.Errorf("read Questions on the primary: %w", err)
	}
	return v, nil
}

// comCounters reads the primary's statement counters: Questions and every
// Com_* (SHOW GLOBAL STATUS).
func comCounters(ctx context.Context, db *sql.DB) (map[string]int64, error) {
	rows, err := db.QueryContext(ctx, "SHOW GLOBAL STATUS WHERE Variable_name = 'Questions' OR Variable_name LIKE 'Com\\_%'")
	if err != nil {
		return nil, fmt.Errorf("read the primary's statement counters: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var k string
		var v int64
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

// formatCounts prints counters, largest first.
func formatCounts(m map[string]float64) string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(m[b], m[a]) })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.2f", strings.TrimPrefix(k, "Com_"), m[k])
	}
	return strings.Join(parts, ", ")
}

func threadsConnected(ctx context.Context, db *sql.DB) (int, error) {
	var name string
	var v int
	if err := db.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Threads_connected'").Scan(&name, &v); err != nil {
		return 0, fmt.Errorf("read Threads_connected: %w", err)
	}
	return v, nil
}

// watchConnections samples, every half second until the returned function
// is called, the primary's Threads_connected (less base, the harness's
// own), the replicas' and each worker process's TCP connections to the
// primary's port; the function stops it and returns the highest figures.
func (b *bench) watchConnections(ctx context.Context, ws []*child.Process, base int) func() *scaleRun {
	ctx, cancel := context.WithCancel(ctx)
	out := &scaleRun{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			if n, err := threadsConnected(ctx, b.primary); err == nil {
				out.PrimaryConns = max(out.PrimaryConns, n-base)
			}
			for _, r := range b.replicas {
				if n, err := threadsConnected(ctx, r); err == nil {
					out.ReplicaConns = max(out.ReplicaConns, n)
				}
			}
			if per, err := connsPerProcess(ws, b.sb.Primary.Port); err == nil {
				out.PrimaryConnsPerProcs = max(out.PrimaryConnsPerProcs, slices.Max(append(per, 0)))
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() *scaleRun {
		cancel()
		wg.Wait()
		return out
	}
}

// connsPerProcess counts, for each worker process, its established TCP
// connections to port (its sockets' inodes against /proc/net/tcp).
func connsPerProcess(ws []*child.Process, port int) ([]int, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}
	toPort, err := socketsTo(port)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, w := range ws {
		p, err := fs.Proc(w.Pid())
		if err != nil {
			continue
		}
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue
		}
		n := 0
		for _, t := range targets {
			var inode uint64
			if _, err := fmt.Sscanf(t, "socket:[%d]", &inode); err == nil && toPort[inode] {
				n++
			}
		}
		out = append(out, n)
	}
	return out, nil
}

// socketsTo returns the inodes of the established TCP sockets (IPv4, as
// the sandbox listens on 127.0.0.1) whose remote port is port, from
// /proc/net/tcp: "sl local rem st ... uid timeout inode".
func socketsTo(port int) (map[uint64]bool, error) {
	buf, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	const established = "01"
	want := fmt.Sprintf(":%04X", port)
	out := map[uint64]bool{}
	for _, line := range strings.Split(string(buf), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != established || !strings.HasSuffix(f[2], want) {
			continue
		}
		if inode, err := strconv.ParseUint(f[9], 10, 64); err == nil {
			out[inode] = true
		}
	}
	return out, nil
}

// claimLatency reads the round's claim times from the run history.
func (b *bench) claimLatency(ctx context.Context, lastRun int64, r *scaleRun) error {
	rows, err := b.primary.QueryContext(ctx, "SELECT claim_us FROM nonqueue.run WHERE id > ? AND outcome = 'done' AND topic_id > ?", lastRun, scaleBase)
	if err != nil {
		return fmt.Errorf("read claim times: %w", err)
	}
	defer rows.Close()
	var v []float64
	for rows.Next() {
		var us int64
		if err := rows.Scan(&us); err != nil {
			return err
		}
		v = append(v, float64(us)/1000)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(v) == 0 {
		return errors.New("no done runs to read claim times from")
	}
	slices.Sort(v)
	r.ClaimP50MS, r.ClaimP99MS, r.ClaimMaxMS = percentile(v, 0.50), percentile(v, 0.99), v[len(v)-1]
	return nil
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// finishScale sets the scenario's figures: efficiency from the median
// time, the rest as medians (connections: the highest) over the runs.
func (sc *scenario) finishScale(sum *scaleSummary) {
	if sc.MedianS <= 0 {
		return
	}
	sum.Efficiency = sc.TopicsPerS / float64(sum.Instances)
	var p50, p99, cpu []float64
	for _, r := range sc.Runs {
		if r.Scale == nil {
			continue
		}
		p50 = append(p50, r.Scale.ClaimP50MS)
		p99 = append(p99, r.Scale.ClaimP99MS)
		cpu = append(cpu, r.CPUMSPerTopic["primary"])
		sum.PrimaryConns = max(sum.PrimaryConns, r.Scale.PrimaryConns)
		sum.PrimaryConnsPerProc = max(sum.PrimaryConnsPerProc, r.Scale.PrimaryConnsPerProcs)
		sum.ReplicaConns = max(sum.ReplicaConns, r.Scale.ReplicaConns)
	}
	if len(p50) > 0 {
		sum.ClaimP50MS, sum.ClaimP99MS, sum.PrimaryCPUMSPerTopic = median(p50), median(p99), median(cpu)
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("efficiency %.1f%% of %d topics/s; claim p50 %.1f ms p99 %.1f ms; primary CPU %.2f ms/topic; primary connections %d (%d per process at most); idle %.2f queries/s per process",
		100*sum.Efficiency, sum.Instances, sum.ClaimP50MS, sum.ClaimP99MS, sum.PrimaryCPUMSPerTopic, sum.PrimaryConns, sum.PrimaryConnsPerProc, sum.IdleQueriesPerSPerProc))
}

// scale1000Summary adds scenario 9's figures to the JSON summary and
// returns its targets.
func (b *bench) scale1000Summary(sum map[string]any, check func(string, *float64, string, func(float64) bool) target) []target {
	var eff, p99, cpu, idle, floor, sel1 *float64
	for _, sc := range b.scenarios {
		if sc.Kind != "scale1000" || sc.Scale == nil {
			continue
		}
		s := sc.Scale
		idle = num(s.IdleQueriesPerSPerProc)
		sum["idle_primary_cpu_ms_per_s"] = num(s.IdlePrimaryCPUMSPerS)
		sum["base_primary_cpu_ms_per_s"] = num(s.BasePrimaryCPUMSPerS)
		if f := s.SwapFloor; f != nil {
			floor, sel1 = num(f.TotalMS), num(f.Select1MS)
		}
		sum["scale_instances"] = s.Instances
		sum["scale_processes"] = s.Processes
		if sc.Error == "" && sc.MedianS > 0 {
			eff, p99, cpu = num(s.Efficiency), num(s.ClaimP99MS), num(s.PrimaryCPUMSPerTopic)
			sum["scale_claim_p50_ms"] = num(s.ClaimP50MS)
			sum["scale_primary_connections"] = s.PrimaryConns
			sum["scale_primary_connections_per_process"] = s.PrimaryConnsPerProc
			sum["scale_topics_per_s"] = num(sc.TopicsPerS)
		}
	}
	sum["scale_efficiency_1000"] = eff
	sum["scale_claim_p99_ms"] = p99
	sum["primary_cpu_ms_per_topic_1000"] = cpu
	sum["idle_queries_per_s_per_process"] = idle
	sum["primary_swap_floor_ms_per_topic"] = floor
	sum["primary_select1_ms"] = sel1
	return []target{
		check("efficiency, 1,000 instances, 1 s stand-in (scale_efficiency_1000)", eff, ">= 0.90", func(v float64) bool { return v >= 0.9 }),
		check("primary CPU per topic there, ms (primary_cpu_ms_per_topic_1000)", cpu, "<= 1", func(v float64) bool { return v <= 1 }),
		check("an idle process's queries/s on the primary (idle_queries_per_s_per_process)", idle, "<= 2", func(v float64) bool { return v <= 2 }),
	}
}
