package queue_test

import (
	"database/sql"
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

// TestPlainSelectAgreesWithServer: what the lexer accepts, the server
// never reads as INTO. Queries glue `INTO @nq_probe` to numbers, strings,
// identifiers and comments of every form, with and without space, and run
// under the sql_modes that change quoting (and ORACLE); after each accepted
// one the variable must still be NULL. (This found 1.5INTO, .5INTO and
// 1e1INTO: the server ends a decimal number where its digits end; and
// [a'b], an identifier under sql_mode MSSQL.)
func TestPlainSelectAgreesWithServer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	conn, err := b.db.Conn(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	prefixes := []string{
		"1", "1.5", ".5", "1.", "1e1", "1.5e-3", "1e+1", "0x1F", "0b1", "x'41'", "N'a'", "_utf8mb4'a'",
		"'a'", "'a\\''", "'a\\\\'", "\"a\"", "\"a\\\"\"", "`a`", "`a``b`", "a", "@a", "(1)", "NULL",
		"1 /* x */", "1 -- x\n", "1 #x\n", "1 --\x01", "'\\' ", "\"\\\" ", "1 AS [a'b]", "\"\\\" , '\\'",
	}
	var accepted, refused int
	for _, mode := range []string{"DEFAULT", "'NO_BACKSLASH_ESCAPES'", "'ANSI_QUOTES'", "'MSSQL'", "'ORACLE'"} {
		if _, err := conn.ExecContext(b.ctx, "SET SESSION sql_mode = "+mode); err != nil {
			t.Fatal(err)
		}
		for _, p := range prefixes {
			for _, sep := range []string{"", " ", "/**/", "\n"} {
				for _, tail := range []string{"INTO @nq_probe", "into @nq_probe", "INTO @nq_probe -- '", "INTO @nq_probe -- \""} {
					q := "SELECT " + p + sep + tail
					if _, err := sqlcheck.PlainSelect(q); err != nil {
						refused++
						continue
					}
					accepted++
					if rows, err := conn.QueryContext(b.ctx, q); err == nil {
						rows.Close()
					}
					var v sql.NullString
					if err := conn.QueryRowContext(b.ctx, "SELECT @nq_probe").Scan(&v); err != nil {
						t.Fatal(err)
					}
					if v.Valid {
						t.Errorf("sql_mode %s: the lexer accepted %q, and the server set @nq_probe = %q", mode, q, v.String)
						conn.ExecContext(b.ctx, "SET @nq_probe = NULL")
					}
				}
			}
		}
	}
	t.Logf("%d queries accepted (all without effect on the server), %d refused", accepted, refused)
}
