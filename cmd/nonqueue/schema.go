package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nonqueue/nonqueue/queue"
)

func runSchema(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "print" && args[0] != "apply") {
		return errors.New("usage: nonqueue schema print [--config FILE] | nonqueue schema apply --config FILE")
	}
	fs := newFlags("schema "+args[0], stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	if _, err := parseInterleaved(fs, args[1:]); err != nil {
		return err
	}
	cfg := queue.Config{}.WithDefaults()
	var c *Config
	if *path != "" {
		var err error
		if c, err = LoadConfig(*path); err != nil {
			return err
		}
		cfg = c.Topics
	}
	if args[0] == "print" {
		_, err := io.WriteString(stdout, cfg.Script())
		return err
	}
	if err := requireConfig("schema apply", *path); err != nil {
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
	fmt.Fprintf(stdout, "schema applied: topics %s.%s (%s), meta tables in %s\n",
		cfg.Schema, cfg.Table, map[bool]string{true: "mapped", false: "nonqueue's own"}[cfg.Mapped], cfg.MetaSchema)
	return nil
}

func openQueue(ctx context.Context, c *Config) (*queue.Queue, error) {
	mc, err := c.Primary.MySQL("primary")
	if err != nil {
		return nil, err
	}
	return queue.Open(ctx, mc, c.Topics)
}
