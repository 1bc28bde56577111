package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/nonqueue/nonqueue/worker/follow"
)

// followChecks are check's lines for the binlog follower ([[follow]]): the
// source's binary log settings, the followed tables, the follower's row on
// the primary. Each says plainly why the setup cannot work.
func followChecks(c *Config, path string) []check {
	if len(c.Follow) == 0 {
		return nil
	}
	srv, section := c.followSource()
	open := func(ctx context.Context) (*sql.DB, error) {
		mc, err := srv.MySQL(section)
		if err != nil {
			return nil, err
		}
		p, err := openPool(mc, 2)
		if err != nil {
			return nil, err
		}
		if err := p.PingContext(ctx); err != nil {
			p.Close()
			return nil, fmt.Errorf("connect to the %s %s: %w", section, srv.addr(), err)
		}
		return p, nil
	}
	return []check{
		{name: "binlog follower: the " + section + "'s binary log", run: func(ctx context.Context) (string, error) {
			db, err := open(ctx)
			if err != nil {
				return "", err
			}
			defer db.Close()
			return checkFollowBinlog(ctx, db, section, c.Follow)
		}},
		{name: "binlog follower: followed tables", run: func(ctx context.Context) (string, error) {
			db, err := open(ctx)
			if err != nil {
				return "", err
			}
			defer db.Close()
			return checkFollowTables(ctx, db, section, c.Follow)
		}},
		{name: "binlog follower: position on the primary", run: func(ctx context.Context) (string, error) {
			q, err := openQueue(ctx, c)
			if err != nil {
				return "", err
			}
			defer q.Close()
			fr, err := q.Followers(ctx)
			if err != nil {
				return "", err
			}
			var cnt int
			if err := q.DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
				c.Topics.MetaSchema, "follow").Scan(&cnt); err != nil {
				return "", err
			}
			if cnt == 0 {
				return "", fmt.Errorf("no table %s.follow on the primary (run: nonqueue schema apply --config %s)", c.Topics.MetaSchema, path)
			}
			for _, f := range fr {
				if f.Name == c.Follower.Name {
					state := "no process follows under it now"
					if f.Active {
						state = fmt.Sprintf("active on %s (pid %d)", f.Host, f.PID)
					}
					return fmt.Sprintf("follower %q at %s; %s", f.Name, f.Pos, state), nil
				}
			}
			return fmt.Sprintf("follower %q has not run yet: it will start at the source's current position", c.Follower.Name), nil
		}},
	}
}

// checkFollowBinlog reads the source's binary log settings. A follower
// needs the binary log on (on a replica with log_slave_updates), ROW
// format, and a row image that holds the followed column in both images of
// an UPDATE (FULL; NOBLOB when the column is not a BLOB or TEXT). Without
// binlog_row_metadata=FULL it works, but a DDL that changes a followed
// table's column count stops it until the events before the DDL are read:
// a warning.
func checkFollowBinlog(ctx context.Context, db *sql.DB, section string, rules []follow.Rule) (string, error) {
	var logBin, slaveUpdates int
	var format, image, metadata string
	err := db.QueryRowContext(ctx, "SELECT /* nonqueue check */ @@global.log_bin, @@global.log_slave_updates, @@global.binlog_format, @@global.binlog_row_image, @@global.binlog_row_metadata").
		Scan(&logBin, &slaveUpdates, &format, &image, &metadata)
	if err != nil {
		return "", fmt.Errorf("read the %s's binary log settings: %w", section, err)
	}
	var problems []string
	if logBin != 1 {
		problems = append(problems, "the binary log is off (log_bin): start the server with --log-bin")
	}
	if section == "replica" && slaveUpdates != 1 {
		problems = append(problems, "log_slave_updates is OFF: the replica's binary log lacks the primary's changes; set log_slave_updates=ON (or follow the primary: [follower] source = \"primary\")")
	}
	if !strings.EqualFold(format, "ROW") {
		problems = append(problems, fmt.Sprintf("binlog_format is %s, not ROW: changes logged as statements carry no rows to follow; SET GLOBAL binlog_format=ROW and in the server's configuration", format))
	}
	switch strings.ToUpper(image) {
	case "FULL":
	case "NOBLOB":
		blobs, err := blobColumns(ctx, db, rules)
		if err != nil {
			return "", err
		}
		if len(blobs) > 0 {
			problems = append(problems, fmt.Sprintf("binlog_row_image is NOBLOB and %s are BLOB or TEXT columns: an UPDATE that does not change them leaves them out of the image; use FULL", strings.Join(blobs, ", ")))
		}
	default:
		problems = append(problems, fmt.Sprintf("binlog_row_image is %s: it leaves unchanged columns out of an UPDATE's images (and the before image holds only the key), so the topic column is missing; SET GLOBAL binlog_row_image=FULL and in the server's configuration", image))
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	if !strings.EqualFold(metadata, "FULL") {
		return "", warning{fmt.Errorf("binlog_row_metadata is %s: the binary log does not name columns, so after a DDL on a followed table the follower maps rows by the table's current columns and stops (until restarted past the DDL) when they differ; SET GLOBAL binlog_row_metadata=FULL and in the server's configuration", metadata)}
	}
	return fmt.Sprintf("binlog on, ROW format, row image %s, row metadata FULL", image), nil
}

// blobColumns lists the followed columns that are BLOB or TEXT.
func blobColumns(ctx context.Context, db *sql.DB, rules []follow.Rule) ([]string, error) {
	var out []string
	for _, r := range rules {
		schema, table, _ := strings.Cut(r.Table, ".")
		col := r.TopicColumn + r.KeyColumn
		var typ string
		err := db.QueryRowContext(ctx, "SELECT /* nonqueue check */ DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND COLUMN_NAME = ?",
			schema, table, col).Scan(&typ)
		if errors.Is(err, sql.ErrNoRows) {
			continue // reported by the table check
		}
		if err != nil {
			return nil, fmt.Errorf("read the type of %s.%s: %w", r.Table, col, err)
		}
		if strings.Contains(typ, "blob") || strings.Contains(typ, "text") {
			out = append(out, r.Table+"."+col)
		}
	}
	return out, nil
}

// checkFollowTables checks that every followed table and column exists on
// the source, and that each lookup prepares there.
func checkFollowTables(ctx context.Context, db *sql.DB, section string, rules []follow.Rule) (string, error) {
	var problems, ok []string
	for i, r := range rules {
		schema, table, _ := strings.Cut(r.Table, ".")
		col := r.TopicColumn + r.KeyColumn
		var n, hasCol int
		err := db.QueryRowContext(ctx, `SELECT /* nonqueue check */ COUNT(*), COALESCE(SUM(COLUMN_NAME = ?), 0) FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?`, col, schema, table).Scan(&n, &hasCol)
		if err != nil {
			return "", fmt.Errorf("read the columns of %s: %w", r.Table, err)
		}
		switch {
		case n == 0:
			problems = append(problems, fmt.Sprintf("follow[%d].table %s does not exist on the %s (or the account may not read it)", i, r.Table, section))
			continue
		case hasCol == 0:
			problems = append(problems, fmt.Sprintf("follow[%d]: %s has no column %s", i, r.Table, col))
			continue
		}
		if r.Lookup != "" {
			st, err := db.PrepareContext(ctx, r.Lookup)
			if err != nil {
				problems = append(problems, fmt.Sprintf("follow[%d].lookup does not prepare on the %s: %v", i, section, err))
				continue
			}
			st.Close()
		}
		ok = append(ok, r.Table+"."+col)
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return strings.Join(ok, ", "), nil
}
