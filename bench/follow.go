package main

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/template"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/prometheus/procfs"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
)

// ---- 10. following the binlog (nonqueue follow) ----
//
// A real `nonqueue follow` process reads replica 1's binary log (its
// default source) and requests the topics of the rows written to a source
// table on the primary. Its topic table is a native one of its own
// (nqfollow.topic, due DATETIME(6)), not the mapped app.TopicFilter, whose
// due date is whole seconds: the delay is read from the request's due date
// to the microsecond. No worker runs meanwhile.

// followSchema holds the scenario's topic table, the follower's position
// (its meta schema) and the source table nqfollow.change.
const (
	followSchema = "nqfollow"
	followName   = "bench"
	// followTputTopics: the throughput rows point at topics 1..this; the
	// delay runs use topics of their own above it.
	followTputTopics = 1000
	followWriters    = 32
	followPoll       = 20 * time.Millisecond
)

// followSettings are the sizes of scenario 10.
type followSettings struct {
	// SingleRows: rows written one per transaction (a GTID, a table map,
	// a row and a commit event each), BulkRows in BulkPerTx-row INSERTs.
	SingleRows int `json:"single_rows"`
	BulkRows   int `json:"bulk_rows"`
	BulkPerTx  int `json:"bulk_rows_per_tx"`
	// DelayRate changes a second for DelayFor, each a topic of its own,
	// with after = "0s".
	DelayRate float64       `json:"delay_changes_per_s"`
	DelayFor  time.Duration `json:"delay_for_ns"`
	// Runs of each part; 0: the harness's runs per scenario.
	Runs int `json:"runs"`
}

func defaultFollowSettings(quick bool) followSettings {
	if quick {
		return followSettings{SingleRows: 20_000, BulkRows: 50_000, BulkPerTx: 1000, DelayRate: 2000, DelayFor: 5 * time.Second, Runs: 1}
	}
	return followSettings{SingleRows: 100_000, BulkRows: 200_000, BulkPerTx: 1000, DelayRate: 2000, DelayFor: 20 * time.Second}
}

// followRun is what one follower round adds to a runResult.
type followRun struct {
	// Events: row changes the follower read (its events counter on the
	// primary); Seconds of the runResult is the span from its becoming
	// active to the commit that saved the target position (throughput), or
	// the writers' time (delay).
	Events     uint64  `json:"events"`
	RowsPerTx  int     `json:"rows_per_tx,omitempty"`
	EventsPerS float64 `json:"events_per_s,omitempty"`
	// WriteS: the writers' time for the rows (throughput rounds).
	WriteS float64 `json:"write_s,omitempty"`
	// CPUMS: the follower process's user + system CPU over the round (its
	// whole life, start-up included, for throughput rounds); per 1,000
	// events.
	CPUMS        float64 `json:"cpu_ms"`
	CPUMSPer1000 float64 `json:"cpu_ms_per_1000_events"`
	// Delay rounds: the writers' rate and commit -> request percentiles.
	ChangesPerS float64            `json:"changes_per_s,omitempty"`
	DelayMS     map[string]float64 `json:"delay_ms,omitempty"`
	// ReplicationMS: of the delay, commit on the primary -> applied on
	// replica 1 (the follower's source), polled every replicaPoll.
	ReplicationMS map[string]float64 `json:"replication_ms,omitempty"`
	// FollowerMS: the rest, applied on replica 1 -> request visible on the
	// primary (the follower's own part: its source's binlog, its reading,
	// its commit).
	FollowerMS map[string]float64 `json:"follower_ms,omitempty"`
	// Requested: topics of the round requested (all of them, or an error).
	Requested int `json:"requested"`
}

// followState is the scenario's setup, done once for its three parts.
type followState struct {
	config string
	next   int // next free topic id for a delay run
	// writers: the pool of the rows' writers on the primary, one
	// connection per writer (the harness's own pool has 16); closed at
	// the end of the delay part, the last.
	writers *sql.DB
	proc    *child.Process
	starts  int
}

var followConfigTmpl = template.Must(template.New("follow").Parse(`# nonqueue bench: the follower of scenario 10, written by nqbench.
` + sandbox.ConnectionsTOML + `
[topics]
schema = "` + followSchema + `"
meta_schema = "` + followSchema + `"

[follower]
name = "` + followName + `"

[[follow]]
table = "` + followSchema + `.change"
topic_column = "topic"
scope = "full"
after = "0s"
`))

// followSetup creates the scenario's schema, topics and configuration,
// and runs the follower once so it has a saved position.
func (b *bench) followSetup(ctx context.Context) error {
	if b.follow != nil {
		return nil
	}
	fs := b.s.Follow
	topics := followTputTopics + b.followRuns()*int(fs.DelayRate*fs.DelayFor.Seconds()) + 1000
	q, err := queue.Open(ctx, b.sb.MySQLConfig(b.sb.Primary), queue.Config{Schema: followSchema, MetaSchema: followSchema})
	if err != nil {
		return err
	}
	defer q.Close()
	if _, err := b.primary.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+followSchema); err != nil {
		return err
	}
	if err := q.ApplySchema(ctx); err != nil {
		return fmt.Errorf("apply nonqueue's schema to %s: %w", followSchema, err)
	}
	for _, st := range []string{
		"CREATE TABLE IF NOT EXISTS " + followSchema + ".change (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NOT NULL, created DATETIME(6) NOT NULL) ENGINE=InnoDB",
		fmt.Sprintf("INSERT IGNORE INTO %s.topic (id) SELECT seq FROM app.seq_1_to_%d", followSchema, topics),
	} {
		if _, err := b.primary.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("follow setup: %w", err)
		}
	}
	if err := b.waitReplicas(ctx, time.Minute); err != nil {
		return err
	}
	path := filepath.Join(b.dir, "bench", "follow.toml")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = followConfigTmpl.Execute(f, map[string]any{"SB": b.sb, "Replica": b.sb.Replicas[0]})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	writers, err := openDB(b.sb.MySQLConfig(b.sb.Primary), nil, false)
	if err != nil {
		return err
	}
	writers.SetMaxOpenConns(followWriters)
	writers.SetMaxIdleConns(followWriters)
	b.follow = &followState{config: path, next: followTputTopics + 1, writers: writers}
	b.info("nonqueue follow --config %s: replica1's binlog, table %s.change, topics %s.topic 1..%d, after 0s", path, followSchema, followSchema, topics)
	// A first run saves the source's position: rows written from then on
	// are followed, also while no follower runs.
	if err := b.startFollower(ctx); err != nil {
		return err
	}
	if _, err := b.waitFollowed(ctx, "", time.Minute); err != nil {
		return err
	}
	return b.stopFollower()
}

// followRuns is the runs of each part of scenario 10: quick mode's own
// (1), else the harness's (-runs, default 3).
func (b *bench) followRuns() int {
	if b.s.Follow.Runs > 0 {
		return b.s.Follow.Runs
	}
	return b.s.Runs
}

// followRow is the follower's row on the primary.
type followRow struct {
	pos         string
	events      uint64
	pid         int
	activeSince sql.NullString
	updatedAt   string
}

func (b *bench) readFollowRow(ctx context.Context) (followRow, error) {
	var r followRow
	err := b.primary.QueryRowContext(ctx, "SELECT gtid_pos, events, pid, active_since, updated_at FROM "+followSchema+".follow WHERE name = ?", followName).
		Scan(&r.pos, &r.events, &r.pid, &r.activeSince, &r.updatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return followRow{}, nil
	}
	return r, err
}

// startFollower starts `nonqueue follow` (stopped by stopFollower, or by
// the harness's teardown).
func (b *bench) startFollower(ctx context.Context) error {
	if p := b.follow.proc; p != nil && !p.Exited() {
		return errors.New("a follower is already running")
	}
	b.follow.starts++
	p, err := b.kids.Start("nonqueue follow", filepath.Join(b.dir, "bench", fmt.Sprintf("follow-%d.log", b.follow.starts)), false,
		b.nonqueue, "follow", "--config", b.follow.config)
	if err != nil {
		return err
	}
	b.follow.proc = p
	return ctx.Err()
}

func (b *bench) stopFollower() error {
	p := b.follow.proc
	if p == nil {
		return nil
	}
	b.follow.proc = nil
	err := p.Stop(workerStopGrace)
	b.kids.Forget()
	return err
}

// waitFollowed waits until the running follower is active and has saved a
// position at or past target ("": any position) and returns its row.
func (b *bench) waitFollowed(ctx context.Context, target string, limit time.Duration) (followRow, error) {
	p := b.follow.proc
	deadline := time.Now().Add(limit)
	for {
		r, err := b.readFollowRow(ctx)
		if err != nil {
			return r, fmt.Errorf("read the follower's row: %w", err)
		}
		if r.pid == p.Pid() && r.activeSince.Valid && r.pos != "" && (target == "" || gtidReached(r.pos, target)) {
			return r, nil
		}
		if p.Exited() {
			return r, fmt.Errorf("%s exited: %v%s", p.Name, p.Err(), child.LogTail(p.LogPath))
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("the follower did not reach %q within %v (saved %q; log %s)", target, limit, r.pos, p.LogPath)
		}
		if err := sleepCtx(ctx, followPoll); err != nil {
			return r, err
		}
	}
}

// gtidReached: position got has reached want in every domain of want.
func gtidReached(got, want string) bool {
	g, err := gomysql.ParseMariadbGTIDSet(got)
	if err != nil {
		return false
	}
	w, err := gomysql.ParseMariadbGTIDSet(want)
	if err != nil {
		return false
	}
	gs := g.(*gomysql.MariadbGTIDSet).Sets
	for d, wg := range w.(*gomysql.MariadbGTIDSet).Sets {
		if gg, ok := gs[d]; !ok || gg.SequenceNumber < wg.SequenceNumber {
			return false
		}
	}
	return true
}

// procCPU is a process's user + system CPU seconds so far.
func procCPU(pid int) (float64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}

func (b *bench) primaryPos(ctx context.Context) (string, error) {
	var pos string
	err := b.primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos)
	return pos, err
}

// writeParallel runs fn(k) for k in [0, n) on followWriters goroutines,
// each k once, and returns the first error.
func writeParallel(ctx context.Context, n int, fn func(ctx context.Context, k int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range followWriters {
		wg.Go(func() {
			for {
				k := int(next.Add(1) - 1)
				if k >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, k); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// scenarioFollowSingle and scenarioFollowBulk are scenarioFollowTput with
// one row per transaction and with BulkPerTx rows per INSERT.
func (b *bench) scenarioFollowSingle(ctx context.Context) (*scenario, error) {
	return b.scenarioFollowTput(ctx, b.s.Follow.SingleRows, 1)
}

func (b *bench) scenarioFollowBulk(ctx context.Context) (*scenario, error) {
	return b.scenarioFollowTput(ctx, b.s.Follow.BulkRows, b.s.Follow.BulkPerTx)
}

// scenarioFollowTput: rows are written while no follower runs (rowsPerTx
// per transaction, over topics 1..followTputTopics) and reach replica 1;
// then `nonqueue follow` starts at its saved position. Its time runs from
// its active_since to the updated_at of the commit that saved the
// primary's position, both on the primary's clock; its CPU is the
// process's whole life until then.
func (b *bench) scenarioFollowTput(ctx context.Context, rows, rowsPerTx int) (*scenario, error) {
	sc := &scenario{Key: fmt.Sprintf("follow_tput_%d", rowsPerTx), Kind: "follow", Topics: rows, want: b.followRuns(),
		Title: fmt.Sprintf("nonqueue follow, %s per transaction", plural(rowsPerTx, "row"))}
	defer sc.finish()
	if err := b.followSetup(ctx); err != nil {
		return sc, err
	}
	for i := 1; i <= sc.want; i++ {
		r, err := b.followTputRound(ctx, rows, rowsPerTx)
		if err != nil {
			return sc, fmt.Errorf("run %d: %w", i, err)
		}
		sc.Runs = append(sc.Runs, r)
		fr := r.Follow
		b.info("run %d/%d: %d row events in %.2f s: %.0f events/s; CPU %.0f ms, %.2f ms per 1,000 events (rows written in %.1f s)",
			i, sc.want, fr.Events, r.Seconds, fr.EventsPerS, fr.CPUMS, fr.CPUMSPer1000, fr.WriteS)
	}
	sc.finish()
	var eps, cpu []float64
	for _, r := range sc.Runs {
		eps = append(eps, r.Follow.EventsPerS)
		cpu = append(cpu, r.Follow.CPUMSPer1000)
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("%.0f events/s (min %.0f, max %.0f); CPU %.2f ms per 1,000 events (min %.2f, max %.2f)",
		median(eps), minOf(eps), maxOf(eps), median(cpu), minOf(cpu), maxOf(cpu)))
	return sc, nil
}

func (b *bench) followTputRound(ctx context.Context, rows, rowsPerTx int) (*runResult, error) {
	if err := b.stopFollower(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	err := writeParallel(ctx, (rows+rowsPerTx-1)/rowsPerTx, func(ctx context.Context, k int) error {
		var sb strings.Builder
		sb.WriteString("INSERT INTO " + followSchema + ".change (topic, created) VALUES ")
		for j := k * rowsPerTx; j < min(rows, (k+1)*rowsPerTx); j++ {
			if j > k*rowsPerTx {
				sb.WriteByte(',')
			}
			fmt.Fprintf(&sb, "(%d, NOW(6))", 1+j%followTputTopics)
		}
		_, err := b.follow.writers.ExecContext(ctx, sb.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("write rows: %w", err)
	}
	writeS := time.Since(t0).Seconds()
	target, err := b.primaryPos(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.waitReplicas(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	before, err := b.readFollowRow(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.startFollower(ctx); err != nil {
		return nil, err
	}
	row, err := b.waitFollowed(ctx, target, 5*time.Minute)
	if err != nil {
		return nil, err
	}
	cpu, cerr := procCPU(b.follow.proc.Pid())
	if err := b.stopFollower(); err != nil {
		return nil, err
	}
	if cerr != nil {
		return nil, fmt.Errorf("read the follower's CPU time: %w", cerr)
	}
	var us int64
	if err := b.primary.QueryRowContext(ctx, "SELECT TIMESTAMPDIFF(MICROSECOND, ?, ?)", row.activeSince.String, row.updatedAt).Scan(&us); err != nil {
		return nil, err
	}
	events := row.events - before.events
	if events < uint64(rows) {
		return nil, fmt.Errorf("the follower read %d row events, %d rows were written", events, rows)
	}
	if us <= 0 {
		return nil, fmt.Errorf("no usable span from active_since %s to updated_at %s", row.activeSince.String, row.updatedAt)
	}
	var requested int
	if err := b.primary.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+followSchema+".topic WHERE id BETWEEN 1 AND ? AND required = 2",
		followTputTopics).Scan(&requested); err != nil {
		return nil, err
	}
	if want := min(rows, followTputTopics); requested < want {
		return nil, fmt.Errorf("%d of the %d changed topics requested", requested, want)
	}
	secs := float64(us) / 1e6
	return &runResult{Seconds: secs, Follow: &followRun{Events: events, RowsPerTx: rowsPerTx, EventsPerS: float64(events) / secs,
		WriteS: writeS, CPUMS: cpu * 1000, CPUMSPer1000: cpu * 1e6 / float64(events), Requested: requested}}, nil
}

// scenarioFollowDelay: with the follower running and caught up, writers
// insert DelayRate rows a second for DelayFor, each for a topic of its own
// with the primary's NOW(6); the request sets that topic's due date to the
// primary's NOW(6) in the follower's commit (after = "0s"), so due -
// created is commit -> request on one clock, through replication to
// replica 1 and its binlog.
func (b *bench) scenarioFollowDelay(ctx context.Context) (sc *scenario, err error) {
	fs := b.s.Follow
	n := int(fs.DelayRate * fs.DelayFor.Seconds())
	sc = &scenario{Key: fmt.Sprintf("follow_delay_%.0f", fs.DelayRate), Kind: "follow", Topics: n, want: b.followRuns(),
		Title: fmt.Sprintf("nonqueue follow, %s changes/s, after 0s", commas(int(fs.DelayRate)))}
	defer sc.finish()
	if err := b.followSetup(ctx); err != nil {
		return sc, err
	}
	if err := b.stopFollower(); err != nil {
		return sc, err
	}
	if err := b.startFollower(ctx); err != nil {
		return sc, err
	}
	defer func() {
		if serr := b.stopFollower(); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	defer b.follow.writers.Close()
	for i := 1; i <= sc.want; i++ {
		r, err := b.followDelayRound(ctx, n)
		if err != nil {
			return sc, fmt.Errorf("run %d: %w", i, err)
		}
		sc.Runs = append(sc.Runs, r)
		fr := r.Follow
		b.info("run %d/%d: %d changes at %.0f/s: commit -> request p50 %.0f ms, p99 %.0f ms, max %.0f ms (replication to replica1: p50 %.0f, p99 %.0f ms; the follower's part: p50 %.0f, p99 %.0f ms); follower CPU %.2f ms per 1,000 events",
			i, sc.want, n, fr.ChangesPerS, fr.DelayMS["p50"], fr.DelayMS["p99"], fr.DelayMS["max"], fr.ReplicationMS["p50"], fr.ReplicationMS["p99"],
			fr.FollowerMS["p50"], fr.FollowerMS["p99"], fr.CPUMSPer1000)
	}
	sc.finish()
	var p50, p99, mx, r99, f99 []float64
	for _, r := range sc.Runs {
		p50 = append(p50, r.Follow.DelayMS["p50"])
		p99 = append(p99, r.Follow.DelayMS["p99"])
		mx = append(mx, r.Follow.DelayMS["max"])
		r99 = append(r99, r.Follow.ReplicationMS["p99"])
		f99 = append(f99, r.Follow.FollowerMS["p99"])
	}
	sc.Notes = append(sc.Notes, fmt.Sprintf("commit -> request p50 %.0f ms (min %.0f, max %.0f), p99 %.0f ms (min %.0f, max %.0f), max %.0f ms; of which replication p99 %.0f ms, the follower's part p99 %.0f ms",
		median(p50), minOf(p50), maxOf(p50), median(p99), minOf(p99), maxOf(p99), maxOf(mx), median(r99), median(f99)))
	return sc, nil
}

func (b *bench) followDelayRound(ctx context.Context, n int) (*runResult, error) {
	fs := b.s.Follow
	start, err := b.primaryPos(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := b.waitFollowed(ctx, start, time.Minute); err != nil {
		return nil, err
	}
	lo := b.follow.next
	b.follow.next += n
	pid := b.follow.proc.Pid()
	before, err := b.readFollowRow(ctx)
	if err != nil {
		return nil, err
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	// Where the time goes: replica 1 is polled for the highest change id it
	// has applied, so each change's delay splits into replication (commit
	// on the primary -> applied on the replica, within the poll interval)
	// and the follower's part.
	pctx, stopPoll := context.WithCancel(ctx)
	polled := make(chan []replicaSample, 1)
	go func() { polled <- b.pollReplica(pctx) }()
	t0 := time.Now()
	err = writeParallel(ctx, n, func(ctx context.Context, k int) error {
		if d := time.Until(t0.Add(time.Duration(float64(k) / fs.DelayRate * float64(time.Second)))); d > 0 {
			if err := sleepCtx(ctx, d); err != nil {
				return err
			}
		}
		_, err := b.follow.writers.ExecContext(ctx, "INSERT INTO "+followSchema+".change (topic, created) VALUES (?, NOW(6))", lo+k)
		return err
	})
	writeS := time.Since(t0).Seconds()
	var target string
	if err == nil {
		target, err = b.primaryPos(ctx)
	}
	var row followRow
	if err == nil {
		row, err = b.waitFollowed(ctx, target, 2*time.Minute)
	}
	stopPoll()
	samples := <-polled
	if err != nil {
		return nil, fmt.Errorf("write and follow changes: %w", err)
	}
	cpu1, err := procCPU(pid)
	if err != nil {
		return nil, err
	}
	rows, err := b.primary.QueryContext(ctx, `SELECT c.id, UNIX_TIMESTAMP(c.created), TIMESTAMPDIFF(MICROSECOND, c.created, t.due) FROM `+followSchema+`.change c
 JOIN `+followSchema+`.topic t ON t.id = c.topic WHERE c.topic BETWEEN ? AND ? AND t.required > 0`, lo, lo+n-1)
	if err != nil {
		return nil, err
	}
	var us, repl, foll []int64
	for rows.Next() {
		var id, v int64
		var created float64
		if err := rows.Scan(&id, &created, &v); err != nil {
			rows.Close()
			return nil, err
		}
		us = append(us, v)
		// The first sample that saw the change applied on the replica.
		if i, _ := slices.BinarySearchFunc(samples, id, func(s replicaSample, id int64) int { return cmp.Compare(s.maxID, id) }); i < len(samples) {
			r := int64((samples[i].at - created) * 1e6)
			repl = append(repl, r)
			foll = append(foll, v-r)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(us) != n {
		return nil, fmt.Errorf("%d of %d changed topics requested", len(us), n)
	}
	events := row.events - before.events
	fr := &followRun{Events: events, ChangesPerS: float64(n) / writeS, Requested: len(us),
		DelayMS: percentilesMS(us), CPUMS: (cpu1 - cpu0) * 1000}
	if len(repl) == n {
		fr.ReplicationMS, fr.FollowerMS = percentilesMS(repl), percentilesMS(foll)
	}
	if events > 0 {
		fr.CPUMSPer1000 = fr.CPUMS * 1000 / float64(events)
	}
	return &runResult{Seconds: writeS, Follow: fr}, nil
}

// followSummary adds scenario 10's figures to the summary and returns its
// targets: at least 20,000 row events a second followed (one row per
// transaction, the follower's hardest case), and a p99 commit -> request
// of at most 1 s at 2,000 changes/s.
func (b *bench) followSummary(sum map[string]any) []target {
	var eps, p99 *float64
	medianOf := func(sc *scenario, f func(*followRun) float64) *float64 {
		var v []float64
		for _, r := range sc.Runs {
			if r.Follow != nil {
				v = append(v, f(r.Follow))
			}
		}
		if len(v) == 0 {
			return nil
		}
		return num(median(v))
	}
	sum["follow_events_per_s"], sum["follow_cpu_ms_per_1000_events"] = nil, nil
	sum["follow_delay_p50_ms"], sum["follow_delay_p99_ms"] = nil, nil
	if sc := b.find("follow_tput_1"); sc != nil {
		eps = medianOf(sc, func(r *followRun) float64 { return r.EventsPerS })
		sum["follow_events_per_s"] = eps
		sum["follow_cpu_ms_per_1000_events"] = medianOf(sc, func(r *followRun) float64 { return r.CPUMSPer1000 })
	}
	if sc := b.find(fmt.Sprintf("follow_tput_%d", b.s.Follow.BulkPerTx)); sc != nil {
		sum["follow_events_per_s_bulk"] = medianOf(sc, func(r *followRun) float64 { return r.EventsPerS })
		sum["follow_cpu_ms_per_1000_events_bulk"] = medianOf(sc, func(r *followRun) float64 { return r.CPUMSPer1000 })
	}
	if sc := b.find(fmt.Sprintf("follow_delay_%.0f", b.s.Follow.DelayRate)); sc != nil {
		p99 = medianOf(sc, func(r *followRun) float64 { return r.DelayMS["p99"] })
		sum["follow_delay_p50_ms"] = medianOf(sc, func(r *followRun) float64 { return r.DelayMS["p50"] })
		sum["follow_delay_p99_ms"] = p99
		sum["follow_changes_per_s"] = medianOf(sc, func(r *followRun) float64 { return r.ChangesPerS })
		sum["follow_delay_cpu_ms_per_1000_events"] = medianOf(sc, func(r *followRun) float64 { return r.CPUMSPer1000 })
		sum["follow_replication_p99_ms"] = medianOf(sc, func(r *followRun) float64 { return r.ReplicationMS["p99"] })
		sum["follow_follower_p99_ms"] = medianOf(sc, func(r *followRun) float64 { return r.FollowerMS["p99"] })
	}
	check := func(name string, v *float64, goal string, ok func(float64) bool) target {
		return target{Name: name, Value: v, Goal: goal, Pass: v != nil && ok(*v)}
	}
	return []target{
		check("row events followed per s, 1 row per transaction (follow_events_per_s)", eps, ">= 20000", func(v float64) bool { return v >= 20000 }),
		check(fmt.Sprintf("commit -> request p99 at %s changes/s, ms (follow_delay_p99_ms)", commas(int(b.s.Follow.DelayRate))), p99, "<= 1000",
			func(v float64) bool { return v <= 1000 }),
	}
}

// commas formats n with thousands separators: 2000 -> "2,000".
func commas(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// plural: "1 row", "1,000 rows".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return commas(n) + " " + what + "s"
}

// replicaPoll paces the delay runs' poll of replica 1.
const replicaPoll = 10 * time.Millisecond

// replicaSample: at (unix seconds, the replica's clock) the replica had
// applied the changes up to maxID.
type replicaSample struct {
	maxID int64
	at    float64
}

// pollReplica samples replica 1's highest applied change id until ctx
// ends; the samples come in increasing order.
func (b *bench) pollReplica(ctx context.Context) []replicaSample {
	var out []replicaSample
	for ctx.Err() == nil {
		var s replicaSample
		err := b.replicas[0].QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0), UNIX_TIMESTAMP(NOW(6)) FROM "+followSchema+".change").Scan(&s.maxID, &s.at)
		if err == nil && (len(out) == 0 || s.maxID > out[len(out)-1].maxID) {
			out = append(out, s)
		}
		if sleepCtx(ctx, replicaPoll) != nil {
			break
		}
	}
	return out
}

// percentilesMS: p50, p90, p99 and max of microsecond values, in ms.
func percentilesMS(us []int64) map[string]float64 {
	us = slices.Clone(us)
	slices.Sort(us)
	pct := func(p float64) float64 { return float64(us[min(len(us)-1, int(p*float64(len(us))))]) / 1000 }
	return map[string]float64{"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": float64(us[len(us)-1]) / 1000}
}
