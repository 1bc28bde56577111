package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/nonqueue/nonqueue/monitor"
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
		{name: "replica's GTID domain", run: func(ctx context.Context) (string, error) {
			msg, err := monitor.CheckLocalDomain(ctx, n.flavor, n.primary, n.replica)
			if errors.Is(err, monitor.ErrSharedDomain) {
				return "", warning{err}
			}
			return msg, err
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
