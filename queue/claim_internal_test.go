package queue

import (
	"strings"
	"testing"

	"github.com/nonqueue/nonqueue/internal/flavor"
)

// TestBindInts: the one-statement claim's integers go into its text in
// order, negative ones included; a count that does not match the
// placeholders is a bug and panics rather than send a broken statement.
func TestBindInts(t *testing.T) {
	t.Parallel()
	got := bindInts("SET a = ?, b = ? WHERE c IN (?, ?) AND d >= ?", 7, 30000000, 1, 2, -5)
	if want := "SET a = 7, b = 30000000 WHERE c IN (1, 2) AND d >= -5"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// The real claim: every placeholder filled, nothing else touched.
	cfg := Config{ActiveValues: []int64{1, 2}}.WithDefaults()
	s := buildStatements(cfg, flavor.MariaDB{}).claim
	n := strings.Count(s, "?")
	vals := make([]int64, n)
	if out := bindInts(s, vals...); strings.Contains(out, "?") || len(out) != len(s) {
		t.Fatalf("claim with %d placeholders: %s", n, out)
	}
	for _, bad := range []struct {
		stmt string
		vals []int64
	}{{"a = ?", nil}, {"a = ?", []int64{1, 2}}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("bindInts(%q, %v) did not panic", bad.stmt, bad.vals)
				}
			}()
			bindInts(bad.stmt, bad.vals...)
		}()
	}
}
