package queue_test

import (
	"errors"
	"testing"

	"github.com/nonqueue/nonqueue/internal/sqlcheck"
	"github.com/nonqueue/nonqueue/queue"
)

// TestRequestRefusesBadInput: Request refuses ids ≤ 0, even when the table
// holds such a row, and changes nothing of the batch; IDsFromQuery refuses
// a statement other than a plain SELECT before it reaches the server (the
// DDL's implicit commit would end the read-only transaction) and a result
// without usable ids, with an error and no panic.
func TestRequestRefusesBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if _, err := b.db.ExecContext(b.ctx, "INSERT INTO topic (id, required, active) VALUES (-1, 0, 1), (0, 0, 1), (5, 0, 1)"); err != nil {
		t.Fatal(err)
	}
	for _, ids := range [][]int64{{-1}, {0}, {5, -1}} {
		if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull}); !errors.Is(err, queue.ErrBadID) {
			t.Errorf("Request(%v): %v, want ErrBadID", ids, err)
		}
	}
	for _, id := range []int64{-1, 0, 5} {
		if r := b.row(t, id); r.required != 0 {
			t.Errorf("topic %d required %d after refused requests", id, r.required)
		}
	}
	if _, err := b.q.IDsFromQuery(b.ctx, "CREATE TABLE "+b.cfg.Schema+".nq_probe (x INT)"); !errors.Is(err, sqlcheck.ErrRefused) {
		t.Errorf("DDL as an ids query: %v, want ErrRefused", err)
	}
	var n int
	if err := b.db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'nq_probe'", b.cfg.Schema).Scan(&n); err != nil || n != 0 {
		t.Errorf("the refused DDL created the table: %d %v", n, err)
	}
	for _, q := range []string{
		"SELECT 'x' FROM " + b.cfg.Schema + ".topic",
		"SELECT id FROM " + b.cfg.Schema + ".topic WHERE id <= 0",
		"SELECT NULL",
	} {
		if ids, err := b.q.IDsFromQuery(b.ctx, q); err == nil {
			t.Errorf("IDsFromQuery(%q) = %v, want an error", q, ids)
		}
	}
}
