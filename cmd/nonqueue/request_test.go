package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// runBinary runs this test binary as `nonqueue args...` and returns its
// combined output and exit code: a panic shows as "panic:" and exit code 2.
func runBinary(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("nonqueue %v: %v\n%s", args, err, out)
	return "", 0
}

// TestRequestQueryReadOnly: `nonqueue request --query` runs a single plain
// SELECT and nothing else. DDL, INTO OUTFILE, locking reads, DML, CALL and
// a second statement are refused before they reach the primary (the
// table is not created, the file not written, no topic requested);
// a non-integer, NULL or non-positive id is a clean error (exit code 1,
// a message, no panic) that requests nothing; ids ≤ 0 on the command line
// are refused too. The process is the real binary (this test executable
// as nonqueue), so the exit code and a panic are what an operator sees.
func TestRequestQueryReadOnly(t *testing.T) {
	t.Parallel()
	b := setupOps(t, "")
	db := testdb.Open(t, env.Primary(b.name))
	// Topics 1..3 and a stray -1 row, none requested.
	if _, err := db.ExecContext(b.ctx, "INSERT INTO topic (id, required, active) VALUES (-1, 0, 1), (1, 0, 1), (2, 0, 1), (3, 0, 1)"); err != nil {
		t.Fatal(err)
	}
	requested := func() string {
		t.Helper()
		var got string
		if err := db.QueryRowContext(b.ctx, "SELECT GROUP_CONCAT(CONCAT(id, ':', required) ORDER BY id) FROM topic").Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	const none = "-1:0,1:0,2:0,3:0"
	tableExists := func(name string) bool {
		t.Helper()
		var n int
		if err := db.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", b.name, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	outfile := filepath.Join(t.TempDir(), "ids.txt")
	q := func(s string) string { return strings.ReplaceAll(s, "{db}", b.name) }

	for _, tc := range []struct {
		query, want string
	}{
		{q("CREATE TABLE {db}.nq_probe (x INT)"), "starts with CREATE"},
		{q("SELECT id FROM {db}.topic INTO OUTFILE '" + outfile + "'"), "INTO"},
		{q("SELECT id FROM {db}.topic WHERE id > 0 FOR UPDATE"), "FOR UPDATE"},
		{q("SELECT id FROM {db}.topic LOCK IN SHARE MODE"), "LOCK IN SHARE MODE"},
		{q("UPDATE {db}.topic SET required = 2"), "starts with UPDATE"},
		{q("CALL {db}.nope(1)"), "starts with CALL"},
		{q("SELECT 1; CREATE TABLE {db}.nq_probe2 (x INT)"), "more than one statement"},
		{q("/*!CREATE TABLE {db}.nq_probe3 (x INT)*/"), "executable comments"},
	} {
		out, code := runBinary(t, "request", "--config", b.path, "--query", tc.query)
		if code != 1 || !strings.Contains(out, "only a single plain SELECT is allowed") || !strings.Contains(out, tc.want) || strings.Contains(out, "panic") {
			t.Errorf("request --query %q: exit %d, want 1 and a refusal saying %q:\n%s", tc.query, code, tc.want, out)
		}
	}
	for _, name := range []string{"nq_probe", "nq_probe2", "nq_probe3"} {
		if tableExists(name) {
			t.Errorf("table %s.%s exists: a refused query reached the primary", b.name, name)
		}
	}
	if _, err := os.Stat(outfile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("INTO OUTFILE: %s: %v, want no file", outfile, err)
	}
	if got := requested(); got != none {
		t.Errorf("topics after refused queries: %s, want %s", got, none)
	}

	// Queries that run but give no usable ids: a clean error, nothing
	// requested.
	for _, tc := range []struct {
		query, want string
	}{
		{q("SELECT CONCAT('t', id) FROM {db}.topic"), "want an integer column"},
		{q("SELECT 1.5 FROM {db}.topic"), "want an integer column"},
		{q("SELECT IF(id = 2, NULL, id) FROM {db}.topic WHERE id > 0"), "topic id NULL"},
		{q("SELECT id FROM {db}.topic"), "topic id -1: topic ids must be positive"},
		{q("SELECT id - 1 FROM {db}.topic WHERE id > 0"), "topic id 0: topic ids must be positive"},
	} {
		out, code := runBinary(t, "request", "--config", b.path, "--query", tc.query)
		if code != 1 || !strings.Contains(out, tc.want) || strings.Contains(out, "panic") {
			t.Errorf("request --query %q: exit %d, want 1 and an error saying %q:\n%s", tc.query, code, tc.want, out)
		}
	}
	if got := requested(); got != none {
		t.Errorf("topics after queries with bad ids: %s, want %s", got, none)
	}

	// Ids ≤ 0 on the command line.
	for _, args := range [][]string{{"1,-1"}, {"0"}, {"--", "-1"}} {
		out, code := runBinary(t, append([]string{"request", "--config", b.path}, args...)...)
		if code != 1 || !strings.Contains(out, "topic ids must be positive") {
			t.Errorf("request %v: exit %d, want 1 and \"topic ids must be positive\":\n%s", args, code, out)
		}
	}
	if got := requested(); got != none {
		t.Errorf("topics after requests of ids <= 0: %s, want %s", got, none)
	}

	// A plain SELECT still works, with a trailing ';', keywords in strings
	// and comments, and the query's other columns of any type.
	query := q("SELECT id, 'into outfile; for update' AS note FROM {db}.topic WHERE id BETWEEN 2 AND 3 -- ; DROP TABLE x\n;")
	out, code := runBinary(t, "request", "--config", b.path, "--scope", "partial", "--query", query)
	if code != 0 || !strings.Contains(out, "requested 2 topics (scope partial)") {
		t.Fatalf("request --query %q: exit %d\n%s", query, code, out)
	}
	if got, want := requested(), "-1:0,1:0,2:1,3:1"; got != want {
		t.Errorf("topics after a plain SELECT: %s, want %s", got, want)
	}
}
