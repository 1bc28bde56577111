package main

import (
	"context"
	"fmt"
	"strings"
)

// ---- scenario 9's floor: what the primary spends on a table swap alone ----
//
// A publish replaces a topic's live MyISAM table by a staged one: one
// RENAME TABLE of two pairs (live → old, staged → live), the first open of
// the new table, and a DROP of the old one (batched by the worker's
// dropper). That work is per table, whatever coordinates it: MariaDB
// writes and syncs its DDL log for every table a RENAME or DROP touches,
// however many one statement names. swapFloor times it on the bench's
// primary with nothing else running on it, so that scenario 9's
// primary_cpu_ms_per_topic_1000 can be read against what no batching of
// statements could remove. It also times the cheapest statement, SELECT 1
// on one session, as the floor of any statement's round trip.

// swapFloor is the primary's CPU, ms per topic, for each part of a
// one-table swap, and per SELECT 1.
type swapFloor struct {
	Topics   int     `json:"topics"`
	RenameMS float64 `json:"rename_ms"`
	// RenameBatchedMS: the same RENAME for 16 topics a statement (the
	// other half of the topics), to show what batching would save.
	RenameBatchedMS float64 `json:"rename_batched_ms"`
	OpenMS          float64 `json:"open_ms"`
	DropMS          float64 `json:"drop_ms"`
	// TotalMS is RenameMS + OpenMS + DropMS: a topic's swap on the primary.
	TotalMS float64 `json:"total_ms"`
	// Select1MS: one SELECT 1 on one session, the cheapest round trip.
	Select1MS float64 `json:"select1_ms"`
}

// swapFloorTopics is how many swaps the floor times (quick: fewer).
func swapFloorTopics(quick bool) int {
	if quick {
		return 100
	}
	return 400
}

// measureSwapFloor times n one-table swaps on the primary, as a publish
// makes them (a session with sql_log_bin=0; tables of the stand-in's
// shape, one row each; the DROPs 64 tables a statement, as the dropper's),
// with the primary's CPU from /proc around each part. Its tables are
// influencer.nqfloor_* and are dropped at the end.
func (b *bench) measureSwapFloor(ctx context.Context, n int) (f *swapFloor, err error) {
	conn, err := b.primaryNoBin.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("swap floor: %w", err)
	}
	defer conn.Close()
	name := func(kind string, i int) string { return fmt.Sprintf("influencer.nqfloor_%s_%d", kind, i) }
	defer func() {
		for lo := 0; lo < n; lo += 100 {
			var names []string
			for i := lo; i < min(lo+100, n); i++ {
				names = append(names, name("live", i), name("staged", i), name("old", i))
			}
			if _, derr := conn.ExecContext(context.WithoutCancel(ctx), "DROP TABLE IF EXISTS "+strings.Join(names, ", ")); derr != nil && err == nil {
				err = fmt.Errorf("swap floor: drop its tables: %w", derr)
			}
		}
	}()
	for i := range n {
		for _, kind := range []string{"live", "staged"} {
			stmt := fmt.Sprintf("CREATE TABLE %s (k INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL) ENGINE=MyISAM; INSERT INTO %[1]s VALUES (1, %d)", name(kind, i), i)
			if _, err := conn.ExecContext(ctx, stmt); err != nil {
				return nil, fmt.Errorf("swap floor: create its tables: %w", err)
			}
		}
	}
	// The staged tables are opened by the creation; a publish's staged
	// table arrives as files, unopened. Close them all first.
	if _, err := conn.ExecContext(ctx, "FLUSH TABLES"); err != nil {
		return nil, fmt.Errorf("swap floor: %w", err)
	}
	f = &swapFloor{Topics: n}
	// part runs count statements and sets into to the primary's CPU per
	// per (a topic, or a statement for SELECT 1: one is under the
	// clock's tick of 10 ms, so it runs many times).
	part := func(into *float64, stmts func(i int) string, count, per int) error {
		c0, err := b.sampleCPU(nil)
		if err != nil {
			return err
		}
		for i := range count {
			if _, err := conn.ExecContext(ctx, stmts(i)); err != nil {
				return fmt.Errorf("swap floor: %w", err)
			}
		}
		c1, err := b.sampleCPU(nil)
		if err != nil {
			return err
		}
		*into = (c1["primary"] - c0["primary"]) * 1000 / float64(per)
		return nil
	}
	// Half the topics one a statement, as a publish renames; the other
	// half 16 a statement.
	half := n / 2
	pairs := func(i int) string {
		return fmt.Sprintf("%s TO %s, %s TO %[1]s", name("live", i), name("old", i), name("staged", i))
	}
	if err := part(&f.RenameMS, func(i int) string { return "RENAME TABLE " + pairs(i) }, half, half); err != nil {
		return nil, err
	}
	const renameBatch = 16
	if err := part(&f.RenameBatchedMS, func(j int) string {
		var list []string
		for i := half + j*renameBatch; i < min(half+(j+1)*renameBatch, n); i++ {
			list = append(list, pairs(i))
		}
		return "RENAME TABLE " + strings.Join(list, ", ")
	}, (n-half+renameBatch-1)/renameBatch, n-half); err != nil {
		return nil, err
	}
	if err := part(&f.OpenMS, func(i int) string { return "SELECT v FROM " + name("live", i) }, n, n); err != nil {
		return nil, err
	}
	const dropBatch = 64 // transfer's maxDropBatch
	if err := part(&f.DropMS, func(j int) string {
		var names []string
		for i := j * dropBatch; i < min((j+1)*dropBatch, n); i++ {
			names = append(names, name("old", i))
		}
		return "DROP TABLE " + strings.Join(names, ", ")
	}, (n+dropBatch-1)/dropBatch, n); err != nil {
		return nil, err
	}
	if err := part(&f.Select1MS, func(int) string { return "SELECT 1" }, 20*n, 20*n); err != nil {
		return nil, err
	}
	f.TotalMS = f.RenameMS + f.OpenMS + f.DropMS
	return f, nil
}
