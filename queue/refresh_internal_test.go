package queue

import (
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
)

// TestFinishRefreshSQL: the finish statement a mapped table gets, as sent:
// the refresh interval read from the mapped column (NULL takes the
// configured default, given as an argument; capped so the due date stays
// in DATETIME's range), the next run due interval after now unless a
// request during the run asked for an earlier date, the higher of the two
// scopes, and the fence last. Its placeholders match the arguments Finish
// sends.
func TestFinishRefreshSQL(t *testing.T) {
	t.Parallel()
	cfg := Config{Schema: "app", Table: "TopicFilter", Mapped: true, Columns: Columns{ID: "topicFilterId",
		Required: "influencerRecalcReqd", Due: "influencerRecalcDate", Priority: "influencerPriority",
		Running: "influencerRunning", Refresh: "influencerRefreshSecs"}}.WithDefaults()
	got := buildStatements(cfg, flavor.MariaDB{}).finish
	ivl := "COALESCE(LEAST(`influencerRefreshSecs`, 4294967295) * 1000000, ?)"
	want := "UPDATE /* nonqueue finish */ `app`.`TopicFilter` SET `influencerRunning` = 0, `heartbeat_at` = NULL, `lease_until` = NULL,\n" +
		" `attempts` = 0, `last_error` = NULL,\n" +
		" `influencerRecalcDate` = IF(" + ivl + " > 0,\n" +
		"   IF(`request_version` = `claimed_version`, NOW(6) + INTERVAL " + ivl + " MICROSECOND, " +
		"LEAST(`influencerRecalcDate`, NOW(6) + INTERVAL " + ivl + " MICROSECOND)),\n" +
		"   `influencerRecalcDate`),\n" +
		" `influencerRecalcReqd` = GREATEST(IF(`request_version` = `claimed_version`, 0, `influencerRecalcReqd`), IF(" + ivl + " > 0, ?, 0))\n" +
		" WHERE `topicFilterId` = ? AND `influencerRunning` = ? AND `claim_token` = ?"
	if got != want {
		t.Fatalf("finish:\n%s\nwant\n%s", got, want)
	}
	// The fence's three arguments follow the refresh arguments.
	if n, args := strings.Count(got, "?"), len(cfg.finishArgs())+3; n != args {
		t.Fatalf("finish has %d placeholders, Finish sends %d arguments", n, args)
	}
	// Without the column (a table that could not get it online): the
	// same statement with the configured interval for every topic.
	st := buildStatements(cfg, flavor.MariaDB{})
	if st.finishNoCol != strings.ReplaceAll(got, "`influencerRefreshSecs`", "NULL") || strings.Count(st.finishNoCol, "?") != strings.Count(got, "?") {
		t.Fatalf("finish without the column:\n%s", st.finishNoCol)
	}
	// The cap is the column's own range: the constant and the SQL agree.
	if !strings.Contains(refreshIntervalSQL, "4294967295") || maxRefreshSeconds != 4294967295 {
		t.Fatal("the SQL cap and maxRefreshSeconds differ")
	}
}

// TestFinishArgs: the default interval goes in as microseconds, once per
// use, and the scope as the procedure's number; off is all zeros.
func TestFinishArgs(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		cfg  Config
		want []any
	}{
		{"off by default, partial scope", Config{}, []any{int64(0), int64(0), int64(0), int64(0), ScopePartial}},
		{"2s, full scope", Config{RefreshInterval: 2 * time.Second, RefreshScope: "full"},
			[]any{int64(2_000_000), int64(2_000_000), int64(2_000_000), int64(2_000_000), ScopeFull}},
		{"1h, partial scope", Config{RefreshInterval: time.Hour, RefreshScope: "partial"},
			[]any{int64(3_600_000_000), int64(3_600_000_000), int64(3_600_000_000), int64(3_600_000_000), ScopePartial}},
	}
	for _, tc := range cases {
		got := tc.cfg.WithDefaults().finishArgs()
		if len(got) != len(tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: argument %d is %v (%T), want %v (%T)", tc.name, i, got[i], got[i], tc.want[i], tc.want[i])
			}
		}
	}
}

// TestRefreshConfig: the interval is off (0) or at least a second, the
// scope partial (default) or full; errors name the key.
func TestRefreshConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		cfg   Config
		field string // "" = valid
	}{
		{"off is valid", Config{}, ""},
		{"one second is the shortest", Config{RefreshInterval: time.Second}, ""},
		{"a day, full scope", Config{RefreshInterval: 24 * time.Hour, RefreshScope: "full"}, ""},
		{"under a second is refused", Config{RefreshInterval: 999 * time.Millisecond}, "refresh_interval"},
		{"negative is refused", Config{RefreshInterval: -time.Second}, "refresh_interval"},
		{"past the column's range is refused", Config{RefreshInterval: 200 * 365 * 24 * time.Hour}, "refresh_interval"},
		{"an unknown scope is refused", Config{RefreshScope: "weekly"}, "refresh_scope"},
		{"a scope is a word, not a number", Config{RefreshScope: "2"}, "refresh_scope"},
	}
	for _, tc := range cases {
		err := tc.cfg.WithDefaults().Validate()
		var ce *ConfigError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, ErrConfig)):
			t.Errorf("%s: %v, want a ConfigError on %s", tc.name, err, tc.field)
		case tc.field != "" && !strings.HasPrefix(err.Error(), "topics."+tc.field+": "):
			t.Errorf("%s: %q does not name the key topics.%s", tc.name, err, tc.field)
		}
	}
	if s := (Config{}).WithDefaults().RefreshScope; s != "partial" {
		t.Errorf("default scope %q, want partial", s)
	}
}

// TestTopicRefresh: what the topic pages show for a topic's column: NULL
// is the configured default, a value the topic's own (0: off), a value
// past the column's range is capped as the finish caps it.
func TestTopicRefresh(t *testing.T) {
	t.Parallel()
	cfg := Config{RefreshInterval: time.Hour}.WithDefaults()
	for _, tc := range []struct {
		col  sql.NullInt64
		want time.Duration
		own  bool
	}{
		{sql.NullInt64{}, time.Hour, false},
		{sql.NullInt64{Valid: true}, 0, true},
		{sql.NullInt64{Int64: 90, Valid: true}, 90 * time.Second, true},
		{sql.NullInt64{Int64: -5, Valid: true}, 0, true},
		{sql.NullInt64{Int64: 1 << 40, Valid: true}, maxRefreshSeconds * time.Second, true},
	} {
		d, own := cfg.topicRefresh(tc.col)
		if d != tc.want || own != tc.own {
			t.Errorf("column %+v: %v own %v, want %v own %v", tc.col, d, own, tc.want, tc.own)
		}
	}
	if got := (Config{}).WithDefaults().RefreshSummary(); !strings.HasPrefix(got, "off by default; a topic's refresh_interval column") {
		t.Errorf("summary when off: %q", got)
	}
	if got := cfg.RefreshSummary(); !strings.HasPrefix(got, "every 1h0m0s after each successful run, scope partial; ") {
		t.Errorf("summary at 1h: %q", got)
	}
}
