package procs

import (
	"path/filepath"
	"testing"
	"time"
)

// TestResolveLogPath: absolute paths are kept, relative ones stay inside
// LogDir, empty ones get a per-topic name.
func TestResolveLogPath(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	cases := []struct {
		name, in, want string
		bad            bool
	}{
		{"absolute kept", "/srv/log/x.log", "/srv/log/x.log", false},
		{"relative inside LogDir", "runs/42.log", "/logs/runs/42.log", false},
		{"empty gets a per-topic name", "", "/logs/topic_42_20260102T030405.000006Z.log", false},
		{"escaping LogDir refused", "../etc/passwd", "", true},
		{"escaping after a subdir refused", "a/../../x", "", true},
	}
	for _, c := range cases {
		got, err := resolveLogPath("/logs", c.in, 42, at)
		if c.bad != (err != nil) || (!c.bad && got != filepath.FromSlash(c.want)) {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

// TestEscapeCell: one row stays one line whatever the data holds.
func TestEscapeCell(t *testing.T) {
	t.Parallel()
	if got := escapeCell("a\tb\nc\\d\x00"); got != `a\tb\nc\\d\0` {
		t.Errorf("escape: %q", got)
	}
	if formatCell(nil) != "NULL" || formatCell([]byte("x")) != "x" || formatCell(int64(3)) != "3" {
		t.Error("formatCell")
	}
}
