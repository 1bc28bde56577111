package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
	sqlfiles "github.com/nonqueue/nonqueue/sql"
)

var hexOnly = regexp.MustCompile(`^[0-9a-f]+$`)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer, logger *slog.Logger) (err error) {
	fs := newFlags("demo", stderr)
	dir := fs.String("dir", "", "sandbox directory (default: a new one under $TMPDIR, else /var/tmp)")
	keep := fs.Bool("keep", false, "leave the sandbox running at the end")
	topics := fs.Int("topics", 300, "number of topics to request")
	instances := fs.Int("instances", 4, "instances per replica")
	replicas := fs.Int("replicas", 2, "replicas of the primary")
	tiers, parallel := shapeFlags(fs)
	sqlDir := fs.String("sql-dir", "", "directory with tables.sql, primary.sql, proc.sql and replica.sql (default: the copy of sql/demo built into the binary)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up if the topics are not done by then")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if *topics < 1 || *topics > 100000 || *instances < 1 || *instances > 50 || *replicas < 1 || *replicas > 9 {
		return errors.New("demo: want 1..100000 topics, 1..50 instances, 1..9 replicas")
	}
	if err := checkShapeFlags(*replicas, *tiers, *parallel); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := sandbox.Check(); err != nil {
		return err
	}
	if *dir == "" {
		if *dir, err = os.MkdirTemp(sandbox.TempBase(), "nonqueue-demo-"); err != nil {
			return err
		}
	}
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "==> "+format+"\n", a...) }

	say("starting a primary, %d replicas (%d tier(s), %d parallel appliers) and sshd in %s", *replicas**tiers, *tiers, *parallel, *dir)
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: *dir, Replicas: *replicas, Tiers: *tiers, Parallel: *parallel, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer func() {
		if *keep && err == nil {
			say("kept running; stop it with: nonqueue sandbox down --dir %s", sb.Dir)
			return
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := sb.Down(dctx); derr != nil {
			err = errors.Join(err, derr)
			return
		}
		// The datadirs are half a gigabyte; the logs stay for reading.
		for _, srv := range sb.Servers() {
			os.RemoveAll(srv.Datadir)
		}
		os.RemoveAll(filepath.Join(sb.Dir, "template"))
		say("sandbox stopped (datadirs removed; logs kept in %s)", sb.Dir)
	}()
	for _, s := range sb.Servers() {
		fmt.Fprintf(stdout, "    %-9s 127.0.0.1:%d (server_id %d)%s\n", s.Name, s.Port, s.ServerID, replicationNote(s))
	}

	say("loading the example: blog posts and topics on the primary; Blackhole + trigger and FederatedX on the replicas")
	var files iofs.FS
	if *sqlDir != "" {
		files = os.DirFS(*sqlDir)
	} else if files, err = iofs.Sub(sqlfiles.Demo, "demo"); err != nil {
		return err
	}
	if err := loadDemoSQL(ctx, sb, files); err != nil {
		return err
	}
	logDir := filepath.Join(sb.Dir, "runs")
	var configs []string
	for _, r := range sb.Replicas {
		p := filepath.Join(sb.Dir, "demo-"+r.Name+".toml")
		if err := writeTemplate(p, sandboxConfig, map[string]any{"SB": sb, "Replica": r, "LogDir": logDir, "Demo": true}); err != nil {
			return err
		}
		configs = append(configs, p)
	}
	c, err := LoadConfig(configs[0])
	if err != nil {
		return err
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.ApplySchema(ctx); err != nil {
		return err
	}
	posts, err := seedDemo(ctx, q.DB(), *topics)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "    %d topics, %d blog posts\n", *topics, posts)

	say("starting %d instances on each of %d replicas", *instances, len(sb.Replicas))
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var kids child.Set
	var workers []*child.Process
	defer func() {
		if serr := kids.StopAll(workerStopGrace); serr != nil {
			err = errors.Join(err, serr)
		}
	}()
	for i, cfg := range configs {
		logPath := filepath.Join(sb.Dir, fmt.Sprintf("worker-%d.log", i+1))
		w, err := kids.Start(fmt.Sprintf("worker %d", i+1), logPath, false, exe, "work", "--config", cfg, "--instances", strconv.Itoa(*instances))
		if err != nil {
			return err
		}
		workers = append(workers, w)
		fmt.Fprintf(stdout, "    nonqueue work --config %s --instances %d   (pid %d, log %s)\n", cfg, *instances, w.Pid(), logPath)
	}

	follower, followCfg, err := startDemoFollower(&kids, exe, sb.Dir, configs[0])
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "    nonqueue follow --config %s   (pid %d, log %s/follow.log): new blog posts re-request their topic\n", followCfg, follower.Pid(), sb.Dir)
	if err := waitDemoFollower(ctx, q.DB(), follower); err != nil {
		return err
	}
	gen := newDemoPosts(q.DB(), int64(posts)+1, *topics)

	say("requesting recalc of %d topics with mixed priorities and scopes; adding blog posts meanwhile", *topics)
	start := time.Now()
	for prio := int64(0); prio < 3; prio++ {
		for scope := queue.ScopePartial; scope <= queue.ScopeFull; scope++ {
			var ids []int64
			for id := 1; id <= *topics; id++ {
				if int64(id%3) == prio && (id%4 == 0) == (scope == queue.ScopePartial) {
					ids = append(ids, int64(id))
				}
			}
			if len(ids) == 0 {
				continue
			}
			if _, err := q.Request(ctx, &queue.RequestParams{IDs: ids, Scope: scope, Priority: &prio}); err != nil {
				return err
			}
		}
	}

	deadline := time.Now().Add(*timeout)
	for {
		var pending, running, done, failed int
		err := q.DB().QueryRowContext(ctx, `SELECT /* nonqueue demo */
 SUM(influencerRecalcReqd > 0 AND influencerRunning = 0 AND parked_at IS NULL), SUM(influencerRunning <> 0),
 SUM(influencerRecalcReqd = 0 AND influencerRunning = 0), SUM(parked_at IS NOT NULL) FROM app.TopicFilter`).Scan(&pending, &running, &done, &failed)
		if err != nil {
			return fmt.Errorf("progress: %w", err)
		}
		fmt.Fprintf(stdout, "    %5.1fs  done %4d  running %2d  pending %4d  parked %d\n", time.Since(start).Seconds(), done, running, pending, failed)
		if pending == 0 && running == 0 && gen.followed(ctx) {
			break
		}
		if err := gen.step(ctx); err != nil {
			return err
		}
		if follower.Exited() {
			return fmt.Errorf("demo: the follower exited (see %s/follow.log)", sb.Dir)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: topics not done after %v (see %s/worker-*.log)", *timeout, sb.Dir)
		}
		for i, w := range workers {
			if w.Exited() {
				return fmt.Errorf("demo: worker %d exited (see %s/worker-%d.log)", i+1, sb.Dir, i+1)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	elapsed := time.Since(start)

	say("stopping the workers (SIGTERM)")
	if err := kids.StopAll(workerStopGrace); err != nil {
		return err
	}
	if err := demoSummary(ctx, stdout, q.DB(), sb, *topics, elapsed, configs[0]); err != nil {
		return err
	}
	return gen.summary(ctx, stdout)
}

// workerStopGrace bounds the wait for a worker after SIGTERM; the
// worker's own grace period for a run in flight is 20s.
const workerStopGrace = 30 * time.Second

// loadDemoSQL runs the example's SQL with the mariadb client as root over
// each server's socket (the files use DELIMITER, which only the client
// understands): tables.sql, primary.sql and proc.sql on the primary, then
// replica.sql on each replica. files holds them at its top level.
func loadDemoSQL(ctx context.Context, sb *sandbox.Sandbox, files iofs.FS) error {
	read := func(name string) (string, error) {
		b, err := iofs.ReadFile(files, name)
		if err != nil {
			return "", fmt.Errorf("demo SQL: %w", err)
		}
		return string(b), nil
	}
	if !hexOnly.MatchString(sb.Password) || !strings.HasPrefix(sb.User, "nonqueue") {
		return errors.New("demo: unexpected sandbox credentials")
	}
	for _, name := range []string{"tables.sql", "primary.sql", "proc.sql"} {
		script, err := read(name)
		if err != nil {
			return err
		}
		if err := mariadbClient(ctx, sb.Primary.Socket, script); err != nil {
			return fmt.Errorf("load %s on the primary: %w", name, err)
		}
	}
	replica, err := read("replica.sql")
	if err != nil {
		return err
	}
	r := strings.NewReplacer("{{PRIMARY_HOST}}", sb.Primary.Host, "{{PRIMARY_PORT}}", strconv.Itoa(sb.Primary.Port),
		"{{USER}}", sb.User, "{{PASSWORD}}", sb.Password)
	for _, rep := range sb.Replicas {
		// The tables replica.sql builds on must have arrived first.
		if err := mariadbClient(ctx, rep.Socket, "SELECT MASTER_GTID_WAIT('"+primaryPos(ctx, sb)+"', 30)"); err != nil {
			return err
		}
		if err := mariadbClient(ctx, rep.Socket, r.Replace(replica)); err != nil {
			return fmt.Errorf("load replica.sql on %s: %w", rep.Name, err)
		}
	}
	return nil
}

func primaryPos(ctx context.Context, sb *sandbox.Sandbox) string {
	out, err := exec.CommandContext(ctx, "mariadb", "-S", sb.Primary.Socket, "-uroot", "-N", "-e", "SELECT @@gtid_binlog_pos").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func mariadbClient(ctx context.Context, socket, script string) error {
	cmd := exec.CommandContext(ctx, "mariadb", "-S", socket, "-uroot", "--batch")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mariadb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// seedDemo inserts the topics and 20-60 posts for each, some from media
// providers the replicas' trigger filters out.
func seedDemo(ctx context.Context, db *sql.DB, topics int) (int, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	authors := []string{"ana", "ben", "chen", "dara", "eli", "fay", "gus", "hana", "ivo", "jun", "kai", "lea", "mo", "nia", "oli"}
	fruit := []string{"Apples", "Oranges", "Grapes", "Bananas", "Pears", "Plums", "Kiwis", "Limes"}
	var vals []string
	var args []any
	flush := func(stmt string) error {
		if len(vals) == 0 {
			return nil
		}
		_, err := db.ExecContext(ctx, stmt+strings.Join(vals, ","), args...)
		vals, args = vals[:0], args[:0]
		return err
	}
	for id := 1; id <= topics; id++ {
		vals = append(vals, "(?, ?, 0, NOW(), 0, 0, ?)")
		args = append(args, id, fmt.Sprintf("%s %d", fruit[id%len(fruit)], id), 1+id%2)
		if len(vals) == 500 {
			if err := flush("INSERT INTO app.TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, influencerPriority, influencerRunning, active) VALUES "); err != nil {
				return 0, err
			}
		}
	}
	if err := flush("INSERT INTO app.TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, influencerPriority, influencerRunning, active) VALUES "); err != nil {
		return 0, fmt.Errorf("seed topics: %w", err)
	}
	posts := 0
	for id := 1; id <= topics; id++ {
		for range 20 + rng.IntN(41) {
			posts++
			vals = append(vals, "(?, ?, ?, ?, ?, ?, NOW() - INTERVAL ? DAY)")
			args = append(args, posts, id, authors[rng.IntN(len(authors))], 1+rng.IntN(4), rng.IntN(5000), rng.IntN(800), rng.IntN(90))
			if len(vals) == 1000 {
				if err := flush("INSERT INTO app.BlogPost VALUES "); err != nil {
					return 0, fmt.Errorf("seed posts: %w", err)
				}
			}
		}
	}
	if err := flush("INSERT INTO app.BlogPost VALUES "); err != nil {
		return 0, fmt.Errorf("seed posts: %w", err)
	}
	return posts, nil
}

func demoSummary(ctx context.Context, w io.Writer, db *sql.DB, sb *sandbox.Sandbox, topics int, elapsed time.Duration, cfg string) error {
	fmt.Fprintf(w, "==> summary\n")
	rows, err := db.QueryContext(ctx, `SELECT outcome, COUNT(*), ROUND(AVG(lag_wait_us)/1000, 2), ROUND(AVG(proc_us)/1000, 2),
 ROUND(AVG(transfer_us)/1000, 2), ROUND(AVG(publish_us)/1000, 2), SUM(bytes_shipped)
 FROM nonqueue.run GROUP BY outcome ORDER BY outcome`)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "    %-9s %6s %12s %12s %12s %12s %12s\n", "outcome", "runs", "lag wait ms", "proc ms", "transfer ms", "publish ms", "bytes")
	for rows.Next() {
		var outcome string
		var n int
		var lag, proc, tr, pub float64
		var bytes int64
		if err := rows.Scan(&outcome, &n, &lag, &proc, &tr, &pub, &bytes); err != nil {
			rows.Close()
			return err
		}
		fmt.Fprintf(w, "    %-9s %6d %12.2f %12.2f %12.2f %12.2f %12d\n", outcome, n, lag, proc, tr, pub, bytes)
	}
	rows.Close()
	rows, err = db.QueryContext(ctx, `SELECT replica, COUNT(*) FROM nonqueue.run WHERE outcome = 'done' GROUP BY replica ORDER BY replica`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var rep string
		var n int
		if err := rows.Scan(&rep, &n); err != nil {
			rows.Close()
			return fmt.Errorf("demo summary: %w", err)
		}
		fmt.Fprintf(w, "    replica %s did %d topics\n", rep, n)
	}
	rows.Close()
	var parked int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM app.TopicFilter WHERE parked_at IS NOT NULL").Scan(&parked); err != nil {
		return fmt.Errorf("demo summary: count parked topics: %w", err)
	}
	fmt.Fprintf(w, "    %d topics in %.1fs: %.1f topics/s; %d parked as failed\n", topics, elapsed.Seconds(), float64(topics)/elapsed.Seconds(), parked)
	fmt.Fprintf(w, "    look at a result on the primary (with --keep):\n")
	fmt.Fprintf(w, "      mariadb -S %s -uroot -e 'SELECT * FROM influencer.Dynamics_1 ORDER BY influence_rank LIMIT 5'\n", sb.Primary.Socket)
	fmt.Fprintf(w, "      mariadb -S %s -uroot -e 'SELECT * FROM nonqueue.run ORDER BY id DESC LIMIT 5\\G'\n", sb.Primary.Socket)
	fmt.Fprintf(w, "    run logs (one per topic): %s/runs   worker logs: %s/worker-*.log   config: %s\n", sb.Dir, sb.Dir, cfg)
	return nil
}

func writeTemplate(path string, t *template.Template, data any) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = t.Execute(f, data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
