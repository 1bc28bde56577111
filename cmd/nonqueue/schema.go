package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

func runSchema(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "print" && args[0] != "apply") {
		return errors.New("usage: nonqueue schema print [--config FILE] | nonqueue schema apply --config FILE [--allow-blocking] [--lock-wait D]")
	}
	fs := newFlags("schema "+args[0], stderr)
	path := fs.String("config", "", "configuration file (TOML)")
	var allowBlocking *bool
	var lockWait *time.Duration
	if args[0] == "apply" {
		allowBlocking = fs.Bool("allow-blocking", false, "run changes MariaDB cannot make online (they copy the table or keep its writers waiting)")
		lockWait = fs.Duration("lock-wait", queue.DefaultLockWait, "how long each ALTER waits for the table's metadata lock before giving up (writers queue behind it meanwhile)")
	}
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
	if *lockWait < time.Second {
		return fmt.Errorf("--lock-wait %v: want at least 1s", *lockWait)
	}
	q, err := openQueue(ctx, c)
	if err != nil {
		return err
	}
	defer q.Close()
	start := time.Now()
	plan, err := q.ApplySchemaWith(ctx, queue.ApplyOptions{AllowBlocking: *allowBlocking, LockWait: *lockWait})
	var be *queue.BlockingError
	if errors.As(err, &be) {
		fmt.Fprintf(stdout, "schema apply refused: changes with no online path\n%s\n"+
			"Nothing blocking ran. Either rerun with --allow-blocking (at a quiet time: the table's writers wait),\n"+
			"or make the change with gh-ost or pt-online-schema-change (the commands are at the end of\n"+
			"`nonqueue schema print --config FILE`) and then run schema apply again.\n", be.Plan)
		return err
	}
	if err != nil {
		return err
	}
	switch {
	case plan != nil && len(plan.Steps) > 0:
		fmt.Fprintf(stdout, "ran without an online path (--allow-blocking):\n%s", plan)
	case plan != nil:
		fmt.Fprintf(stdout, "left out, with no online path on this table: the %s column (per-topic refresh intervals);\n"+
			"every topic takes [topics] refresh_interval. To add it, rerun with --allow-blocking at a quiet time,\n"+
			"or use the gh-ost or pt-online-schema-change command of `nonqueue schema print --config FILE`.\n%s",
			cfg.Columns.Refresh, plan)
	}
	took := time.Since(start)
	fmt.Fprintf(stdout, "schema applied in %.1fs: topics %s.%s (%s), meta tables in %s\n",
		took.Seconds(), cfg.Schema, cfg.Table, map[bool]string{true: "mapped", false: "nonqueue's own"}[cfg.Mapped], cfg.MetaSchema)
	if cfg.Mapped && took > time.Second {
		// The index build ran online here, but a serial replica replays
		// it as one event after the primary is done.
		fmt.Fprintf(stdout, "a replica with parallel replication (slave_parallel_threads > 0) built the indexes alongside;\n"+
			"a serial one replays the build now and lags about %.0fs behind while it runs\n", took.Seconds())
	}
	return nil
}

func openQueue(ctx context.Context, c *Config) (*queue.Queue, error) {
	mc, err := c.Primary.MySQL("primary")
	if err != nil {
		return nil, err
	}
	return queue.Open(ctx, mc, c.Topics)
}
