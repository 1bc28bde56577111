package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/queue"
)

// scenario is one line of the table: one setting measured Runs times.
type scenario struct {
	Key         string       `json:"key"`
	Title       string       `json:"title"`
	Kind        string       `json:"kind"` // seed, ceiling, nonqueue, scale, big, latency
	Procedure   string       `json:"procedure"`
	Replicas    int          `json:"replicas"`
	Instances   int          `json:"instances_per_replica"`
	Concurrency int          `json:"concurrency"`
	Topics      int          `json:"topics"`
	Runs        []*runResult `json:"runs"`
	MedianS     float64      `json:"median_s"`
	MinS        float64      `json:"min_s"`
	MaxS        float64      `json:"max_s"`
	TopicsPerS  float64      `json:"topics_per_s"` // topics / median
	// Duplicates: topics computed more than once, summed over the runs.
	Duplicates int `json:"duplicates"`
	// MaxRSSMB is the largest VmHWM of the scenario's worker processes.
	MaxRSSMB float64 `json:"worker_max_rss_mb,omitempty"`
	// Big result only: medians of nonqueue's transfer + publish and of scp.
	TransferPublishS float64 `json:"transfer_publish_median_s,omitempty"`
	ScpS             float64 `json:"scp_median_s,omitempty"`
	// NoSync: the workers ran with [results] sync = false (scenario 7).
	NoSync bool `json:"no_sync,omitempty"`
	// Scenario 8 (latency): medians over the runs of the overhead per
	// topic and of the link counts per topic (latencyRun); Compare holds
	// the rounds of the -compare binary, alternated with Runs.
	OverheadMSPerTopic float64            `json:"overhead_ms_per_topic,omitempty"`
	RoundTripsPerTopic map[string]float64 `json:"round_trips_per_topic,omitempty"`
	Compare            []*runResult       `json:"compare_runs,omitempty"`
	Notes              []string           `json:"notes,omitempty"`
	Error              string             `json:"error,omitempty"`
	WallS              float64            `json:"wall_s"` // the whole scenario, start-up included

	// Scale: scenario 9's figures (scale1000.go).
	Scale *scaleSummary `json:"scale1000,omitempty"`
	// want is the number of runs to make; budget bounds a round at one
	// minute + topics x budget / instances.
	want   int
	budget time.Duration
}

// runResult is one measurement.
type runResult struct {
	Seconds float64 `json:"seconds"`
	// PollSeconds: nonqueue, when the harness's poll (every pollInterval) saw every topic
	// done (Seconds comes from the run history and is the figure used).
	PollSeconds float64 `json:"poll_seconds,omitempty"`
	callCount
	NotDone int `json:"not_done"`
	// Outcomes of nonqueue's runs from the run history.
	Outcomes map[string]int `json:"outcomes,omitempty"`
	// AvgMS: nonqueue's mean time per phase of a done run (run history).
	AvgMS map[string]float64 `json:"avg_ms,omitempty"`
	// CPUMSPerTopic: nonqueue, milliseconds of CPU per topic by part of
	// the topology over the round (bench/cpu.go), from /proc.
	CPUMSPerTopic map[string]float64 `json:"cpu_ms_per_topic,omitempty"`
	// LoopErrors: the original loop's "proc failed"/"copy failed" lines.
	LoopErrors int `json:"loop_errors,omitempty"`
	// Big result.
	Bytes            int64   `json:"bytes_shipped,omitempty"`
	TransferPublishS float64 `json:"transfer_publish_s,omitempty"`
	ScpS             float64 `json:"scp_s,omitempty"`
	ScpBytes         int64   `json:"scp_bytes,omitempty"`
	// Latency: scenario 8's ceiling, overhead and link counts.
	Latency *latencyRun `json:"latency,omitempty"`
	// Scale: scenario 9's claim latency and connections (scale1000.go).
	Scale *scaleRun `json:"scale,omitempty"`
	// Follow: scenario 10's follower round (bench/follow.go).
	Follow *followRun `json:"follow,omitempty"`
}

// finish computes the scenario's medians once its runs are in.
func (sc *scenario) finish() {
	var secs, tp, scp []float64
	sc.Duplicates = 0
	for _, r := range sc.Runs {
		secs = append(secs, r.Seconds)
		sc.Duplicates += r.Duplicates
		if r.TransferPublishS > 0 {
			tp = append(tp, r.TransferPublishS)
		}
		if r.ScpS > 0 {
			scp = append(scp, r.ScpS)
		}
	}
	if len(secs) == 0 {
		return
	}
	sc.MedianS, sc.MinS, sc.MaxS = median(secs), minOf(secs), maxOf(secs)
	if sc.MedianS > 0 {
		sc.TopicsPerS = float64(sc.Topics) / sc.MedianS
	}
	if len(tp) > 0 {
		sc.TransferPublishS = median(tp)
	}
	if len(scp) > 0 {
		sc.ScpS = median(scp)
	}
}

// ---- 1. the original loop ----

// seedConf is the configuration file seed-worker.sh sources. MYSQL and
// MYSQL_MASTER point the mariadb client at option files: the script
// expands $MYSQL unquoted, so an option with a space in it
// (--init-command='SET sql_log_bin=0') would be split into two words; the
// option file carries the same init-command intact (and keeps the
// password off the command line).
const seedConf = `# Settings of the original loop (seed-worker.sh), written by nqbench.
MYSQL="mariadb --defaults-file=%[1]s/replica1.cnf"
MYSQL_MASTER="mariadb --defaults-file=%[1]s/primary.cnf"
TABLE_SOURCE=%[2]s/influencer
TABLE_MASTER_PUSH_LOC=%[3]s@127.0.0.1:%[4]s/influencer
SCP_OPTS="-P %[5]d -i %[6]s -o UserKnownHostsFile=%[7]s -o StrictHostKeyChecking=yes"
INFLUENCER_LOG=%[8]s/
MINPRIORITY=0
SHORT_SLEEP=0
IDLE_SLEEP=1
EXIT_WHEN_EMPTY=1
`

const clientCnf = `[client]
host=127.0.0.1
port=%d
user=%s
password=%s
%s`

func (b *bench) writeSeedFiles(run int) (string, error) {
	sb := b.sb
	dir := filepath.Join(b.dir, "seed")
	logs := filepath.Join(dir, fmt.Sprintf("run%d", run))
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return "", err
	}
	for _, p := range []string{sb.Replicas[0].Datadir, sb.Primary.Datadir, sb.SSH.KeyFile, sb.SSH.KnownHosts, sb.SSH.User} {
		if !safePath.MatchString(p) {
			return "", fmt.Errorf("%q cannot go into the loop's shell configuration", p)
		}
	}
	files := map[string]string{
		"replica1.cnf": fmt.Sprintf(clientCnf, sb.Replicas[0].Port, sb.User, sb.Password, "[mysql]\ninit-command=SET sql_log_bin=0\n"),
		"primary.cnf":  fmt.Sprintf(clientCnf, sb.Primary.Port, sb.User, sb.Password, ""),
		fmt.Sprintf("run%d.conf", run): fmt.Sprintf(seedConf, dir, sb.Replicas[0].Datadir, sb.SSH.User, sb.Primary.Datadir,
			sb.SSH.Port, sb.SSH.KeyFile, sb.SSH.KnownHosts, logs),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return "", err
		}
	}
	return filepath.Join(dir, fmt.Sprintf("run%d.conf", run)), nil
}

func (b *bench) scenarioSeed(ctx context.Context) (*scenario, error) {
	n := b.s.SeedTopics
	inst := b.s.SeedInstances
	sc := &scenario{Key: "seed_1x4", Title: fmt.Sprintf("original loop, 1 replica x %d", inst), Kind: "seed",
		Procedure: procSmall, Replicas: 1, Instances: inst, Concurrency: inst, Topics: n, want: b.s.Runs}
	if err := b.checkClean(ctx); err != nil {
		return sc, err
	}
	defer sc.finish()
	for i := 1; i <= b.s.Runs; i++ {
		conf, err := b.writeSeedFiles(i)
		if err != nil {
			return sc, err
		}
		if err := b.clearCalls(ctx); err != nil {
			return sc, err
		}
		// The original requests by setting the flag; the date a second ago
		// so every topic is due at once.
		if _, err := b.primary.ExecContext(ctx, `UPDATE app.TopicFilter SET influencerRecalcReqd = 2, influencerRunning = 0,
 influencerRecalcDate = NOW() - INTERVAL 1 SECOND WHERE topicFilterId BETWEEN 1 AND ?`, n); err != nil {
			return sc, err
		}
		// The replicas must have the request before the loop reads it from
		// the primary and checks its replica's lag, as in production.
		if err := b.waitReplicas(ctx, time.Minute); err != nil {
			return sc, err
		}
		r, err := b.seedRound(ctx, conf, i, n, inst)
		if r != nil {
			sc.Runs = append(sc.Runs, r)
			b.info("run %d/%d: %6.2f s  %6.1f topics/s  computed twice %d (extra calls %d)  not done %d  loop errors %d",
				i, b.s.Runs, r.Seconds, float64(n)/r.Seconds, r.Duplicates, r.ExtraCalls, r.NotDone, r.LoopErrors)
		}
		// The loop can leave topics marked running forever (a failed
		// procedure); clear them so nothing leaks into the next run.
		if rerr := b.resetTopics(ctx); rerr != nil {
			return sc, errors.Join(err, rerr)
		}
		if err != nil {
			return sc, err
		}
	}
	sc.finish()
	var dups, notDone int
	for _, r := range sc.Runs {
		dups += r.Duplicates
		notDone += r.NotDone
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("computed twice: %d topics over %d runs (expected: the defect)", dups, len(sc.Runs)))
	if notDone > 0 {
		sc.Notes = append(sc.Notes, fmt.Sprintf("%d topics left undone", notDone))
	}
	return sc, nil
}

func (b *bench) seedRound(ctx context.Context, conf string, runNo, n, inst int) (*runResult, error) {
	// Bound: far above the loop's ~5 topics/s.
	limit := time.Minute + time.Duration(n)*time.Second
	var procs []*child.Process
	t0 := time.Now()
	for k := 1; k <= inst; k++ {
		c, err := b.kids.Start(fmt.Sprintf("seed-worker.sh instance %d", k),
			filepath.Join(b.dir, "seed", fmt.Sprintf("run%d-instance%d.out", runNo, k)), true, b.seed, conf, itoa(k))
		if err != nil {
			if serr := child.StopAll(procs, seedStopGrace); serr != nil {
				return nil, errors.Join(err, serr)
			}
			return nil, err
		}
		procs = append(procs, c)
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for _, c := range procs {
		select {
		case <-c.Done():
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), child.StopAll(procs, seedStopGrace))
		case <-deadline.C:
			return nil, errors.Join(fmt.Errorf("the original loop did not finish %d topics within %v", n, limit), child.StopAll(procs, seedStopGrace))
		}
	}
	elapsed := time.Since(t0)
	b.kids.Forget()
	var errs []error
	for _, c := range procs {
		if c.Err() != nil {
			errs = append(errs, fmt.Errorf("%s: %v (log %s)%s", c.Name, c.Err(), c.LogPath, child.LogTail(c.LogPath)))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	r := &runResult{Seconds: elapsed.Seconds()}
	var err error
	if r.callCount, err = b.countCalls(ctx, 1, n); err != nil {
		return nil, err
	}
	if r.NotDone, err = b.notDone(ctx, 1, n); err != nil {
		return nil, err
	}
	for _, c := range procs {
		out, _ := os.ReadFile(c.LogPath)
		r.LoopErrors += strings.Count(string(out), "proc failed") + strings.Count(string(out), "copy failed")
	}
	return r, nil
}

// ---- 3. the ceiling ----

// scenarioCeiling calls the procedure alone, with the head-to-head
// concurrency, each goroutine on its own replica connection with
// sql_log_bin=0, and drops the result tables after each call (the worker
// drops them after publishing). Same topics, same scope, same call (a
// prepared CALL with two arguments, as procs.Runner makes it).
func (b *bench) scenarioCeiling(ctx context.Context) (*scenario, error) {
	n, conc := b.s.Topics, headToHead.Instances
	sc := &scenario{Key: "ceiling_1x4", Title: fmt.Sprintf("procedure alone, 1 replica x %d", conc), Kind: "ceiling",
		Procedure: procSmall, Replicas: 1, Instances: conc, Concurrency: conc, Topics: n, want: b.s.Runs}
	defer sc.finish()
	for i := 1; i <= b.s.Runs; i++ {
		if err := b.clearCalls(ctx); err != nil {
			return sc, err
		}
		secs, err := b.ceilingRound(ctx, n, conc)
		if err != nil {
			return sc, err
		}
		r := &runResult{Seconds: secs}
		if r.callCount, err = b.countCalls(ctx, 1, n); err != nil {
			return sc, err
		}
		if r.Missing+r.Duplicates+r.Unexpected > 0 {
			return sc, fmt.Errorf("ceiling run %d: %+v: every topic should be called once", i, r.callCount)
		}
		sc.Runs = append(sc.Runs, r)
		b.info("run %d/%d: %6.2f s  %6.1f topics/s  (%.2f ms per call per connection)", i, b.s.Runs, secs, float64(n)/secs, secs*1000*float64(conc)/float64(n))
	}
	return sc, nil
}

func (b *bench) ceilingRound(ctx context.Context, n, conc int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute+time.Duration(n)*100*time.Millisecond)
	defer cancel()
	conns := make([]*sql.Conn, conc)
	for i := range conns {
		c, err := b.replicas[0].Conn(ctx)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		// Connections are opened before the clock starts.
		if err := c.PingContext(ctx); err != nil {
			return 0, err
		}
		conns[i] = c
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, conc)
	t0 := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id := next.Add(1)
				if id > int64(n) || ctx.Err() != nil {
					return
				}
				if err := callProc(ctx, c, id); err != nil {
					errs[i] = err
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(t0).Seconds()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	return secs, ctx.Err()
}

// callProc calls influencer.proc(id, 2), reads every result set, checks
// the SUMMARY marker in the last one, and drops the result tables.
func callProc(ctx context.Context, c *sql.Conn, id int64) error {
	rows, err := c.QueryContext(ctx, "CALL /* nqbench */ influencer.proc(?, ?)", id, queue.ScopeFull)
	if err != nil {
		return fmt.Errorf("call influencer.proc(%d): %w", id, err)
	}
	last := ""
	for {
		cols, err := rows.Columns()
		if err != nil {
			rows.Close()
			return err
		}
		vals := make([]any, len(cols))
		for i := range vals {
			vals[i] = new(sql.RawBytes)
		}
		first := ""
		for rows.Next() {
			if err := rows.Scan(vals...); err != nil {
				rows.Close()
				return err
			}
			if first == "" && len(vals) > 0 {
				first = string(*vals[0].(*sql.RawBytes))
			}
		}
		if len(cols) > 0 {
			last = first
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		rows.Close()
		return fmt.Errorf("call influencer.proc(%d): %w", id, err)
	}
	rows.Close()
	if last != "SUMMARY" {
		return fmt.Errorf("call influencer.proc(%d): no SUMMARY in the last result set (got %q)", id, last)
	}
	_, err = c.ExecContext(ctx, fmt.Sprintf("DROP TABLE influencer.Dynamics_%d, influencer.Post_%d", id, id))
	return err
}

// ---- 2, 4, 5: nonqueue ----

// workers starts `nonqueue work` on the first topo.Replicas replicas and
// waits until every instance has looked for work once (registry state
// idle), so the clock starts with a ready pool as in production.
func (b *bench) startWorkers(ctx context.Context, key string, topo topology, proc string, noSync bool) ([]*child.Process, error) {
	return b.startWorkersOf(ctx, key, topo, b.nonqueue, func(k int) string { return b.configPath(k, proc, noSync) })
}

// startWorkersOf is startWorkers with a given nonqueue binary and the
// configuration of replica k (0-based).
func (b *bench) startWorkersOf(ctx context.Context, key string, topo topology, bin string, config func(k int) string) ([]*child.Process, error) {
	var ws []*child.Process
	for k := range topo.Replicas {
		c, err := b.kids.Start(fmt.Sprintf("nonqueue work (%s, replica%d)", key, k+1),
			filepath.Join(b.dir, "bench", fmt.Sprintf("worker-%s-replica%d.log", key, k+1)), false,
			bin, "work", "--config", config(k), "--instances", itoa(topo.Instances))
		if err != nil {
			return ws, err
		}
		ws = append(ws, c)
	}
	return ws, b.waitWorkersIdle(ctx, ws, topo.Instances, workerReadyTimeout, 50*time.Millisecond)
}

// waitWorkersIdle waits until each worker process has registered
// instances idle instances, failing early when one exits.
func (b *bench) waitWorkersIdle(ctx context.Context, ws []*child.Process, instances int, timeout, poll time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, w := range ws {
		for {
			var idle int
			err := b.primary.QueryRowContext(ctx, "SELECT COUNT(*) FROM nonqueue.instance WHERE pid = ? AND state = 'idle'", w.Pid()).Scan(&idle)
			if err != nil {
				return fmt.Errorf("read the instance registry: %w", err)
			}
			if idle >= instances {
				break
			}
			if w.Exited() {
				return fmt.Errorf("%s exited at start: %v%s", w.Name, w.Err(), child.LogTail(w.LogPath))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: %d of %d instances ready after %v (log %s)", w.Name, idle, instances, timeout, w.LogPath)
			}
			if err := sleepCtx(ctx, poll); err != nil {
				return err
			}
		}
	}
	return nil
}

// stopWorkers reads each worker's peak RSS, then stops it (SIGTERM, then
// SIGKILL after the grace).
func (b *bench) stopWorkers(ws []*child.Process, sc *scenario) error {
	for _, w := range ws {
		if w.Exited() {
			continue
		}
		if mb, err := vmHWM(w.Pid()); err == nil {
			sc.MaxRSSMB = max(sc.MaxRSSMB, mb)
		}
	}
	err := child.StopAll(ws, workerStopGrace)
	b.kids.Forget()
	return err
}

// nonqueueScenario runs Runs rounds of topics lo..hi on one pool of
// workers, kept running across the rounds and stopped at the end.
func (b *bench) nonqueueScenario(ctx context.Context, sc *scenario, topo topology, proc string, lo, hi int,
	each func(context.Context, *runResult) error) (err error) {
	defer sc.finish()
	if err := b.checkClean(ctx); err != nil {
		return err
	}
	ws, err := b.startWorkers(ctx, sc.Key, topo, proc, sc.NoSync)
	defer func() {
		if serr := b.stopWorkers(ws, sc); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	if err != nil {
		return err
	}
	for i := 1; i <= sc.want; i++ {
		r, err := b.nqRound(ctx, ws, lo, hi, topo, sc.budget)
		if r != nil {
			sc.Runs = append(sc.Runs, r)
		}
		if err != nil {
			return fmt.Errorf("run %d: %w", i, err)
		}
		n := hi - lo + 1
		b.info("run %d/%d: %6.2f s  %7.1f topics/s  computed twice %d  outcomes %v  avg ms: claim %.2f gtid %.2f proc %.2f transfer %.2f publish %.2f",
			i, sc.want, r.Seconds, float64(n)/r.Seconds, r.Duplicates, r.Outcomes,
			r.AvgMS["claim"], r.AvgMS["lag_wait"], r.AvgMS["proc"], r.AvgMS["transfer"], r.AvgMS["publish"])
		b.info("        CPU ms per topic: %s", formatCPU(r.CPUMSPerTopic))
		if r.Duplicates > 0 || r.Unexpected > 0 {
			sc.Notes = append(sc.Notes, fmt.Sprintf("FAIL run %d: %d topics computed twice", i, r.Duplicates))
		}
		if each != nil {
			if err := each(ctx, r); err != nil {
				return fmt.Errorf("run %d: %w", i, err)
			}
		}
	}
	return nil
}

// nqRound requests topics lo..hi (scope full) and waits until every one
// is done. Its time runs from the request to the last done run's
// finished_at in the run history, both read on the primary's clock.
func (b *bench) nqRound(ctx context.Context, ws []*child.Process, lo, hi int, topo topology, budget time.Duration) (*runResult, error) {
	n := hi - lo + 1
	limit := time.Minute + time.Duration(n)*budget/time.Duration(max(1, topo.total()))
	if err := b.clearCalls(ctx); err != nil {
		return nil, err
	}
	ids := make([]int64, 0, n)
	for id := lo; id <= hi; id++ {
		ids = append(ids, int64(id))
	}
	var lastRun int64
	if err := b.primary.QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0) FROM nonqueue.run").Scan(&lastRun); err != nil {
		return nil, err
	}
	var reqAt string
	if err := b.primary.QueryRowContext(ctx, "SELECT NOW(6)").Scan(&reqAt); err != nil {
		return nil, err
	}
	cpu0, err := b.sampleCPU(ws)
	if err != nil {
		return nil, fmt.Errorf("read CPU times: %w", err)
	}
	t0 := time.Now()
	res, err := b.q.Request(ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull})
	if err != nil {
		return nil, err
	}
	if res.Requested != n {
		return nil, fmt.Errorf("requested %d topics, the queue marked %d", n, res.Requested)
	}
	deadline := t0.Add(limit)
	lastCheck := time.Now()
	for {
		var done int
		if err := b.primary.QueryRowContext(ctx, `SELECT COUNT(DISTINCT topic_id) FROM nonqueue.run WHERE id > ? AND outcome = 'done'`, lastRun).Scan(&done); err != nil {
			return nil, err
		}
		if done >= n {
			break
		}
		if time.Since(lastCheck) > time.Second {
			lastCheck = time.Now()
			for _, w := range ws {
				if w.Exited() {
					return nil, fmt.Errorf("%s exited during the run: %v%s", w.Name, w.Err(), child.LogTail(w.LogPath))
				}
			}
			var parked int
			if err := b.primary.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.TopicFilter WHERE topicFilterId BETWEEN ? AND ? AND parked_at IS NOT NULL", lo, hi).Scan(&parked); err != nil {
				return nil, err
			}
			if parked > 0 {
				return nil, fmt.Errorf("%d topics parked after repeated failures (see the run history's error column and %s)", parked, filepath.Join(b.dir, "bench"))
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d of %d topics done after %v", done, n, limit)
		}
		if err := sleepCtx(ctx, cmp.Or(b.roundPoll, pollInterval)); err != nil {
			return nil, err
		}
	}
	r := &runResult{PollSeconds: time.Since(t0).Seconds()}
	cpu1, err := b.sampleCPU(ws)
	if err != nil {
		return nil, fmt.Errorf("read CPU times: %w", err)
	}
	r.CPUMSPerTopic = cpuPerTopic(cpu0, cpu1, n)
	var us sql.NullInt64
	if err := b.primary.QueryRowContext(ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, ?, MAX(finished_at)) FROM nonqueue.run WHERE id > ? AND outcome = 'done'`,
		reqAt, lastRun).Scan(&us); err != nil {
		return nil, err
	}
	if !us.Valid || us.Int64 <= 0 {
		return nil, fmt.Errorf("no usable finished_at in the run history (%v)", us)
	}
	r.Seconds = float64(us.Int64) / 1e6
	if r.NotDone, err = b.notDone(ctx, lo, hi); err != nil {
		return nil, err
	}
	if r.NotDone > 0 {
		return r, fmt.Errorf("%d topics still requested or running after their runs were recorded done", r.NotDone)
	}
	if r.callCount, err = b.countCalls(ctx, lo, hi); err != nil {
		return nil, err
	}
	if err := b.runHistory(ctx, lastRun, r); err != nil {
		return nil, err
	}
	return r, nil
}

// runHistory reads the outcomes and mean phase times of the runs after
// lastRun.
func (b *bench) runHistory(ctx context.Context, lastRun int64, r *runResult) error {
	rows, err := b.primary.QueryContext(ctx, "SELECT outcome, COUNT(*) FROM nonqueue.run WHERE id > ? GROUP BY outcome", lastRun)
	if err != nil {
		return err
	}
	r.Outcomes = map[string]int{}
	for rows.Next() {
		var o string
		var c int
		if err := rows.Scan(&o, &c); err != nil {
			rows.Close()
			return err
		}
		r.Outcomes[o] = c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var claim, lag, proc, tr, pub, total float64
	var bytes int64
	err = b.primary.QueryRowContext(ctx, `SELECT AVG(claim_us), AVG(lag_wait_us), AVG(proc_us), AVG(transfer_us), AVG(publish_us),
 AVG(TIMESTAMPDIFF(MICROSECOND, started_at, finished_at)), SUM(bytes_shipped)
 FROM nonqueue.run WHERE id > ? AND outcome = 'done'`, lastRun).Scan(&claim, &lag, &proc, &tr, &pub, &total, &bytes)
	if err != nil {
		return fmt.Errorf("read the run history: %w", err)
	}
	r.AvgMS = map[string]float64{"claim": claim / 1000, "lag_wait": lag / 1000, "proc": proc / 1000, "transfer": tr / 1000,
		"publish": pub / 1000, "run_total": total / 1000}
	r.Bytes = bytes
	return nil
}

func (b *bench) scenarioSweep(ctx context.Context, topo topology) (*scenario, error) {
	n := b.s.Topics
	sc := &scenario{Key: "nonqueue_" + topo.String(), Title: fmt.Sprintf("nonqueue, %d replica(s) x %d", topo.Replicas, topo.Instances),
		Kind: "nonqueue", Procedure: procSmall, Replicas: topo.Replicas, Instances: topo.Instances, Concurrency: topo.total(), Topics: n,
		want: b.s.SweepRuns, budget: 250 * time.Millisecond}
	if topo == headToHead {
		sc.want = b.s.Runs
	}
	err := b.nonqueueScenario(ctx, sc, topo, procSmall, 1, n, nil)
	b.noteOutcomes(sc)
	return sc, err
}

func (b *bench) scenarioScale(ctx context.Context) (*scenario, error) {
	n, topo := b.s.ScaleTopics, b.s.ScaleTopo
	sc := &scenario{Key: "scale_" + topo.String(), Title: fmt.Sprintf("nonqueue, 1 s procedure, %d x %d", topo.Replicas, topo.Instances),
		Kind: "scale", Procedure: procSlow, Replicas: topo.Replicas, Instances: topo.Instances, Concurrency: topo.total(), Topics: n,
		want: b.s.Runs, budget: 3 * time.Second}
	err := b.nonqueueScenario(ctx, sc, topo, procSlow, 1, n, nil)
	if sc.MedianS > 0 {
		var proc []float64
		for _, r := range sc.Runs {
			proc = append(proc, r.AvgMS["proc"])
		}
		sc.Notes = append(sc.Notes, fmt.Sprintf("efficiency %.1f%% of %d topics/s (the procedure itself took %.0f ms on average)",
			100*sc.TopicsPerS/float64(topo.total()), topo.total(), median(proc)))
	}
	b.noteOutcomes(sc)
	return sc, err
}

func (b *bench) noteOutcomes(sc *scenario) {
	other := map[string]int{}
	for _, r := range sc.Runs {
		for o, c := range r.Outcomes {
			if o != "done" {
				other[o] += c
			}
		}
	}
	if len(other) > 0 {
		sc.Notes = append(sc.Notes, fmt.Sprintf("runs not done: %v", other))
	}
}

// ---- 5. big result ----

// buildBigSource makes influencer.BigSrc on replica 1 (sql_log_bin=0): a
// MyISAM table of about BigMB, which influencer.proc_big copies into the
// topic's two result tables.
func (b *bench) buildBigSource(ctx context.Context) (int64, error) {
	db := b.replicas[0]
	target := int64(b.s.BigMB) << 20
	for _, st := range []string{
		"DROP TABLE IF EXISTS influencer.BigSrc",
		`CREATE TABLE influencer.BigSrc (id BIGINT NOT NULL PRIMARY KEY, topic INT NOT NULL, score DOUBLE NOT NULL,
 pad CHAR(240) NOT NULL) ENGINE=MyISAM DEFAULT CHARSET=latin1`,
		"INSERT INTO influencer.BigSrc SELECT seq, seq % 1000, seq / 7, LEFT(REPEAT(MD5(seq), 8), 240) FROM influencer.seq_1_to_10000",
	} {
		if _, err := db.ExecContext(ctx, st); err != nil {
			return 0, fmt.Errorf("build the big source table: %w", err)
		}
	}
	size := func() (int64, int64, error) {
		var bytes, rows int64
		err := db.QueryRowContext(ctx, `SELECT data_length + index_length, table_rows FROM information_schema.tables
 WHERE table_schema = 'influencer' AND table_name = 'BigSrc'`).Scan(&bytes, &rows)
		return bytes, rows, err
	}
	bytes, rows, err := size()
	if err != nil {
		return 0, err
	}
	want := target * rows / max(bytes, 1)
	const chunk = 500000
	for i := 0; rows < want && i < 200; i++ {
		hi := min(rows+chunk, want)
		if _, err := db.ExecContext(ctx, fmt.Sprintf(`INSERT INTO influencer.BigSrc SELECT seq, seq %% 1000, seq / 7, LEFT(REPEAT(MD5(seq), 8), 240)
 FROM influencer.seq_%d_to_%d`, rows+1, hi)); err != nil {
			return 0, fmt.Errorf("build the big source table: %w", err)
		}
		rows = hi
	}
	if _, err := db.ExecContext(ctx, "FLUSH TABLES influencer.BigSrc"); err != nil {
		return 0, err
	}
	bytes, _, err = size()
	return bytes, err
}

func (b *bench) scenarioBig(ctx context.Context) (*scenario, error) {
	topo := topology{1, 1}
	sc := &scenario{Key: "big_result", Title: fmt.Sprintf("nonqueue, one %d MB result, 1 x 1", b.s.BigMB), Kind: "big",
		Procedure: procBig, Replicas: 1, Instances: 1, Concurrency: 1, Topics: 1, want: b.s.Runs, budget: 5 * time.Minute}
	if err := b.ensureBigSource(ctx); err != nil {
		return sc, err
	}
	err := b.nonqueueScenario(ctx, sc, topo, procBig, bigID, bigID, b.bigRound)
	if sc.TransferPublishS > 0 && sc.ScpS > 0 {
		sc.Notes = append(sc.Notes, fmt.Sprintf("transfer+publish %.2f s, scp %.2f s (scp/nonqueue %.2f), worker peak RSS %.1f MB",
			sc.TransferPublishS, sc.ScpS, sc.ScpS/sc.TransferPublishS, sc.MaxRSSMB))
	}
	if b.only == nil || b.only["sync"] {
		return sc, err // scenario 7 ships it again, then drops it
	}
	return sc, errors.Join(err, b.dropBigSource(ctx))
}

// ensureBigSource builds influencer.BigSrc unless it is there already.
func (b *bench) ensureBigSource(ctx context.Context) error {
	if b.bigBuilt {
		return nil
	}
	t0 := time.Now()
	size, err := b.buildBigSource(ctx)
	if err != nil {
		return err
	}
	b.bigBuilt = true
	b.info("built influencer.BigSrc on replica1: %.0f MB in %.1f s", float64(size)/(1<<20), time.Since(t0).Seconds())
	return nil
}

func (b *bench) dropBigSource(ctx context.Context) error {
	if _, err := b.replicas[0].ExecContext(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS influencer.BigSrc"); err != nil {
		return err
	}
	b.bigBuilt = false
	return nil
}

// ---- 7. the cost of fsync ----

// scenarioNoSyncSweep is the head-to-head topology again with the workers'
// [results] sync = false: side by side with scenario 2's 1 x 4 (sync on,
// the default), it gives what syncing every shipped file costs a topic.
func (b *bench) scenarioNoSyncSweep(ctx context.Context) (*scenario, error) {
	n, topo := b.s.Topics, headToHead
	sc := &scenario{Key: "nonqueue_" + topo.String() + "_nosync", Title: fmt.Sprintf("nonqueue, %d replica(s) x %d, sync = false", topo.Replicas, topo.Instances),
		Kind: "nonqueue", Procedure: procSmall, Replicas: topo.Replicas, Instances: topo.Instances, Concurrency: topo.total(), Topics: n,
		want: b.s.Runs, budget: 250 * time.Millisecond, NoSync: true}
	err := b.nonqueueScenario(ctx, sc, topo, procSmall, 1, n, nil)
	b.noteOutcomes(sc)
	if on := b.find("nonqueue_" + topo.String()); on != nil && len(on.Runs) > 0 && len(sc.Runs) > 0 {
		tOn, tOff := medianAvg(on, "transfer"), medianAvg(sc, "transfer")
		sc.Notes = append(sc.Notes, fmt.Sprintf("sync on: %.1f topics/s, transfer %.2f ms/topic; off: %.1f topics/s, transfer %.2f ms/topic",
			on.TopicsPerS, tOn, sc.TopicsPerS, tOff))
	}
	return sc, err
}

// scenarioNoSyncBig is scenario 5 again with [results] sync = false.
func (b *bench) scenarioNoSyncBig(ctx context.Context) (*scenario, error) {
	topo := topology{1, 1}
	sc := &scenario{Key: "big_result_nosync", Title: fmt.Sprintf("nonqueue, one %d MB result, 1 x 1, sync = false", b.s.BigMB), Kind: "big",
		Procedure: procBig, Replicas: 1, Instances: 1, Concurrency: 1, Topics: 1, want: b.s.Runs, budget: 5 * time.Minute, NoSync: true}
	if err := b.ensureBigSource(ctx); err != nil {
		return sc, err
	}
	err := b.nonqueueScenario(ctx, sc, topo, procBig, bigID, bigID, b.bigRound)
	if on := b.find("big_result"); on != nil && on.TransferPublishS > 0 && sc.TransferPublishS > 0 {
		sc.Notes = append(sc.Notes, fmt.Sprintf("transfer+publish: sync on %.2f s (transfer %.2f), off %.2f s (transfer %.2f)",
			on.TransferPublishS, medianAvg(on, "transfer")/1000, sc.TransferPublishS, medianAvg(sc, "transfer")/1000))
	}
	return sc, errors.Join(err, b.dropBigSource(ctx))
}

// medianAvg is the median over a scenario's runs of one phase's mean, in
// ms (runResult.AvgMS).
func medianAvg(sc *scenario, phase string) float64 {
	var v []float64
	for _, r := range sc.Runs {
		if x, ok := r.AvgMS[phase]; ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return 0
	}
	return median(v)
}

// bigRound takes transfer + publish of the run just done from the run
// history, then copies the same files (the published tables on the
// primary) with plain scp over the same sshd with the same key.
func (b *bench) bigRound(ctx context.Context, r *runResult) error {
	var tr, pub, bytes int64
	if err := b.primary.QueryRowContext(ctx, `SELECT transfer_us, publish_us, bytes_shipped FROM nonqueue.run
 WHERE topic_id = ? AND outcome = 'done' ORDER BY id DESC LIMIT 1`, bigID).Scan(&tr, &pub, &bytes); err != nil {
		return err
	}
	r.TransferPublishS = float64(tr+pub) / 1e6
	r.Bytes = bytes
	if _, err := b.primaryNoBin.ExecContext(ctx, fmt.Sprintf("FLUSH TABLES influencer.Dynamics_%d, influencer.Post_%d", bigID, bigID)); err != nil {
		return err
	}
	var files []string
	for _, t := range []string{"Dynamics", "Post"} {
		m, err := filepath.Glob(filepath.Join(b.sb.Primary.Datadir, "influencer", fmt.Sprintf("%s_%d.*", t, bigID)))
		if err != nil {
			return err
		}
		files = append(files, m...)
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		r.ScpBytes += st.Size()
	}
	target := filepath.Join(b.dir, "scp-target")
	if err := os.MkdirAll(target, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(target)
	ssh := b.sb.SSH
	args := []string{"-B", "-q", "-P", itoa(ssh.Port), "-i", ssh.KeyFile, "-o", "UserKnownHostsFile=" + ssh.KnownHosts,
		"-o", "StrictHostKeyChecking=yes"}
	args = append(args, files...)
	args = append(args, fmt.Sprintf("%s@%s:%s/", ssh.User, ssh.Host, target))
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	out, err := exec.CommandContext(cctx, "scp", args...).CombinedOutput()
	r.ScpS = time.Since(t0).Seconds()
	if err != nil {
		return fmt.Errorf("scp: %w: %s", err, strings.TrimSpace(string(out)))
	}
	b.info("         %d files, %.0f MB: nonqueue transfer+publish %.2f s (transfer %.2f, publish %.2f), scp %.2f s",
		len(files), float64(r.ScpBytes)/(1<<20), r.TransferPublishS, float64(tr)/1e6, float64(pub)/1e6, r.ScpS)
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
