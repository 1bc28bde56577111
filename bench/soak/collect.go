package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nonqueue/nonqueue/transfer"
)

// quiesce makes sure every fault is over: workers running and not
// stopped, replication running on every replica, no toxic on the links.
// The faults revert themselves; this is the safety net.
func (s *soak) quiesce(ctx context.Context) error {
	for k := range s.sb.Replicas {
		s.wmu.Lock()
		w := s.workers[k]
		if w.proc != nil && !w.proc.Exited() {
			_ = syscall.Kill(w.proc.Pid(), syscall.SIGCONT)
		}
		s.wmu.Unlock()
		if err := s.startWorker(ctx, k); err != nil {
			return err
		}
	}
	for _, l := range []string{"soak_timeout", "soak_reset_peer"} {
		_ = s.route.MySQL.Proxy().Toxics.RemoveToxic(ctx, l)
		_ = s.route.SSH.Proxy().Toxics.RemoveToxic(ctx, l)
	}
	for i, r := range s.replicas {
		if err := retry(ctx, time.Minute, func() error { _, err := r.ExecContext(ctx, "START SLAVE"); return err }); err != nil {
			return fmt.Errorf("start slave on replica%d: %w", i+1, err)
		}
	}
	return nil
}

// primaryNow reads the primary's clock (as the run history records time),
// retrying while it restarts.
func (s *soak) primaryNow(ctx context.Context) (string, error) {
	var now string
	err := retry(ctx, time.Minute, func() error {
		return s.primary.QueryRowContext(ctx, "SELECT CAST(NOW(6) AS CHAR)").Scan(&now)
	})
	if err != nil {
		return "", fmt.Errorf("read the primary's clock: %w", err)
	}
	return now, nil
}

// retry calls fn until it succeeds or limit passes (the primary may be
// restarting).
func retry(ctx context.Context, limit time.Duration, fn func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		_ = sleepCtx(ctx, 200*time.Millisecond)
	}
}

// drainSQL counts the topics the fleet still has to do: required and not
// parked, or held.
const drainSQL = `SELECT COUNT(*) FROM app.TopicFilter
 WHERE (influencerRecalcReqd > 0 AND parked_at IS NULL) OR influencerRunning <> 0`

// drain waits until the fleet has nothing left to do, at most Drain.
func (s *soak) drain(ctx context.Context) (bool, error) {
	t0 := time.Now()
	deadline := t0.Add(s.opt.Drain)
	last, said := -1, time.Time{}
	for {
		var n int
		err := s.primary.QueryRowContext(ctx, drainSQL).Scan(&n)
		if err == nil && n == 0 {
			s.info("drained in %.1fs", time.Since(t0).Seconds())
			return true, nil
		}
		if err == nil && n != last && time.Since(said) >= 2*time.Second {
			s.info("%d topics left", n)
			last, said = n, time.Now()
		}
		if time.Now().After(deadline) {
			s.info("NOT drained after %v: %d topics left (err %v)", s.opt.Drain, n, err)
			return false, nil
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return false, err
		}
	}
}

// collect reads the history back after the workers stopped, sweeps what
// the workers' own cleanup would sweep after its window, and runs the
// replication checks.
func (s *soak) collect(ctx context.Context, _ *load, f *faults) (*History, error) {
	h := &History{MaxAttempts: s.opt.MaxAttempts, Calls: map[int64]Call{}}
	s.log.mu.Lock()
	h.Requests = append(h.Requests, s.log.requests...)
	h.Torn = append(h.Torn, s.log.torn...)
	h.Reads = s.log.reads
	h.Seen = append(h.Seen, s.log.seen...)
	h.Faults = append(h.Faults, s.log.faults...)
	s.log.mu.Unlock()
	s.info("faults: %s", faultSummary(h.Faults))

	for i, r := range s.replicas {
		var sid int64
		if err := r.QueryRowContext(ctx, "SELECT @@server_id").Scan(&sid); err != nil {
			return nil, err
		}
		rows, err := r.QueryContext(ctx, "SELECT seq, topic_id, claim_token, claimed_version FROM "+callTable)
		if err != nil {
			return nil, fmt.Errorf("read the calls on replica%d: %w", i+1, err)
		}
		for rows.Next() {
			var seq int64
			c := Call{Replica: s.sb.Replicas[i].Name}
			if err := rows.Scan(&seq, &c.Topic, &c.Token, &c.ClaimedVersion); err != nil {
				rows.Close()
				return nil, err
			}
			c.Tag = sid*1_000_000_000 + seq
			h.Calls[c.Tag] = c
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	rows, err := s.primary.QueryContext(ctx, "SELECT topic_id, claim_token, outcome, finished_at BETWEEN ? AND ? FROM nonqueue.run ORDER BY id",
		s.window[0], s.window[1])
	if err != nil {
		return nil, fmt.Errorf("read the run history: %w", err)
	}
	for rows.Next() {
		var r Run
		if err := rows.Scan(&r.Topic, &r.Token, &r.Outcome, &r.InSoak); err != nil {
			rows.Close()
			return nil, err
		}
		h.Runs = append(h.Runs, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = s.primary.QueryContext(ctx, `SELECT topicFilterId, influencerRecalcReqd, influencerRunning, claim_token, request_version,
 claimed_version, parked_at IS NOT NULL FROM app.TopicFilter ORDER BY topicFilterId`)
	if err != nil {
		return nil, fmt.Errorf("read the topics: %w", err)
	}
	for rows.Next() {
		var t Topic
		if err := rows.Scan(&t.ID, &t.Required, &t.Running, &t.Token, &t.RequestVersion, &t.ClaimedVersion, &t.Parked); err != nil {
			rows.Close()
			return nil, err
		}
		h.Topics = append(h.Topics, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range h.Topics {
		rd, err := s.readTopic(ctx, h.Topics[i].ID)
		if err != nil {
			return nil, fmt.Errorf("read topic %d's published tables: %w", h.Topics[i].ID, err)
		}
		h.Topics[i].Tags = rd.Tags
	}
	if h.StagingLeft, err = s.sweep(ctx); err != nil {
		return nil, err
	}
	if h.Errant, err = s.errantGTIDs(ctx); err != nil {
		return nil, err
	}
	h.ChecksumDiffs, err = s.checksum(ctx)
	if err != nil {
		h.ChecksumErr = err.Error()
	}
	return h, nil
}

// sweep runs the workers' own cleanup (transfer.Shipper's CleanupPrimary
// and CleanupReplica, which a worker runs at start and every 10 minutes
// for what is older than an hour) with a zero window, standing in for the
// hour, and returns what is still there: staging tables and files on the
// primary and result tables on the replicas.
func (s *soak) sweep(ctx context.Context) ([]string, error) {
	sh, err := transfer.NewShipper(transfer.Config{
		SSH: transfer.SSHConfig{Host: s.sb.SSH.Host, Port: s.sb.SSH.Port, User: s.sb.SSH.User,
			KeyFile: s.sb.SSH.KeyFile, KnownHosts: s.sb.SSH.KnownHosts},
		PrimaryDatadir: s.sb.Primary.Datadir, Schema: "influencer", Tables: []string{"Dynamics_{id}", "Post_{id}"},
		NoBinlogPools: true,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer sh.Close()
	before, err := s.staging(ctx)
	if err != nil {
		return nil, err
	}
	if err := sh.CleanupPrimary(ctx, s.primaryNoBin, 0); err != nil {
		return nil, fmt.Errorf("sweep the primary: %w", err)
	}
	var replicaLeft int
	for i, r := range s.replicas {
		ids, err := sh.CleanupReplica(ctx, r, 0)
		if err != nil {
			return nil, fmt.Errorf("sweep replica%d: %w", i+1, err)
		}
		replicaLeft += len(ids)
	}
	after, err := s.staging(ctx)
	if err != nil {
		return nil, err
	}
	s.info("cleanup sweep: %d staging tables or files on the primary and the result tables of %d topics on the replicas before it; %d left",
		len(before), replicaLeft, len(after))
	for i, b := range before {
		if i == maxDetails {
			s.info("  …")
			break
		}
		s.info("  before the sweep: %s", b)
	}
	return after, nil
}

// staging lists staging tables on the primary, staging files in its
// datadir, and result tables on the replicas.
func (s *soak) staging(ctx context.Context) ([]string, error) {
	var out []string
	rows, err := s.primary.QueryContext(ctx, `SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'influencer'
 AND (TABLE_NAME LIKE 'nqtmp\_%' OR TABLE_NAME LIKE 'nqold\_%')`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, "primary table influencer."+n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(s.sb.Primary.Datadir, "influencer"))
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "nqtmp_") || strings.HasPrefix(n, "nqold_") {
			out = append(out, "primary file influencer/"+n)
		}
	}
	for i, r := range s.replicas {
		rows, err := r.QueryContext(ctx, `SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'influencer'
 AND (TABLE_NAME LIKE 'Post\_%' OR TABLE_NAME LIKE 'Dynamics\_%')`)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return nil, err
			}
			out = append(out, fmt.Sprintf("replica%d table influencer.%s", i+1, n))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// errantGTIDs lists the entries of each replica's gtid_binlog_state that
// are not the primary's: the primary writes domain 0 with its server_id,
// and every write nonqueue makes on a replica runs with sql_log_bin=0, so
// a replica's own binary log holds nothing else.
func (s *soak) errantGTIDs(ctx context.Context) ([]string, error) {
	var out []string
	want := fmt.Sprintf("0-%d-", s.sb.Primary.ServerID)
	for i, r := range s.replicas {
		var state string
		if err := retry(ctx, time.Minute, func() error {
			return r.QueryRowContext(ctx, "SELECT @@gtid_binlog_state").Scan(&state)
		}); err != nil {
			return nil, fmt.Errorf("read replica%d's GTID state: %w", i+1, err)
		}
		for _, g := range strings.Split(state, ",") {
			if g = strings.TrimSpace(g); g != "" && !strings.HasPrefix(g, want) {
				out = append(out, fmt.Sprintf("replica%d: %s", i+1, g))
			}
		}
	}
	return out, nil
}

// checksum runs pt-table-checksum on the primary over the replicated
// schemas (app: the topic table and the source rows; nonqueue: the run
// history and the registry) and returns the number of chunks that differ
// on a replica. The replicas are given to it as a DSN table.
func (s *soak) checksum(ctx context.Context) (int, error) {
	bin, err := exec.LookPath("pt-table-checksum")
	if err != nil {
		return 0, errors.New("pt-table-checksum not found: apt-get install -y percona-toolkit (or make deps)")
	}
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS percona",
		"CREATE TABLE IF NOT EXISTS percona.dsns (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT, dsn VARCHAR(255) NOT NULL)",
		"DELETE FROM percona.dsns",
	}
	for _, r := range s.sb.Replicas {
		stmts = append(stmts, fmt.Sprintf("INSERT INTO percona.dsns (dsn) VALUES ('h=%s,P=%d')", r.Host, r.Port))
	}
	for _, st := range stmts {
		if _, err := s.primary.ExecContext(ctx, st); err != nil {
			return 0, fmt.Errorf("prepare: %w", err)
		}
	}
	if err := s.waitReplicas(ctx, time.Minute); err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	p := s.sb.Primary
	cmd := exec.CommandContext(cctx, bin,
		fmt.Sprintf("h=%s,P=%d,u=%s", p.Host, p.Port, s.sb.User),
		"--databases", "app,nonqueue", "--replicate", "percona.checksums",
		"--recursion-method", "dsn=D=percona,t=dsns", "--no-check-binlog-format", "--no-version-check")
	cmd.Env = append(os.Environ(), "MYSQL_PWD="+s.sb.Password)
	out, err := cmd.CombinedOutput()
	logPath := filepath.Join(s.dir, "soak", "pt-table-checksum.log")
	_ = os.WriteFile(logPath, out, 0o600)
	diffs, errs, tables := parseChecksum(string(out))
	s.info("pt-table-checksum: %d tables, %d chunks differ, %d errors (log %s)", tables, diffs, errs, logPath)
	if tables == 0 {
		return 0, fmt.Errorf("no table checksummed (%v): %s", err, tail(string(out)))
	}
	if errs > 0 {
		return diffs, fmt.Errorf("%d errors (%v): %s", errs, err, tail(string(out)))
	}
	// Its exit status is non-zero when it finds a difference; the DIFFS
	// column is what counts.
	return diffs, nil
}

// parseChecksum sums the ERRORS and DIFFS columns of pt-table-checksum's
// report: "TS ERRORS DIFFS ROWS DIFF_ROWS CHUNKS SKIPPED TIME TABLE".
func parseChecksum(out string) (diffs, errs, tables int) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 9 || !strings.Contains(f[8], ".") {
			continue
		}
		e, err1 := strconv.Atoi(f[1])
		d, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		errs += e
		diffs += d
		tables++
	}
	return diffs, errs, tables
}

func tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 600 {
		s = "…" + s[len(s)-600:]
	}
	return s
}
