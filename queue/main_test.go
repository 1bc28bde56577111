package queue_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

var env *testdb.Env

func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "queue", 0, &env)) }

type bundle struct {
	q   *queue.Queue
	db  *sql.DB // the test's own pool on the primary, default database = the test's
	cfg queue.Config
	ctx context.Context
}

// setup gives t a topic table of its own, nonqueue's default schema with
// the given tweaks, inside the test's own database.
func setup(t testing.TB, tweak func(*queue.Config)) *bundle {
	t.Helper()
	name := env.New(t)
	cfg := queue.Config{Schema: name, MetaSchema: name}
	if tweak != nil {
		tweak(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), cfg)
	if err != nil {
		t.Fatalf("open queue: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatalf("apply schema: %v", err)
	}
	return &bundle{q: q, db: testdb.Open(t, env.Primary(name)), cfg: q.Config(), ctx: ctx}
}

// topic is one row to seed; due is an offset from the primary's now.
type topic struct {
	id       int64
	required int
	due      time.Duration
	priority int64
	active   int
}

func (b *bundle) seed(t testing.TB, topics ...topic) {
	t.Helper()
	c := b.cfg.Columns
	for start := 0; start < len(topics); start += 1000 {
		chunk := topics[start:min(start+1000, len(topics))]
		var vals []string
		var args []any
		for _, tp := range chunk {
			vals = append(vals, "(?, ?, NOW(6) + INTERVAL ? MICROSECOND, ?, ?)")
			args = append(args, tp.id, tp.required, tp.due.Microseconds(), tp.priority, tp.active)
		}
		stmt := fmt.Sprintf("INSERT INTO `%s`.`%s` (`%s`, `%s`, `%s`, `%s`, `%s`) VALUES %s",
			b.cfg.Schema, b.cfg.Table, c.ID, c.Required, c.Due, c.Priority, c.Active, strings.Join(vals, ", "))
		if _, err := b.db.ExecContext(b.ctx, stmt, args...); err != nil {
			t.Fatalf("seed topics: %v", err)
		}
	}
}

// dueTopics returns n required, due, active topics with ids from 1.
func dueTopics(n int) []topic {
	ts := make([]topic, n)
	for i := range ts {
		ts[i] = topic{id: int64(i + 1), required: 1 + i%2, due: -time.Hour, priority: int64(i % 5), active: 1}
	}
	return ts
}

// row reads one topic's protocol state.
type row struct {
	required, attempts          int
	running                     int64
	token, reqVersion, claimedV uint64
	lastError                   sql.NullString
	parked, lease               sql.NullTime
	dueInFuture                 bool
}

func (b *bundle) row(t testing.TB, id int64) row {
	t.Helper()
	c := b.cfg.Columns
	var r row
	stmt := fmt.Sprintf("SELECT `%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s`, `%s` > NOW(6) FROM `%s`.`%s` WHERE `%s` = ?",
		c.Required, c.Attempts, c.Running, c.ClaimToken, c.RequestVersion, c.ClaimedVersion, c.LastError, c.ParkedAt, c.LeaseUntil, c.Due,
		b.cfg.Schema, b.cfg.Table, c.ID)
	err := b.db.QueryRowContext(b.ctx, stmt, id).Scan(&r.required, &r.attempts, &r.running, &r.token, &r.reqVersion,
		&r.claimedV, &r.lastError, &r.parked, &r.lease, &r.dueInFuture)
	if err != nil {
		t.Fatalf("read topic %d: %v", id, err)
	}
	return r
}
