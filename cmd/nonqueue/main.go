// Command nonqueue spreads a heavy stored-procedure recompute across
// MariaDB replicas with no controller. See the README for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

const usage = `nonqueue: spread a stored-procedure recompute across MariaDB replicas.

Usage:
  nonqueue schema print [--config FILE]     show the DDL for the configured topic table
  nonqueue schema apply --config FILE [--allow-blocking]
                                            create or extend the tables (idempotent, online;
                                            refuses a change that would block a live table)
  nonqueue request --config FILE [flags] ID...
                                            mark topics for recalc (see nonqueue request -h)
  nonqueue work --config FILE (--instances N | --instance K)
                                            run worker instances on this replica host
  nonqueue pause --config FILE [--replica SERVER_ID] [--below-priority N] [--for 30m] [--reason TEXT]
                                            stop claims (all, one replica's, or below a priority)
                                            within one sample interval; runs in flight finish
  nonqueue resume --config FILE [--replica SERVER_ID] [--below-priority N] | --id ID | --all
                                            end pauses (see nonqueue resume -h)
  nonqueue follow --config FILE [--metrics-listen ADDR]
                                            follow the binlog: request the topics whose
                                            source rows change ([[follow]] tables)
  nonqueue check --config FILE [--grants]   check everything a worker needs, in plain words,
                                            and print the least GRANTs (--grants: only those)
  nonqueue status --config FILE [--json]    the overview: topics by state, backlog, runs, instances
  nonqueue dashboard --config FILE [--listen ADDR] [--prefix /PATH]
                                            serve the ops dashboard (web; default 127.0.0.1:8080)
  nonqueue sandbox up --dir DIR [--replicas N] [--tiers T] [--parallel P] [--latency 1ms]
                                            start a local primary, replicas and sshd (--tiers 2:
                                            replicas of replicas; --parallel: parallel appliers;
                                            --latency: a simulated network to the primary)
  nonqueue sandbox down --dir DIR           stop what sandbox up started
  nonqueue demo [--keep] [--topics N] [--instances N] [--tiers T] [--parallel P]
                                            the whole system on a local sandbox, end to end
  nonqueue version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nonqueue:", err)
		os.Exit(1)
	}
}

// Run executes one command line. Only main exits.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "schema":
		return runSchema(ctx, args[1:], stdout, stderr)
	case "request":
		return runRequest(ctx, args[1:], stdout, stderr)
	case "work":
		return runWork(ctx, args[1:], stdout, stderr)
	case "pause":
		return runPause(ctx, args[1:], stdout, stderr)
	case "resume":
		return runResume(ctx, args[1:], stdout, stderr)
	case "follow":
		return runFollow(ctx, args[1:], stdout, stderr)
	case "check":
		return runCheck(ctx, args[1:], stdout, stderr, logger)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "dashboard":
		return runDashboard(ctx, args[1:], stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr, logger)
	case "sandbox":
		return runSandbox(ctx, args[1:], stdout, stderr, logger)
	case "version":
		fmt.Fprintln(stdout, "nonqueue", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// parseInterleaved parses flags that may come before or after positional
// arguments ("request 1 2 --config f").
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("nonqueue "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// requireConfig is the error of a command run without --config.
func requireConfig(cmd, path string) error {
	if path == "" {
		return fmt.Errorf("%s needs --config FILE", cmd)
	}
	return nil
}

// textLogger is the logger of the long-running commands, at the level
// their --log-level flag names.
func textLogger(stderr io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv})), nil
}
