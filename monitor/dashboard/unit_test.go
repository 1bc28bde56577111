package dashboard

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
)

// TestReadLogRefusesPathTricks: only a clean absolute path inside a log
// directory is read, and a symbolic link cannot lead out of it.
func TestReadLogRefusesPathTricks(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(dir, "ok.log"), []byte("fine\n"), 0o640)
	os.MkdirAll(filepath.Join(dir, "sub"), 0o750)
	os.WriteFile(filepath.Join(dir, "sub", "nested.log"), []byte("nested\n"), 0o640)
	os.WriteFile(filepath.Join(outside, "secret"), []byte("secret\n"), 0o600)
	os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "link.log"))
	os.Symlink(outside, filepath.Join(dir, "linkdir"))
	for _, c := range []struct {
		name, path string
		want       error // nil: readable
		text       string
	}{
		{"a log in the directory", filepath.Join(dir, "ok.log"), nil, "fine\n"},
		{"a log in a subdirectory", filepath.Join(dir, "sub", "nested.log"), nil, "nested\n"},
		{"a file elsewhere", filepath.Join(outside, "secret"), ErrLogNotAllowed, ""},
		{"dot-dot out of the directory", dir + "/../" + filepath.Base(outside) + "/secret", ErrLogNotAllowed, ""},
		{"dot-dot that comes back", dir + "/sub/../ok.log", ErrLogNotAllowed, ""}, // not clean: refused as written
		{"a relative path", "ok.log", ErrLogNotAllowed, ""},
		{"the directory itself", dir, ErrLogNotAllowed, ""},
		{"a symlink to a file outside", filepath.Join(dir, "link.log"), ErrLogNotAllowed, ""},
		{"through a symlinked directory", filepath.Join(dir, "linkdir", "secret"), ErrLogNotAllowed, ""},
		{"a missing log", filepath.Join(dir, "gone.log"), fs.ErrNotExist, ""},
		{"a prefix that is not the directory", dir + "x/ok.log", ErrLogNotAllowed, ""},
	} {
		lt, err := readLog([]string{dir}, c.path, 1<<20)
		text := lt.Text
		if c.want == nil && (err != nil || text != c.text) {
			t.Errorf("%s: %q %v", c.name, text, err)
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s (%s): %v, want %v", c.name, c.path, err, c.want)
		}
	}
	if _, err := readLog(nil, filepath.Join(dir, "ok.log"), 10); !errors.Is(err, ErrLogNotAllowed) {
		t.Errorf("no log directories configured: %v", err)
	}
}

// TestReadLogShowsTheEnd: a long log is cut to its last bytes, on a
// character boundary.
func TestReadLogShowsTheEnd(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "long.log")
	os.WriteFile(p, []byte(strings.Repeat("é", 100)+"END"), 0o640)
	lt, err := readLog([]string{dir}, p, 10)
	text, size, trunc := lt.Text, lt.Size, lt.Truncated
	if err != nil || !trunc || size != 203 || !strings.HasSuffix(text, "END") || strings.ContainsRune(text, 0xFFFD) || len(text) > 10 {
		t.Fatalf("%q size %d truncated %v %v", text, size, trunc, err)
	}
	if lt.First != strings.Repeat("é", 100)+"END" {
		t.Errorf("first line %q: the whole (short) file", lt.First)
	}
}

// TestConfigValidate: each bad setting is a *ConfigError naming it.
func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		name  string
		cfg   Config
		field string // "" valid
	}{
		{"defaults", Config{}, ""},
		{"a prefix", Config{Prefix: "/ops/nonqueue"}, ""},
		{"a trailing slash is trimmed", Config{Prefix: "/ops/"}, ""},
		{"a prefix without a leading slash", Config{Prefix: "ops"}, "prefix"},
		{"a prefix with a query", Config{Prefix: "/ops?x=1"}, "prefix"},
		{"a prefix with a quote", Config{Prefix: `/o"ps`}, "prefix"},
		{"a short token", Config{OperatorToken: "short"}, "operator_token"},
		{"a relative log dir", Config{LogDirs: []string{"logs"}}, "log_dirs"},
		{"a fast refresh", Config{Refresh: time.Millisecond}, "refresh"},
		{"an origin with a path", Config{Origin: "https://ops.example.com/x"}, "origin"},
		{"an origin without a scheme", Config{Origin: "ops.example.com"}, "origin"},
		{"a good origin", Config{Origin: "https://ops.example.com"}, ""},
	} {
		err := c.cfg.WithDefaults().Validate()
		var ce *ConfigError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.field != "" && (!errors.As(err, &ce) || ce.Field != c.field || !errors.Is(err, ErrConfig)):
			t.Errorf("%s: %v, want a ConfigError on %s", c.name, err, c.field)
		}
	}
}

// TestSecretNeverPrints: the operator token does not show through fmt or
// slog, whatever the verb.
func TestSecretNeverPrints(t *testing.T) {
	s := Secret("the-real-token-value")
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "token", s, "cfg", Config{OperatorToken: s})
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "token", s)
	fmt.Fprintf(&buf, "%v %s %q %#v %+v", s, s, s, s, Config{OperatorToken: s})
	if strings.Contains(buf.String(), "the-real-token-value") {
		t.Fatalf("token printed: %s", buf.String())
	}
}

// TestGroupFailures: errors that differ only in numbers share a group,
// biggest first, with distinct topics counted.
func TestGroupFailures(t *testing.T) {
	runs := []monitor.RunRecord{
		{TopicID: 1, Outcome: "failed", Error: "procedure: calc failed (topic 1)"},
		{TopicID: 2, Outcome: "parked", Error: "procedure: calc failed (topic 2)"},
		{TopicID: 2, Outcome: "failed", Error: "procedure: calc failed (topic 2)"},
		{TopicID: 3, Outcome: "reaped", Error: "lease expired: instance 1101 stopped heartbeating (claim token 9)"},
		{TopicID: 4, Outcome: "lost"},
	}
	g := groupFailures(runs)
	if len(g) != 3 || g[0].Count != 3 || g[0].Topics != 2 || g[0].Key != "procedure: calc failed (topic #)" || g[0].Outcomes["failed"] != 2 ||
		g[0].Example != "procedure: calc failed (topic 1)" || fmt.Sprint(g[0].TopicIDs) != "[1 2]" {
		t.Fatalf("groups: %+v", g)
	}
	if g[2].Key != "(no error recorded)" {
		t.Errorf("empty error group: %q", g[2].Key)
	}
}

// TestChart: bars scale to a round maximum; the failure rate is drawn;
// labels are escaped.
func TestChart(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{{0, 1}, {0.3, 1}, {1, 1}, {1.5, 2}, {3, 5}, {7, 10}, {11, 20}, {999, 1000}, {1001, 2000}} {
		if got := niceCeil(c.in); got != c.want {
			t.Errorf("niceCeil(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	tp := &monitor.Throughput{Bucket: time.Minute, Buckets: []monitor.Bucket{{Done: 3}, {Done: 1, Failed: 1}, {}, {Done: 2, Other: 1}}}
	svg := string(throughputChart(tp, `runs <"&>`))
	if strings.Count(svg, `class="done"`) != 3 || strings.Count(svg, `class="failed"`) != 1 || !strings.Contains(svg, "<polyline") ||
		!strings.Contains(svg, "runs &lt;&#34;&amp;&gt;") || strings.Contains(svg, `runs <"`) {
		t.Fatalf("chart:\n%s", svg)
	}
	if throughputChart(nil, "x") != "" {
		t.Error("a nil throughput draws something")
	}
}

// TestFormatting: the page's duration format (numbers and bytes:
// internal/format).
func TestFormatting(t *testing.T) {
	for in, want := range map[time.Duration]string{0: "0s", 850 * time.Millisecond: "850ms", 12300 * time.Millisecond: "12.3s",
		245 * time.Second: "4m05s", 3*time.Hour + 12*time.Minute: "3h12m", 52 * time.Hour: "2d4h", -2 * time.Second: "-2.0s"} {
		if got := fmtDuration(in); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", in, got, want)
		}
	}
}

// TestSafeNext: a login's return target stays inside the dashboard.
func TestSafeNext(t *testing.T) {
	s := &Server{cfg: Config{Prefix: "/ops"}}
	for in, want := range map[string]string{
		"/ops/topics?state=due":      "/ops/topics?state=due",
		"/ops/topics/1?msg=priority": "/ops/topics/1",
		"":                           "/ops/",
		"https://evil.example/ops/":  "/ops/",
		"//evil.example/ops/":        "/ops/",
		"/other/":                    "/ops/",
		"/ops/\\evil":                "/ops/",
	} {
		if got := s.safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestLoginFailuresBounded: the per-client failure records stay at
// maxThrottledClients however many addresses fail; clients beyond share
// one record, which throttles them together; records of clients whose
// window ended are swept to make room.
func TestLoginFailuresBounded(t *testing.T) {
	s := newSessions(time.Hour)
	now := time.Unix(1_700_000_000, 0)
	for i := range maxThrottledClients + 500 {
		s.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now)
	}
	if n := len(s.failures); n != maxThrottledClients {
		t.Fatalf("%d failure records, want the bound %d", n, maxThrottledClients)
	}
	if s.overflow.n != 500 {
		t.Fatalf("overflow record counts %d failures, want 500", s.overflow.n)
	}
	if !s.throttled("192.0.2.1", now) {
		t.Fatal("a new client while the records are full and the overflow record is locked is not throttled")
	}
	if s.throttled("10.0.0.1", now) {
		t.Fatal("a client with one failure of its own is throttled")
	}
	later := now.Add(loginWindow + time.Second)
	s.failed("192.0.2.1", later)
	if n := len(s.failures); n != 1 || s.failures["192.0.2.1"] == nil {
		t.Fatalf("after the window, %d records (want the expired swept and the new client's own)", n)
	}
	for range maxLoginFailures - 1 {
		s.failed("192.0.2.1", later)
	}
	if !s.throttled("192.0.2.1", later) || s.throttled("192.0.2.2", later) {
		t.Fatal("per-client throttle after the sweep")
	}
	if s.throttled("192.0.2.1", later.Add(loginWindow)) {
		t.Fatal("still throttled a window after the last failure")
	}
}
