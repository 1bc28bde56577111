package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
)

// scopeFlags are the scope flags pause and resume share.
type scopeFlags struct {
	replica  string
	priority string
}

func (sf *scopeFlags) define(fs *flag.FlagSet, verb string) {
	fs.StringVar(&sf.replica, "replica", "", verb+" only the workers on the replica with this @@server_id (a positive integer); default every replica")
	fs.StringVar(&sf.priority, "below-priority", "", verb+" only topics whose priority is below N (integer); topics at or above it are still claimed; default every topic")
}

// scope parses the flags into a scope; errors name the flag.
func (sf *scopeFlags) scope() (monitor.PauseScope, error) {
	var s monitor.PauseScope
	if sf.replica != "" {
		id, err := strconv.ParseUint(strings.TrimSpace(sf.replica), 10, 32)
		if err != nil || id == 0 {
			return s, fmt.Errorf("--replica %q: want a replica's @@server_id, a positive integer", sf.replica)
		}
		s.ReplicaServerID = uint32(id)
	}
	if sf.priority != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(sf.priority), 10, 64)
		if err != nil {
			return s, fmt.Errorf("--below-priority %q: want an integer", sf.priority)
		}
		s.BelowPriority = &n
		if err := s.Validate(); err != nil {
			return s, fmt.Errorf("--below-priority: %w", err)
		}
	}
	return s, nil
}

// osActor is who runs the command, as user@host (the user sudo was run by,
// when there is one).
func osActor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if su := os.Getenv("SUDO_USER"); su != "" && name == "root" {
		name = su + " (sudo)"
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return name + "@" + host
}

// pauseTableHint explains an error reading or writing the pause table.
func pauseTableHint(err error, path string) error {
	if errors.Is(err, monitor.ErrNoPauseTable) {
		return fmt.Errorf("%w (nonqueue schema apply --config %s creates it)", err, path)
	}
	return err
}

func runPause(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pause", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	var sf scopeFlags
	sf.define(fs, "pause")
	var forSet bool
	var forDur time.Duration
	fs.Func("for", "end the pause by itself after this `duration` (such as 30m or 2h); default until resumed", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return errors.New("want a duration such as 30m or 2h")
		}
		forSet, forDur = true, d
		return nil
	})
	reason := fs.String("reason", "", fmt.Sprintf("why (shown in status, on the dashboard and in logs; at most %d characters)", monitor.MaxPauseReason))
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: nonqueue pause --config FILE [--replica SERVER_ID] [--below-priority N] [--for DURATION] [--reason TEXT]\n"+
			"Instances claim nothing the pause covers, within one [lag] sample_interval; runs in flight finish.\n"+
			"The pause lives on the primary until nonqueue resume (or the dashboard) ends it, or --for runs out.")
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("pause takes no arguments, got %q (quote a --reason with spaces)", strings.Join(pos, " "))
	}
	if err := requireConfig("pause", *path); err != nil {
		return err
	}
	scope, err := sf.scope()
	if err != nil {
		return err
	}
	if forSet && forDur <= 0 {
		return fmt.Errorf("--for %v: want a positive duration, such as 30m", forDur)
	}
	if forDur > monitor.MaxPauseFor {
		return fmt.Errorf("--for %v: at most %v; leave --for out to pause until resumed", forDur, monitor.MaxPauseFor)
	}
	p := &monitor.PauseParams{Scope: scope, By: osActor(), Reason: strings.TrimSpace(*reason), For: forDur}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("--reason: %w", err)
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	ps := &monitor.Pauses{Primary: q.DB(), Schema: c.Topics.MetaSchema}
	added, err := ps.Add(ctx, p)
	if err != nil {
		return pauseTableHint(err, *path)
	}
	fmt.Fprintf(stdout, "paused: %s\n", added)
	if others, err := ps.Active(ctx); err == nil {
		for _, o := range others {
			if o.ID != added.ID {
				fmt.Fprintf(stdout, "also in force: %s\n", o)
			}
		}
	}
	fmt.Fprintf(stdout, "Workers it covers claim nothing it covers within %v; runs in flight finish (nonqueue status shows them).\n",
		c.gateConfig().SampleInterval)
	if scope.ReplicaServerID != 0 {
		h := &monitor.History{Primary: q.DB(), Schema: c.Topics.MetaSchema}
		if ins, err := h.Instances(ctx); err == nil {
			known := false
			for _, in := range ins {
				known = known || in.ReplicaServerID == scope.ReplicaServerID
			}
			if !known {
				fmt.Fprintf(stdout, "note: no instance of a replica with server_id %d has registered; the pause applies when one starts\n", scope.ReplicaServerID)
			}
		}
	}
	return nil
}

func runResume(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("resume", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	var sf scopeFlags
	sf.define(fs, "resume the pause of")
	id := fs.String("id", "", "resume the pause with this id (as status shows it), whatever its scope")
	all := fs.Bool("all", false, "resume every pause in force, whatever its scope")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: nonqueue resume --config FILE [--replica SERVER_ID] [--below-priority N] | --id ID | --all\n"+
			"Ends the pauses of exactly the scope given (no scope flag: the pauses of everything), one pause\n"+
			"by --id, or every pause (--all). Instances claim again within one [lag] sample_interval.")
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("resume takes no arguments, got %q", strings.Join(pos, " "))
	}
	if err := requireConfig("resume", *path); err != nil {
		return err
	}
	scope, err := sf.scope()
	if err != nil {
		return err
	}
	rp := &monitor.ResumeParams{Scope: scope, All: *all, By: osActor()}
	if *id != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(*id), 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("--id %q: want a pause id, a positive integer", *id)
		}
		rp.ID = n
	}
	scoped := sf.replica != "" || sf.priority != ""
	if (rp.ID != 0 && (*all || scoped)) || (*all && scoped) {
		return errors.New("give one of: scope flags (--replica, --below-priority), --id, --all")
	}
	c, err := LoadConfig(*path)
	if err != nil {
		return err
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	ps := &monitor.Pauses{Primary: q.DB(), Schema: c.Topics.MetaSchema}
	ended, err := ps.Resume(ctx, rp)
	if err != nil {
		return pauseTableHint(err, *path)
	}
	for _, p := range ended {
		fmt.Fprintf(stdout, "resumed: %s\n", p)
	}
	if len(ended) == 0 {
		switch {
		case rp.ID != 0:
			fmt.Fprintf(stdout, "nothing to resume: no pause %d in force\n", rp.ID)
		case rp.All:
			fmt.Fprintln(stdout, "nothing to resume: no pause in force")
		default:
			fmt.Fprintf(stdout, "nothing to resume: no pause of %s in force\n", scope)
		}
	}
	left, err := ps.Active(ctx)
	if err != nil {
		return err
	}
	for _, p := range left {
		fmt.Fprintf(stdout, "still in force: %s (nonqueue resume --id %d ends it)\n", p, p.ID)
	}
	if len(ended) > 0 && len(left) == 0 {
		fmt.Fprintf(stdout, "No pause is in force: workers claim again within %v.\n", c.gateConfig().SampleInterval)
	}
	return nil
}
