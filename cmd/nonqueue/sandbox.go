package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"text/template"
	"time"

	"github.com/nonqueue/nonqueue/internal/sandbox"
)

func runSandbox(ctx context.Context, args []string, stdout, stderr io.Writer, logger *slog.Logger) error {
	if len(args) == 0 || (args[0] != "up" && args[0] != "down" && args[0] != "proxy") {
		return errors.New("usage: nonqueue sandbox up --dir DIR [--replicas N] [--tiers T] [--parallel P] [--latency 1ms] | nonqueue sandbox down --dir DIR")
	}
	fs := newFlags("sandbox "+args[0], stderr)
	dir := fs.String("dir", "", "directory for datadirs, keys, logs and the generated config")
	replicas := fs.Int("replicas", 2, "number of replicas of the primary (0-9)")
	tiers, parallel := shapeFlags(fs)
	latency := fs.Duration("latency", 0, "put a simulated network with this round trip (whole milliseconds) between the workers and the primary: a `nonqueue sandbox proxy` process (toxiproxy) relays the primary's MySQL port and sshd, and the generated configs connect through it")
	ready := fs.String("ready", "", "(sandbox proxy) where to write the proxy's ports once it listens")
	if _, err := parseInterleaved(fs, args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("sandbox needs --dir DIR")
	}
	if *latency < 0 || *latency%time.Millisecond != 0 || *latency > time.Second {
		return fmt.Errorf("--latency %v: want whole milliseconds from 0 to 1s (toxiproxy's unit)", *latency)
	}
	if args[0] == "proxy" {
		return runSandboxProxy(ctx, *dir, *latency, *ready)
	}
	if args[0] == "down" {
		if err := sandbox.Down(ctx, *dir); err != nil {
			return fmt.Errorf("sandbox down: %w", err)
		}
		fmt.Fprintf(stdout, "sandbox in %s stopped\n", *dir)
		return nil
	}
	if *replicas < 0 || *replicas > 9 {
		return fmt.Errorf("--replicas %d: want 0 to 9", *replicas)
	}
	if err := checkShapeFlags(*replicas, *tiers, *parallel); err != nil {
		return err
	}
	if err := sandbox.Check(); err != nil {
		return err
	}
	start := time.Now()
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: *dir, Replicas: *replicas, Tiers: *tiers, Parallel: *parallel, Logger: logger})
	if err != nil {
		return fmt.Errorf("sandbox up: %w", err)
	}
	if *latency > 0 {
		err = startSandboxProxy(ctx, sb, *latency)
	}
	var configs []string
	if err == nil {
		configs, err = writeSandboxConfigs(sb)
	}
	if err == nil {
		err = applySandboxSchema(ctx, configs[0])
	}
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		return errors.Join(err, sb.Down(dctx))
	}
	fmt.Fprintf(stdout, "sandbox up in %s (%.1fs)\n", sb.Dir, time.Since(start).Seconds())
	for _, s := range sb.Servers() {
		fmt.Fprintf(stdout, "  %-9s mariadbd pid %-7d 127.0.0.1:%d  server_id %d  socket %s%s\n", s.Name, s.PID, s.Port, s.ServerID, s.Socket, replicationNote(s))
	}
	fmt.Fprintf(stdout, "  %-9s sshd     pid %-7d 127.0.0.1:%d  user %s  known_hosts %s\n", "ssh", sb.SSH.PID, sb.SSH.Port, sb.SSH.User, sb.SSH.KnownHosts)
	if p := sb.Proxy; p != nil {
		fmt.Fprintf(stdout, "  %-9s toxiproxy pid %-6d mysql 127.0.0.1:%d, ssh 127.0.0.1:%d  %s round trip to the primary (the configs use it)\n",
			"network", p.PID, p.MySQLPort, p.SSHPort, p.Latency)
	}
	for _, c := range configs {
		fmt.Fprintf(stdout, "  config    %s\n", c)
	}
	fmt.Fprintf(stdout, "stop it with: nonqueue sandbox down --dir %s\n", sb.Dir)
	return nil
}

// sandboxConfig is the configuration `sandbox up` and `demo` write for
// one replica. With .Demo it maps the demo's TopicFilter table and adds
// what a worker needs to run the demo's procedure.
var sandboxConfig = template.Must(template.New("cfg").Parse(`# nonqueue configuration for {{.Replica.Name}}, written by "nonqueue {{if .Demo}}demo{{else}}sandbox up{{end}}".
# It holds the sandbox's generated passwords: keep it private (mode 0600).

` + sandbox.ConnectionsTOML + `{{if .Demo}}
` + sandbox.MappedTopicsTOML + `
[procedure]
name = "influencer.proc"
marker = "SUMMARY"
timeout = "5m"

[results]
schema = "influencer"
tables = ["Dynamics_{id}", "Post_{id}"]

[worker]
log_dir = "{{.LogDir}}"
{{else}}
[topics]
schema = "nonqueue"
table = "topic"
meta_schema = "nonqueue"
active_values = [1]
lease = "30s"
max_attempts = 5
{{end}}
` + sandbox.SSHTOML))

// writeSandboxConfigs writes DIR/nonqueue.toml for the first replica (or
// the primary when there is none) and DIR/nonqueue-replicaK.toml for the
// others.
func writeSandboxConfigs(sb *sandbox.Sandbox) ([]string, error) {
	targets := sb.Replicas
	if len(targets) == 0 {
		targets = []sandbox.Server{sb.Primary}
	}
	var paths []string
	for i, r := range targets {
		name := "nonqueue.toml"
		if i > 0 {
			name = "nonqueue-replica" + strconv.Itoa(i+1) + ".toml"
		}
		path := filepath.Join(sb.Dir, name)
		if err := writeTemplate(path, sandboxConfig, map[string]any{"SB": sb.Via(), "Replica": r, "Demo": false}); err != nil {
			return nil, err
		}
		paths = append(paths, path)
	}
	return paths, nil
}

func applySandboxSchema(ctx context.Context, path string) error {
	c, err := LoadConfig(path)
	if err != nil {
		return fmt.Errorf("sandbox config: %w", err)
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	return q.ApplySchema(ctx)
}

// shapeFlags declares --tiers and --parallel, shared by `sandbox up` and
// `demo`: the replication shapes of sandbox.Options.
func shapeFlags(fs *flag.FlagSet) (tiers, parallel *int) {
	tiers = fs.Int("tiers", 1, "replication depth: 2 gives each replica of the primary a replica of its own (log_slave_updates on the middle tier)")
	parallel = fs.Int("parallel", 0, "replicas apply with slave_parallel_threads = N in optimistic mode (0: serial)")
	return tiers, parallel
}

// checkShapeFlags checks --replicas, --tiers and --parallel together, with
// the flags' names in the message.
func checkShapeFlags(replicas, tiers, parallel int) error {
	if tiers < 1 || replicas*tiers > 9 {
		return fmt.Errorf("--tiers %d: want 1 or more, with --replicas × --tiers at most 9 (got %d × %d)", tiers, replicas, tiers)
	}
	if tiers > 1 && replicas < 1 {
		return fmt.Errorf("--tiers %d needs --replicas 1 or more", tiers)
	}
	if parallel < 0 || parallel > 64 {
		return fmt.Errorf("--parallel %d: want 0 to 64", parallel)
	}
	return nil
}

// replicationNote says where a replica replicates from and how it applies,
// for the listing `sandbox up` and `demo` print.
func replicationNote(s sandbox.Server) string {
	if s.Source == "" {
		return ""
	}
	note := "  ← " + s.Source
	if s.ParallelThreads > 0 {
		note += fmt.Sprintf(" (%d parallel appliers)", s.ParallelThreads)
	}
	return note
}
