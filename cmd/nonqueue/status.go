package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/queue"
)

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	asJSON := fs.Bool("json", false, "print the overview as JSON (durations in nanoseconds), for scripts")
	if _, err := parseInterleaved(fs, args); err != nil {
		return err
	}
	if err := requireConfig("status", *path); err != nil {
		return err
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
	src := &dashboard.Sources{Queue: q, History: &monitor.History{Primary: q.DB(), Schema: c.Topics.MetaSchema}}
	sum, err := src.Summary(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	if err := writeStatus(stdout, sum); err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "\nperiodic refresh: %s\n", c.Topics.RefreshSummary())
	return err
}

// writeStatus prints the overview as aligned tables.
func writeStatus(w io.Writer, s *dashboard.Summary) error {
	t := s.Topics
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, a ...any) { fmt.Fprintf(tw, format, a...) }
	if len(s.Pauses) > 0 {
		// First: a paused fleet must read as paused.
		p("PAUSED\tSCOPE\tBY\tSINCE\tUNTIL\tREASON\n")
		for _, ps := range s.Pauses {
			reason := "-"
			if ps.Reason != "" {
				reason = strconv.Quote(ps.Reason)
			}
			p("pause %d\t%s\t%s\t%s (%s ago)\t%s\t%s\n", ps.ID, ps.Scope, ps.By, ps.CreatedAt.Format("2006-01-02 15:04:05"),
				short(ps.Age), ps.Until(), reason)
		}
		p("(nonqueue resume --config FILE --id ID ends one; runs in flight finish meanwhile)\n\n")
	}
	p("topics %s, required %s; counted in %s at %s (primary's clock)\n\n", format.Thousands(t.Total), format.Thousands(t.Required),
		short(t.Elapsed), t.At.Format("2006-01-02 15:04:05"))
	if len(s.Throttled) > 0 {
		var rs []string
		for _, r := range slices.Sorted(maps.Keys(s.Throttled)) {
			rs = append(rs, fmt.Sprintf("%s (%d instances)", r, s.Throttled[r]))
		}
		p("THROTTLED: the primary is busy, nobody claims or publishes: %s\n\n", strings.Join(rs, ", "))
	}
	p("STATE\tTOPICS\n")
	for _, st := range queue.TopicStates() {
		p("%s\t%s\n", st, format.Thousands(t.States[st]))
	}
	if t.OldestDue.IsZero() {
		p("\nnothing is due\n")
	} else {
		p("\noldest due topic waits %s (due since %s)\n", short(t.OldestDueAge), t.OldestDue.Format("2006-01-02 15:04:05"))
	}
	if len(t.Backlog) > 0 {
		p("\nPRIORITY\tSCOPE\tDUE\tBACKOFF\tSCHEDULED\n")
		for _, b := range t.Backlog {
			p("%d\t%s\t%s\t%s\t%s\n", b.Priority, scopeWord(b.Scope), format.Thousands(b.Due), format.Thousands(b.Backoff), format.Thousands(b.Scheduled))
		}
	}
	p("\nRUNS\tDONE\tFAILED\tOTHER\tFAILURE RATE\tSHIPPED\n")
	for _, r := range []struct {
		name string
		tp   *monitor.Throughput
	}{{"last hour", s.Hour}, {"last 24h", s.Day}} {
		p("%s\t%s\t%s\t%s\t%.1f%%\t%s\n", r.name, format.Thousands(r.tp.Done), format.Thousands(r.tp.Failed), format.Thousands(r.tp.Other), 100*r.tp.FailureRate(), format.Bytes(r.tp.Bytes))
	}
	if ph := s.Phases; ph.Runs > 0 {
		p("\nPHASE\tP50\tP95\tMAX\t(newest %d successful runs of the last hour)\n", ph.Runs)
		for _, r := range []struct {
			name string
			v    monitor.Percentiles
		}{{"claim", ph.Claim}, {"lag wait", ph.LagWait}, {"procedure", ph.Proc}, {"transfer", ph.Transfer}, {"publish", ph.Publish}, {"whole run", ph.Total}} {
			p("%s\t%s\t%s\t%s\t\n", r.name, short(r.v.P50), short(r.v.P95), short(r.v.Max))
		}
	}
	if len(s.Running) > 0 {
		p("\nRUNNING TOPIC\tINSTANCE\tFOR\tHEARTBEAT AGE\n")
		for _, r := range s.Running {
			p("%d\t%d\t%s\t%s\n", r.ID, r.Running, short(r.RunningFor), short(r.HeartbeatAge))
		}
	}
	if len(s.Instances) > 0 {
		var states []string
		for st, n := range s.InstanceStates {
			states = append(states, fmt.Sprintf("%s %d", st, n))
		}
		sort.Strings(states)
		p("\nINSTANCE\tREPLICA\tHOST\tSTATE\tTOPIC\tFOR\tLAST SEEN\tRUNS\tFAILURES\t(%s)\n", strings.Join(states, ", "))
		for _, in := range s.Instances {
			topic, stale := "", ""
			if in.TopicID != 0 {
				topic = strconv.FormatInt(in.TopicID, 10)
			}
			if in.Stale {
				stale = " (silent past the lease)"
			}
			reason := ""
			if in.Reason != "" {
				reason = " (" + in.Reason + ")"
			}
			p("%d\t%d\t%s\t%s%s%s\t%s\t%s\t%s\t%s\t%s\t\n", in.ID, in.ReplicaServerID, in.Host, in.State, reason, stale, topic,
				short(in.StateAge), short(in.LastSeen), format.Thousands(in.Runs), format.Thousands(in.Failures))
		}
	} else {
		p("\nno instance has registered\n")
	}
	if len(s.Followers) > 0 {
		p("\nFOLLOWER\tSTATE\tHOST\tSOURCE\tPOSITION\tDELAY\tEVENTS/S\tREQUESTS/S\tEVENTS\tREQUESTS\tLAST WRITE\n")
		for _, f := range s.Followers {
			state := "none running"
			if f.Active {
				state = "active"
			}
			p("%s\t%s\t%s (pid %d)\t%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%s\n", f.Name, state, f.Host, f.PID, f.Source, f.Pos, short(f.Delay),
				f.EventsPerS, f.RequestsPerS, format.Thousands(f.Events), format.Thousands(f.Requests), f.UpdatedAt.Format("15:04:05"))
		}
	}
	return tw.Flush()
}

func scopeWord(s int) string {
	switch s {
	case queue.ScopePartial:
		return "partial"
	case queue.ScopeFull:
		return "full"
	}
	return strconv.Itoa(s)
}

// short rounds a duration for reading: 850ms, 12.3s, 4m5s.
func short(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
