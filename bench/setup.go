package main

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
	sqlfiles "github.com/nonqueue/nonqueue/sql"
)

// bigID is the topic whose result tables are big (scenario 5).
const bigID = 1000001

// Procedures of sql/demo/proc.sql and bench/sql/primary.sql.
const (
	procSmall = "influencer.proc"
	procSlow  = "influencer.proc_slow"
	procBig   = "influencer.proc_big"
)

// bench is one harness run: the sandbox, connections, children and what
// was measured.
type bench struct {
	s                              settings
	stdout, stderr                 io.Writer
	root, seed, nonqueue, out, dir string
	command                        string
	started                        time.Time
	elapsed                        time.Duration
	// roundPoll, when set, replaces pollInterval in nqRound: scenario 9's
	// rounds hold thousands of runs, and the harness's count of them must
	// not cost the primary a share of what the scenario measures.
	roundPoll   time.Duration
	interrupted bool
	only        map[string]bool // nil: every scenario
	// compare: a second nonqueue binary for scenario 8's A/B rounds.
	compare string
	// bigBuilt: influencer.BigSrc exists on replica 1 (scenario 5 keeps
	// it for scenario 7, which drops it).
	bigBuilt bool
	// follow: scenario 10's setup and its running follower (bench/follow.go).
	follow *followState

	sb *sandbox.Sandbox
	// primary is the application user on the primary; primaryNoBin the
	// same with sql_log_bin=0 (and multi-statements), for result tables
	// that must not replicate; replicas[k] are replica k+1 with
	// sql_log_bin=0 (call counters, the ceiling, the big source table).
	primary      *sql.DB
	primaryNoBin *sql.DB
	replicas     []*sql.DB
	q            *queue.Queue
	kids         child.Set

	machine   machineInfo
	scenarios []*scenario
	errs      []string
	setupS    map[string]float64
}

func (b *bench) say(format string, a ...any) { fmt.Fprintf(b.stdout, "==> "+format+"\n", a...) }
func (b *bench) info(format string, a ...any) {
	fmt.Fprintf(b.stdout, "    "+format+"\n", a...)
}

// maxTopic is the highest ordinary topic id any scenario uses.
func (b *bench) maxTopic() int { return max(b.s.Topics, b.s.SeedTopics, b.s.ScaleTopics) }

// runAll starts the sandbox, runs every scenario and stops everything it
// started, whatever happens. A scenario that fails is recorded and the
// next one runs (unless the run was interrupted).
func (b *bench) runAll(ctx context.Context, dir string) (err error) {
	if err := sandbox.Check(); err != nil {
		return err
	}
	made := false
	if dir == "" {
		if dir, err = os.MkdirTemp(cmp.Or(os.Getenv("NQBENCH_TMPDIR"), sandbox.TempBase()), "nqbench-"); err != nil {
			return err
		}
		made = true
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return err
	}
	if !safePath.MatchString(dir) {
		return fmt.Errorf("sandbox directory %q: want only letters, digits and ._/- (it goes into shell configuration)", dir)
	}
	b.dir = dir
	mode := "full"
	if b.s.Quick {
		mode = "quick (BENCH_QUICK=1)"
	}
	b.say("nonqueue bench, %s mode: %d runs per scenario; nonqueue %s; baseline %s", mode, b.s.Runs, b.nonqueue, b.seed)
	b.say("starting a primary, 2 replicas and sshd in %s", dir)
	b.info("if this process is killed, stop them with: %s sandbox down --dir %s", b.nonqueue, dir)
	t0 := time.Now()
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Replicas: 2, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		if made {
			os.RemoveAll(dir)
		}
		return fmt.Errorf("sandbox up: %w", err)
	}
	b.sb = sb
	b.setupS = map[string]float64{"sandbox_up": time.Since(t0).Seconds()}
	defer func() {
		if serr := b.kids.StopAll(workerStopGrace); serr != nil {
			err = errors.Join(err, serr)
		}
		b.closeDBs()
		tctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
		defer cancel()
		if derr := sb.Down(tctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("sandbox down: %w", derr))
			b.say("the sandbox did NOT stop cleanly: %v; stop it with: %s sandbox down --dir %s", derr, b.nonqueue, dir)
			return
		}
		b.say("sandbox stopped")
		if made && err == nil && len(b.errs) == 0 {
			if rerr := os.RemoveAll(dir); rerr != nil {
				b.info("could not remove %s: %v", dir, rerr)
			}
		} else {
			b.info("kept %s for a post-mortem (worker logs, run logs, datadirs); remove it with: rm -rf %s", dir, dir)
		}
	}()
	for _, s := range sb.Servers() {
		b.info("%-9s 127.0.0.1:%d (server_id %d)", s.Name, s.Port, s.ServerID)
	}
	b.info("sshd      127.0.0.1:%d", sb.SSH.Port)
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}

	type step struct {
		kind, title string
		fn          func(context.Context) (*scenario, error)
	}
	steps := []step{
		{"seed", "1. the original loop (seed-worker.sh)", b.scenarioSeed},
		{"ceiling", "3. the ceiling: the procedure alone", b.scenarioCeiling},
	}
	for _, topo := range b.s.Sweep {
		steps = append(steps, step{"sweep", fmt.Sprintf("2. nonqueue, %d replica(s) x %d instance(s)", topo.Replicas, topo.Instances),
			func(ctx context.Context) (*scenario, error) { return b.scenarioSweep(ctx, topo) }})
	}
	steps = append(steps,
		step{"scale", "4. scale: a 1 s procedure", b.scenarioScale},
		step{"big", "5. big result", b.scenarioBig},
		step{"sync", "7. fsync cost: 1 replica x 4 with [results] sync = false", b.scenarioNoSyncSweep},
		step{"sync", "7. fsync cost: the big result with [results] sync = false", b.scenarioNoSyncBig},
		step{"latency", fmt.Sprintf("8. a network: 1 replica x 4 at a %v round trip to the primary", b.s.LatencyRTT), b.scenarioLatency},
		step{"scale1000", "9. 1,000 instances against one primary (scale1000.go)", b.scenarioScale1000},
		step{"follow", "10. nonqueue follow: row events a second, 1 row per transaction", b.scenarioFollowSingle},
		step{"follow", "10. nonqueue follow: row events a second, 1,000-row transactions", b.scenarioFollowBulk},
		step{"follow", "10. nonqueue follow: commit -> request delay", b.scenarioFollowDelay})
	for _, st := range steps {
		if ctx.Err() != nil {
			break
		}
		if b.only != nil && !b.only[st.kind] {
			continue
		}
		b.say("%s", st.title)
		t := time.Now()
		sc, err := st.fn(ctx)
		if sc != nil {
			sc.WallS = time.Since(t).Seconds()
			b.scenarios = append(b.scenarios, sc)
		}
		if err != nil {
			if sc != nil {
				sc.Error = err.Error()
			}
			b.errs = append(b.errs, fmt.Sprintf("%s: %v", st.title, err))
			if ctx.Err() != nil {
				b.info("interrupted")
			} else {
				b.info("FAILED: %v", err)
			}
			// Leave a clean queue for the next scenario.
			if rerr := b.kids.StopAll(workerStopGrace); rerr != nil {
				b.info("stopping children: %v", rerr)
			}
			if ctx.Err() == nil {
				if rerr := b.resetTopics(ctx); rerr != nil {
					return fmt.Errorf("reset after a failed scenario: %w", rerr)
				}
			}
		}
	}
	if ctx.Err() != nil {
		b.interrupted = true
		return ctx.Err()
	}
	return nil
}

func (b *bench) closeDBs() {
	if b.q != nil {
		b.q.Close()
	}
	for _, db := range append([]*sql.DB{b.primary, b.primaryNoBin}, b.replicas...) {
		if db != nil {
			db.Close()
		}
	}
}

func openDB(mc *mysql.Config, params map[string]string, multi bool) (*sql.DB, error) {
	mc = mc.Clone()
	mc.Params = params
	mc.MultiStatements = multi
	mc.Timeout = 10 * time.Second
	// One round trip and one statement per query with arguments (not a
	// PREPARE, an EXECUTE and a CLOSE): the harness's polls of the run
	// history then cost the primary little of what a scenario measures.
	mc.InterpolateParams = true
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	return db, nil
}

// benchSQL is bench/sql, carried in the harness so it runs from any
// directory.
//
//go:embed sql/*.sql
var benchSQL embed.FS

// countCall is what replaces sqlfiles.CountCallMarker in the shared
// procedure: the bench counts every call on the replica that runs it.
const countCall = "INSERT INTO influencer.calls (topic_id) VALUES (p_topic);"

// primaryScript is what the harness loads on the primary: the example's
// tables and procedure shared with the demo (sql/demo), the procedure
// counting its calls, then the bench's own settings and procedures.
func primaryScript() (string, error) {
	var parts []string
	for _, f := range []string{"demo/tables.sql", "demo/proc.sql"} {
		b, err := sqlfiles.Demo.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("read sql/%s: %w", f, err)
		}
		parts = append(parts, string(b))
	}
	if n := strings.Count(parts[1], sqlfiles.CountCallMarker); n != 1 {
		return "", fmt.Errorf("sql/demo/proc.sql has %d lines %q, want 1: the bench could not count calls", n, sqlfiles.CountCallMarker)
	}
	parts[1] = strings.Replace(parts[1], sqlfiles.CountCallMarker, countCall, 1)
	b, err := benchSQL.ReadFile("sql/primary.sql")
	if err != nil {
		return "", err
	}
	return strings.Join(append(parts, string(b)), "\n"), nil
}

// setup loads the schema, the procedures and the data, writes the worker
// configurations and applies nonqueue's schema to the mapped table.
func (b *bench) setup(ctx context.Context) error {
	sb := b.sb
	noBin := map[string]string{"sql_log_bin": "0"}
	var err error
	if b.primary, err = openDB(sb.MySQLConfig(sb.Primary), nil, false); err != nil {
		return err
	}
	if b.primaryNoBin, err = openDB(sb.MySQLConfig(sb.Primary), noBin, true); err != nil {
		return err
	}
	for _, r := range sb.Replicas {
		db, err := openDB(sb.MySQLConfig(r), noBin, false)
		if err != nil {
			return err
		}
		b.replicas = append(b.replicas, db)
	}
	if err := b.machine.collect(ctx, b); err != nil {
		return err
	}

	t0 := time.Now()
	b.say("loading sql/demo/tables.sql, sql/demo/proc.sql and bench/sql: topic table, source rows, procedures (primary); call counters (replicas)")
	primarySQL, err := primaryScript()
	if err != nil {
		return err
	}
	replicaSQL, err := benchSQL.ReadFile("sql/replica.sql")
	if err != nil {
		return err
	}
	if err := mariadbClient(ctx, sb.Primary.Socket, primarySQL); err != nil {
		return fmt.Errorf("load the bench's SQL on the primary: %w", err)
	}
	if err := b.waitReplicas(ctx, time.Minute); err != nil {
		return err
	}
	for _, r := range sb.Replicas {
		if err := mariadbClient(ctx, r.Socket, string(replicaSQL)); err != nil {
			return fmt.Errorf("load replica.sql on %s: %w", r.Name, err)
		}
	}

	if err := b.writeConfigs(); err != nil {
		return err
	}
	if err := b.openQueue(ctx); err != nil {
		return err
	}
	if err := b.q.ApplySchema(ctx); err != nil {
		return fmt.Errorf("apply nonqueue's schema to app.TopicFilter: %w", err)
	}
	if err := b.loadData(ctx); err != nil {
		return err
	}
	if err := b.waitReplicas(ctx, 3*time.Minute); err != nil {
		return err
	}
	b.setupS["load"] = time.Since(t0).Seconds()
	return nil
}

// loadData inserts the topics and their source rows on the primary
// (deterministic: the same rows every run) and gives every topic an
// existing, empty published result on the primary, so every measured run
// replaces results the way a recompute does (steady state).
func (b *bench) loadData(ctx context.Context) error {
	n := b.maxTopic()
	s := b.s
	stmts := []string{
		fmt.Sprintf(`INSERT INTO app.TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, influencerPriority, influencerRunning, active)
 SELECT seq, CONCAT('topic ', seq), 0, NOW(), 0, 0, 1 + seq %% 2 FROM app.seq_1_to_%d`, n),
		fmt.Sprintf(`INSERT INTO app.TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, influencerPriority, influencerRunning, active)
 VALUES (%d, 'big result', 0, NOW(), 0, 0, 1)`, bigID),
	}
	for lo := 1; lo <= n; lo += 100 {
		hi := min(lo+99, n)
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO app.PostAuthor (blogPostId, topicFilterId, author, reach, engagement, createdAt)
 SELECT t.seq * 1000 + p.seq, t.seq, CONCAT('author', (t.seq * 7 + p.seq * 13) %% 60), CRC32(CONCAT(t.seq, '/', p.seq)) %% 5000,
  CRC32(CONCAT(p.seq, '/', t.seq)) %% 800, NOW() - INTERVAL (p.seq %% 90) DAY
 FROM app.seq_%d_to_%d t JOIN app.seq_1_to_%d p ON p.seq <= %d + CRC32(t.seq) %% %d`, lo, hi, s.PostsMax, s.PostsMin, s.PostsMax-s.PostsMin+1))
	}
	for _, st := range stmts {
		if _, err := b.primary.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("load data: %w", err)
		}
	}
	var posts int
	if err := b.primary.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.PostAuthor").Scan(&posts); err != nil {
		return err
	}
	b.info("%d topics (+ topic %d for the big result), %d source rows (%d-%d per topic)", n, bigID, posts, s.PostsMin, s.PostsMax)

	ids := make([]int, 0, n+1)
	for id := 1; id <= n; id++ {
		ids = append(ids, id)
	}
	ids = append(ids, bigID)
	for i := 0; i < len(ids); i += 100 {
		var sb strings.Builder
		for _, id := range ids[i:min(i+100, len(ids))] {
			fmt.Fprintf(&sb, "CREATE TABLE IF NOT EXISTS influencer.Post_%d (blogPostId BIGINT NOT NULL PRIMARY KEY, author VARCHAR(189) NOT NULL, score DOUBLE NOT NULL, KEY (author)) ENGINE=MyISAM;", id)
			fmt.Fprintf(&sb, "CREATE TABLE IF NOT EXISTS influencer.Dynamics_%d (author VARCHAR(189) NOT NULL PRIMARY KEY, posts INT NOT NULL, score DOUBLE NOT NULL, influence_rank INT NOT NULL) ENGINE=MyISAM;", id)
		}
		if _, err := b.primaryNoBin.ExecContext(ctx, sb.String()); err != nil {
			return fmt.Errorf("create published results on the primary: %w", err)
		}
	}
	return nil
}

// waitReplicas waits until every replica has applied everything the
// primary has written so far.
func (b *bench) waitReplicas(ctx context.Context, limit time.Duration) error {
	var pos string
	if err := b.primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return err
	}
	for i, r := range b.replicas {
		var res sql.NullInt64
		if err := r.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, limit.Seconds()).Scan(&res); err != nil {
			return fmt.Errorf("wait for replica%d: %w", i+1, err)
		}
		if !res.Valid || res.Int64 != 0 {
			return fmt.Errorf("replica%d did not reach %s within %v", i+1, pos, limit)
		}
	}
	return nil
}

// mariadbClient runs a script with the mariadb client as root over the
// server's socket (the files use DELIMITER, which only the client knows).
func mariadbClient(ctx context.Context, socket, script string) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, "mariadb", "--no-defaults", "-S", socket, "-uroot", "--batch")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

var safePath = regexp.MustCompile(`^[A-Za-z0-9_./-]+$`)

// workerConfig is demo.go's configuration with the bench's procedure and
// a short idle wait, so idle polling does not dominate the figures.
var workerConfig = template.Must(template.New("bench").Parse(`# nonqueue bench configuration for {{.Replica.Name}}, procedure {{.Proc}}; written by nqbench.
` + sandbox.ConnectionsTOML + `
` + sandbox.MappedTopicsTOML + `
[procedure]
name = "{{.Proc}}"
marker = "SUMMARY"
timeout = "10m"

[results]
schema = "influencer"
tables = ["Dynamics_{id}", "Post_{id}"]
verify = "{{.Verify}}"
sync = {{.Sync}}

[worker]
log_dir = "{{.LogDir}}"
idle_wait = "{{.IdleWait}}"
pipeline = {{.Pipeline}}

` + sandbox.SSHTOML))

// configPath is the worker configuration for replica k (0-based) and a
// procedure; noSync: with [results] sync = false (scenario 7).
func (b *bench) configPath(k int, proc string, noSync bool) string {
	name := strings.TrimPrefix(proc, "influencer.")
	if noSync {
		name += "-nosync"
	}
	return filepath.Join(b.dir, "bench", fmt.Sprintf("replica%d-%s.toml", k+1, name))
}

func (b *bench) writeConfigs() error {
	if err := os.MkdirAll(filepath.Join(b.dir, "bench"), 0o700); err != nil {
		return err
	}
	for k := range b.sb.Replicas {
		for _, c := range []struct {
			proc   string
			noSync bool
		}{{procSmall, false}, {procSlow, false}, {procBig, false}, {procSmall, true}, {procBig, true}} {
			p := b.configPath(k, c.proc, c.noSync)
			if err := b.writeConfig(p, b.sb, k, c.proc, c.noSync); err != nil {
				return err
			}
		}
	}
	return nil
}

// openQueue opens nonqueue's queue with the [topics] section of the
// workers' own configuration, so the harness requests exactly what the
// workers claim.
func (b *bench) openQueue(ctx context.Context) error {
	var c struct {
		Topics queue.Config `toml:"topics"`
	}
	path := b.configPath(0, procSmall, false)
	if _, err := toml.DecodeFile(path, &c); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	q, err := queue.Open(ctx, b.sb.MySQLConfig(b.sb.Primary), c.Topics)
	if err != nil {
		return err
	}
	b.q = q
	return nil
}

// resetTopics clears every request and running mark directly, for use
// when no worker runs: after the original loop (which can leave a topic
// marked running forever) and after a failed scenario.
func (b *bench) resetTopics(ctx context.Context) error {
	_, err := b.primary.ExecContext(ctx, `UPDATE app.TopicFilter SET influencerRecalcReqd = 0, influencerRunning = 0
 WHERE influencerRecalcReqd <> 0 OR influencerRunning <> 0`)
	if err != nil {
		return fmt.Errorf("reset topics: %w", err)
	}
	return nil
}

// checkClean fails unless no topic is requested or running, so one
// scenario's leftovers never count in the next.
func (b *bench) checkClean(ctx context.Context) error {
	var n int
	if err := b.primary.QueryRowContext(ctx, `SELECT COUNT(*) FROM app.TopicFilter
 WHERE influencerRecalcReqd <> 0 OR influencerRunning <> 0`).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%d topics are still requested or running before the scenario", n)
	}
	return nil
}

// clearCalls empties the call counters on every replica.
func (b *bench) clearCalls(ctx context.Context) error {
	for i, r := range b.replicas {
		if _, err := r.ExecContext(ctx, "TRUNCATE TABLE influencer.calls"); err != nil {
			return fmt.Errorf("clear calls on replica%d: %w", i+1, err)
		}
	}
	return nil
}

// callCount is what the call counters say about one run.
type callCount struct {
	Calls      int // calls of the procedure, all replicas
	Duplicates int // topics computed more than once
	ExtraCalls int // calls beyond one per topic
	Missing    int // topics never computed
	Unexpected int // calls for topics that were not requested
}

// countCalls sums the call counters over the replicas for topics lo..hi.
func (b *bench) countCalls(ctx context.Context, lo, hi int) (callCount, error) {
	counts := map[int]int{}
	for i, r := range b.replicas {
		rows, err := r.QueryContext(ctx, "SELECT topic_id, COUNT(*) FROM influencer.calls GROUP BY topic_id")
		if err != nil {
			return callCount{}, fmt.Errorf("count calls on replica%d: %w", i+1, err)
		}
		for rows.Next() {
			var id, n int
			if err := rows.Scan(&id, &n); err != nil {
				rows.Close()
				return callCount{}, err
			}
			counts[id] += n
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return callCount{}, err
		}
	}
	var c callCount
	for id, n := range counts {
		c.Calls += n
		if id < lo || id > hi {
			c.Unexpected += n
		}
	}
	for id := lo; id <= hi; id++ {
		switch n := counts[id]; {
		case n == 0:
			c.Missing++
		case n > 1:
			c.Duplicates++
			c.ExtraCalls += n - 1
		}
	}
	return c, nil
}

// notDone counts topics lo..hi still requested or marked running.
func (b *bench) notDone(ctx context.Context, lo, hi int) (int, error) {
	var n int
	err := b.primary.QueryRowContext(ctx, `SELECT COUNT(*) FROM app.TopicFilter WHERE topicFilterId BETWEEN ? AND ?
 AND (influencerRecalcReqd <> 0 OR influencerRunning <> 0)`, lo, hi).Scan(&n)
	return n, err
}

func itoa(n int) string { return strconv.Itoa(n) }
