package transfer_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// oldTables lists the swapped-out tables (nqold_…) in the result schema on
// the server of db.
func (b *bundle) oldTables(t *testing.T, db *sql.DB) []string {
	t.Helper()
	return b.tables(t, db, "nqold\\_%")
}

// tables lists, in name order, the tables of the result schema on the
// server of db whose names are LIKE like.
func (b *bundle) tables(t *testing.T, db *sql.DB, like string) []string {
	t.Helper()
	rows, err := db.QueryContext(b.ctx, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME LIKE ? ORDER BY TABLE_NAME", b.schema, like)
	if err != nil {
		t.Fatalf("list tables LIKE %q: %v", like, err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// assertLive fails unless the primary's live tables of topic are the
// replica's current ones.
func (b *bundle) assertLive(t *testing.T, topic int64, version int) {
	t.Helper()
	names := b.cfg.TableNames(topic)
	for _, n := range names {
		rep, prim := checksum(t, b.ctx, b.local, n), checksum(t, b.ctx, b.primary, n)
		if rep == "" || rep != prim {
			t.Fatalf("%s: primary checksum %q, replica %q", n, prim, rep)
		}
	}
	var body string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT body FROM "+names[1]+" WHERE id = 1").Scan(&body); err != nil {
		t.Fatalf("read %s: %v", names[1], err)
	}
	if want := fmt.Sprintf("post 1 v%d", version); body != want {
		t.Fatalf("%s holds %q, want %q", names[1], body, want)
	}
}

// A Dropper takes over the DROP of the tables a republish swaps out: Ship
// returns with them still there, and Dropper.Close drops them all, on the
// primary only, leaving the second run's tables live.
func TestDropperDropsSwappedOutTables(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	topics := []int64{21, 22}
	for _, topic := range topics {
		b.makeResult(t, topic, 1)
		if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
			t.Fatalf("Ship %d v1: %v", topic, err)
		}
	}
	// The dropper's own pool, one connection, held by the test until it
	// has looked: the drops wait, whatever the scheduling.
	dropPool := testdb.Open(t, env.Primary(b.schema))
	dropPool.SetMaxOpenConns(1)
	hold, err := dropPool.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := b.sh.NewDropper(dropPool)
	t.Cleanup(func() {
		hold.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})

	var want []string
	for _, topic := range topics {
		b.makeResult(t, topic, 2)
		p := b.params(topic, 2)
		p.Dropper = d
		if _, err := b.sh.Ship(b.ctx, p); err != nil {
			t.Fatalf("Ship %d v2: %v", topic, err)
		}
		for _, n := range b.cfg.TableNames(topic) {
			want = append(want, "nqold_2_"+n)
		}
		b.assertLive(t, topic, 2)
	}
	slices.Sort(want)
	if got := b.oldTables(t, b.primary); !slices.Equal(got, want) {
		t.Fatalf("swapped-out tables after Ship: %v, want %v (left for the dropper)", got, want)
	}

	hold.Close()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Dropper.Close: %v", err)
	}
	if got := b.oldTables(t, b.primary); len(got) != 0 {
		t.Fatalf("swapped-out tables after Dropper.Close: %v", got)
	}
	b.assertNoStaging(t)
	for _, topic := range topics {
		b.assertLive(t, topic, 2)
	}
	// The drops did not replicate: the replica never had these tables, and a
	// replicated DROP would have dropped its result tables' namesakes or
	// stopped it.
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatalf("replication after the drops: %v", err)
	}
	for _, topic := range topics {
		if checksum(t, b.ctx, b.local, b.cfg.TableNames(topic)[0]) == "" {
			t.Fatalf("replica lost the result tables of topic %d", topic)
		}
	}
}

// A topic with only some of its tables live (one dropped by hand): the
// optimistic swap of every table fails (no such table), the publish looks
// up which exist, swaps that one out and both in.
func TestPublishOverSomeLiveTables(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const topic = 23
	names := b.cfg.TableNames(topic)
	b.makeResult(t, topic, 1)
	if _, err := b.sh.Ship(b.ctx, b.params(topic, 1)); err != nil {
		t.Fatalf("Ship v1: %v", err)
	}
	mc := env.Primary(b.schema)
	mc.Params = map[string]string{"sql_log_bin": "0"} // the replica keeps its own
	if _, err := testdb.Open(t, mc).ExecContext(b.ctx, "DROP TABLE "+names[1]); err != nil {
		t.Fatal(err)
	}
	b.makeResult(t, topic, 2)
	d := b.sh.NewDropper(b.primary)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	p := b.params(topic, 2)
	p.Dropper = d
	if _, err := b.sh.Ship(b.ctx, p); err != nil {
		t.Fatalf("Ship v2: %v", err)
	}
	b.assertLive(t, topic, 2)
	if got := b.oldTables(t, b.primary); len(got) > 1 || (len(got) == 1 && got[0] != "nqold_2_"+names[0]) {
		t.Fatalf("swapped-out tables: %v, want at most nqold_2_%s", got, names[0])
	}
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatalf("Dropper.Close: %v", err)
	}
	b.assertNoStaging(t)
	if err := env.WaitReplicas(b.ctx, b.primary); err != nil {
		t.Fatalf("replication after publish: %v", err)
	}
}
