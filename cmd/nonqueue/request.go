package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/sqlcheck"
	"github.com/nonqueue/nonqueue/queue"
)

func runRequest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("request", stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	scope := fs.String("scope", "full", "full or partial (or 2, 1): what the procedure recomputes")
	after := fs.Duration("after", 0, "not before now + this duration (primary's clock)")
	at := fs.String("at", "", "not before this time, RFC 3339 (2026-12-01T10:00:00Z); exclusive with --after")
	prio := fs.String("priority", "", "set the topics' priority (integer); unset keeps it")
	query := fs.String("query", "", "take topic ids from the first (integer) column of this query, a single plain SELECT, run read-only on the primary")
	create := fs.Bool("create", false, "insert ids the topic table lacks instead of reporting them")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: nonqueue request --config FILE [flags] [ID...]\nIds come from the arguments, a comma-separated list, or --query.")
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := requireConfig("request", *path); err != nil {
		return err
	}
	p := &queue.RequestParams{Create: *create}
	switch strings.ToLower(*scope) {
	case "full", "2":
		p.Scope = queue.ScopeFull
	case "partial", "1":
		p.Scope = queue.ScopePartial
	default:
		return fmt.Errorf("--scope %q: want full or partial", *scope)
	}
	if *at != "" && *after != 0 {
		return errors.New("--at and --after exclude each other")
	}
	p.Delay = *after
	if *at != "" {
		when, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("--at: %w", err)
		}
		p.Delay = max(0, time.Until(when))
	}
	if p.Delay < 0 {
		return errors.New("--after must not be negative")
	}
	if *prio != "" {
		v, err := strconv.ParseInt(*prio, 10, 64)
		if err != nil {
			return fmt.Errorf("--priority %q: not an integer", *prio)
		}
		p.Priority = &v
	}
	for _, a := range pos {
		for _, f := range strings.Split(a, ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			id, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return fmt.Errorf("topic id %q: not an integer", f)
			}
			if id <= 0 {
				return fmt.Errorf("topic id %d: %w", id, queue.ErrBadID)
			}
			p.IDs = append(p.IDs, id)
		}
	}
	if len(p.IDs) == 0 && *query == "" {
		return errors.New("no topic ids: give ids or --query")
	}
	if *query != "" {
		// Refused here already, before the configuration is read or a
		// connection opened; IDsFromQuery checks again.
		if _, err := sqlcheck.PlainSelect(*query); err != nil {
			return fmt.Errorf("--query: %w", err)
		}
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
	if *query != "" {
		ids, err := q.IDsFromQuery(ctx, *query)
		if err != nil {
			return err
		}
		p.IDs = append(p.IDs, ids...)
	}
	res, err := q.Request(ctx, p)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "requested %d topics (scope %s)\n", res.Requested, map[int]string{1: "partial", 2: "full"}[p.Scope])
	if len(res.Missing) > 0 {
		shown := res.Missing[:min(len(res.Missing), 20)]
		return fmt.Errorf("%d ids are not in the topic table (use --create to insert them): %v", len(res.Missing), shown)
	}
	return nil
}
