package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// check is one line of `nonqueue check`.
type check struct {
	name string
	run  func(ctx context.Context) (string, error)
	// fatal: when it fails, nothing after it can be checked.
	fatal bool
}

// warning is a check's finding that does not fail `nonqueue check`: the
// setting works, but an operator should know its risk.
type warning struct{ err error }

func (w warning) Error() string { return w.err.Error() }
func (w warning) Unwrap() error { return w.err }

func runCheck(ctx context.Context, args []string, stdout, stderr io.Writer, logger *slog.Logger) error {
	fs := newFlags("check", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	grantsOnly := fs.Bool("grants", false, "print only the GRANT statements the configured accounts need")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if err := requireConfig("check", *path); err != nil {
		return err
	}
	c, err := LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stdout, "FAIL  configuration: %v\n", err)
		return errors.New("check failed")
	}
	if *grantsOnly {
		probes := probeGrants(ctx, c)
		writeGrants(stdout, groupAccounts(c, probes), probes)
		return nil
	}
	// A follower-only host (nonqueue follow, no worker sections) checks
	// only what the follower uses.
	followOnly := c.followOnly()
	if err := c.validateWorker(); err != nil && !followOnly {
		fmt.Fprintf(stdout, "FAIL  configuration: %v\n", err)
		return errors.New("check failed")
	}
	fmt.Fprintf(stdout, "ok    configuration %s\n", *path)
	quiet := slog.New(slog.DiscardHandler)
	var n *node
	privChecks, accounts, probes := grantChecks(ctx, c)
	checks := append(privChecks, []check{
		{name: "connect to primary, replica and SSH", fatal: true, run: func(ctx context.Context) (string, error) {
			var err error
			n, err = openNode(ctx, c, 1, quiet)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("replica server_id %d, %s flavor, datadir %s; SSH host key of %s verified", n.serverID, n.flavor.Name(), n.datadir, c.SSH.Host), nil
		}},
		{name: "instance ids", run: func(ctx context.Context) (string, error) {
			id, err := c.Worker.InstanceID(n.serverID, 1)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("instance 1 is %d", id), nil
		}},
		{name: "topic table and nonqueue's tables on the primary", run: func(ctx context.Context) (string, error) {
			if err := n.queue.CheckSchema(ctx); err != nil {
				return "", fmt.Errorf("%w (run: nonqueue schema apply --config %s)", err, *path)
			}
			return fmt.Sprintf("%s.%s, meta schema %s", c.Topics.Schema, c.Topics.Table, c.Topics.MetaSchema), nil
		}},
		{name: "periodic refresh", run: func(ctx context.Context) (string, error) {
			msg, err := n.queue.CheckRefresh(ctx)
			if errors.Is(err, queue.ErrNoRefreshColumn) {
				return "", warning{err} // works: every topic takes the configured interval
			}
			return msg, err
		}},
		{name: "replication", run: func(ctx context.Context) (string, error) {
			if err := n.gate.RunOnce(ctx); err != nil {
				return "", err
			}
			st := n.gate.Status()
			if !st.IORunning || !st.SQLRunning {
				return "", fmt.Errorf("replication threads not running (IO %v, SQL %v) %s%s", st.IORunning, st.SQLRunning, st.LastIOError, st.LastSQLError)
			}
			return fmt.Sprintf("IO and SQL threads running, Seconds_Behind_Master %v", st.SecondsBehind.Int64), nil
		}},
		{name: "pauses", run: func(ctx context.Context) (string, error) {
			// The pause watch's own read: the table is readable, and a
			// pause covering this replica is worth a warning.
			if err := n.pause.RunOnce(ctx); err != nil {
				return "", err
			}
			in, _ := n.pause.InForce()
			if len(in) == 0 {
				return "none in force for this replica", nil
			}
			var ps []string
			for _, p := range in {
				ps = append(ps, p.String())
			}
			return "", warning{fmt.Errorf("in force for this replica (nonqueue resume ends them): %s", strings.Join(ps, "; "))}
		}},
		{name: "replica's GTID domain", run: func(ctx context.Context) (string, error) {
			msg, err := monitor.CheckLocalDomain(ctx, n.flavor, n.primary, n.replica)
			if errors.Is(err, monitor.ErrSharedDomain) {
				return "", warning{err}
			}
			return msg, err
		}},
		{name: "primary throttle", run: func(ctx context.Context) (string, error) {
			return checkThrottle(ctx, c.throttleConfig(), n)
		}},
		{name: "procedure", run: func(ctx context.Context) (string, error) {
			if err := n.runner.Exists(ctx); err != nil {
				return "", err
			}
			return c.Procedure.Name + " exists on the replica", nil
		}},
		{name: "result tables", run: func(ctx context.Context) (string, error) {
			return fmt.Sprintf("%s.%s for topic 1", c.Results.Schema, strings.Join(c.transferConfig().TableNames(1), ", ")), nil
		}},
		{name: "primary datadir over SFTP", run: func(ctx context.Context) (string, error) {
			if err := n.shipper.CheckDatadir(ctx); err != nil {
				return "", err
			}
			return "can write " + filepath.Join(c.SSH.Datadir, c.Results.Schema), nil
		}},
		{name: "copy verification", run: func(ctx context.Context) (string, error) {
			return n.shipper.CheckVerify(ctx)
		}},
		{name: "run log directory", run: func(ctx context.Context) (string, error) {
			if err := os.MkdirAll(c.Worker.LogDir, 0o750); err != nil {
				return "", err
			}
			f, err := os.CreateTemp(c.Worker.LogDir, ".nonqueue-check-*")
			if err != nil {
				return "", err
			}
			f.Close()
			os.Remove(f.Name())
			return c.Worker.LogDir + " writable", nil
		}},
	}...)
	if followOnly {
		checks = privChecks
	}
	checks = append(checks, followChecks(c, *path)...)
	defer func() {
		if n != nil {
			n.close()
		}
	}()
	failed := 0
	for _, ch := range checks {
		msg, err := ch.run(ctx)
		var warn warning
		if errors.As(err, &warn) {
			fmt.Fprintf(stdout, "WARN  %s: %v\n", ch.name, warn.err)
			continue
		}
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "FAIL  %s: %v\n", ch.name, err)
			if ch.fatal {
				break // nothing else can be checked without connections
			}
			continue
		}
		fmt.Fprintf(stdout, "ok    %s: %s\n", ch.name, msg)
	}
	writeGrants(stdout, accounts, probes)
	if failed > 0 {
		return fmt.Errorf("check failed: %d problem(s)", failed)
	}
	return nil
}

// checkThrottle reads what the throttle would: the primary's
// Threads_running and the throttle URL's answer. A reading that closes the
// throttle now is a warning (the check works; the primary is busy); a URL
// that does not answer, or answers in a way no freno-style check does, is
// a failure.
func checkThrottle(ctx context.Context, tc monitor.ThrottleConfig, n *node) (string, error) {
	if !tc.Enabled() && tc.MaxConcurrentPublishes == 0 {
		return "off (no [throttle] check configured)", nil
	}
	var parts, closed []string
	if tc.MaxThreadsRunning > 0 {
		tr, err := monitor.ReadThreadsRunning(ctx, n.primary)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("Threads_running %d (limit %d)", tr, tc.MaxThreadsRunning))
		if tr > int64(tc.MaxThreadsRunning) {
			closed = append(closed, fmt.Sprintf("Threads_running %d is over max_threads_running %d", tr, tc.MaxThreadsRunning))
		}
	}
	if tc.URL != "" {
		start := time.Now()
		code, err := monitor.ProbeURL(ctx, nil, tc.URL, tc.URLTimeout)
		if err != nil {
			return "", fmt.Errorf("throttle_url (timeout %v): %w", tc.URLTimeout, err)
		}
		parts = append(parts, fmt.Sprintf("throttle URL answered %d in %v", code, time.Since(start).Round(time.Millisecond)))
		if code != http.StatusOK {
			closed = append(closed, fmt.Sprintf("throttle URL answered %d, not 200", code))
		}
	}
	if tc.MaxConcurrentPublishes > 0 {
		parts = append(parts, fmt.Sprintf("at most %d publishes at once", tc.MaxConcurrentPublishes))
	}
	if len(closed) > 0 {
		return "", warning{fmt.Errorf("the throttle is closed now, workers would wait: %s", strings.Join(closed, "; "))}
	}
	return strings.Join(parts, "; "), nil
}
