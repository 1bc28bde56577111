package dashboard_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/queue"
)

var env *testdb.Env

// One replica: the replicas page reads it live (heartbeat lag).
func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "dashboard", 1, &env)) }

const testToken = "correct-horse-battery-staple-42"

type bundle struct {
	ctx    context.Context
	name   string
	q      *queue.Queue
	db     *sql.DB // the test's own pool on the primary, default database = name
	hist   *monitor.History
	src    *dashboard.Sources
	srv    *dashboard.Server
	ts     *httptest.Server
	logDir string
	logs   *logBuffer
}

// setup gives t a database with nonqueue's schema, a dashboard on it
// (replica 1 read live) served by an httptest server, and a log directory.
// tweak adjusts the dashboard's configuration.
func setup(t *testing.T, tweak func(*dashboard.Config)) *bundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name, ActiveValues: []int64{1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	b := &bundle{ctx: ctx, name: name, q: q, db: testdb.Open(t, env.Primary(name)), logDir: t.TempDir(), logs: &logBuffer{}}
	b.hist = &monitor.History{Primary: q.DB(), Schema: name}
	b.src = &dashboard.Sources{Queue: q, History: b.hist, Replicas: []dashboard.Replica{{Name: "replica1", DB: testdb.Open(t, env.Replica(0, ""))}}}
	cfg := dashboard.Config{LogDirs: []string{b.logDir}, CacheTTL: time.Nanosecond}
	if tweak != nil {
		tweak(&cfg)
	}
	b.srv, err = dashboard.New(cfg, b.src, slog.New(slog.NewTextHandler(b.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b.ts = httptest.NewServer(b.srv.Handler())
	t.Cleanup(b.ts.Close)
	return b
}

// logBuffer collects the dashboard's log, to check what it never says.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (b *bundle) exec(t *testing.T, stmt string, args ...any) {
	t.Helper()
	if _, err := b.db.ExecContext(b.ctx, stmt, args...); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
}

func (b *bundle) count(t *testing.T, stmt string, args ...any) int64 {
	t.Helper()
	var n sql.NullInt64
	if err := b.db.QueryRowContext(b.ctx, stmt, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", stmt, err)
	}
	return n.Int64
}

// seedTopics inserts topics: ids from..from+n-1, required 1, due an hour
// ago, priority id%3, active.
func (b *bundle) seedTopics(t *testing.T, from, n int) {
	t.Helper()
	var vals []string
	var args []any
	for id := from; id < from+n; id++ {
		vals = append(vals, "(?, 1, NOW(6) - INTERVAL 1 HOUR, ?, 1)")
		args = append(args, id, id%3)
	}
	b.exec(t, "INSERT INTO topic (id, required, due, priority, active) VALUES "+strings.Join(vals, ", "), args...)
}

// seedRun records one finished run through the history.
func (b *bundle) seedRun(t *testing.T, r monitor.Run) {
	t.Helper()
	if r.StartedAt.IsZero() {
		r.StartedAt = time.Now().Add(-r.Proc - r.LagWait)
	}
	if err := b.hist.RecordRun(b.ctx, &r); err != nil {
		t.Fatal(err)
	}
}

// writeLog writes a run log under the dashboard's log directory.
func (b *bundle) writeLog(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(b.logDir, name)
	if err := os.WriteFile(p, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

// client is a browser-like HTTP client: cookies kept, redirects not
// followed (tests look at them).
type client struct {
	t    *testing.T
	base string
	http *http.Client
}

func (b *bundle) client(t *testing.T) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: b.ts.URL, http: &http.Client{
		Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

type response struct {
	status   int
	body     string
	location string
	header   http.Header
}

func (c *client) do(req *http.Request) response {
	c.t.Helper()
	res, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return response{status: res.StatusCode, body: string(body), location: res.Header.Get("Location"), header: res.Header}
}

func (c *client) get(path string) response {
	c.t.Helper()
	req, err := http.NewRequest("GET", c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.do(req)
}

// post sends a form the way a browser on the dashboard's own page does:
// with its Origin, unless origin is given ("-" for none).
func (c *client) post(path string, form url.Values, origin string) response {
	c.t.Helper()
	req, err := http.NewRequest("POST", c.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	switch origin {
	case "":
		req.Header.Set("Origin", c.base)
	case "-":
	default:
		req.Header.Set("Origin", origin)
	}
	return c.do(req)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf loads path and returns the CSRF token its forms carry.
func (c *client) csrf(path string) string {
	c.t.Helper()
	r := c.get(path)
	m := csrfField.FindStringSubmatch(r.body)
	if m == nil {
		c.t.Fatalf("no csrf field on %s (status %d)", path, r.status)
	}
	return m[1]
}

// login logs in as name with the test token and fails t otherwise.
func (c *client) login(prefix, name string) {
	c.t.Helper()
	r := c.post(prefix+"/login", url.Values{"csrf": {c.csrf(prefix + "/")}, "name": {name}, "token": {testToken}, "next": {prefix + "/topics"}}, "")
	if r.status != http.StatusSeeOther || !strings.HasPrefix(r.location, prefix+"/topics") {
		c.t.Fatalf("login: %d %s\n%s", r.status, r.location, r.body)
	}
}

func expect(t *testing.T, what string, r response, status int, contains ...string) {
	t.Helper()
	if r.status != status {
		t.Errorf("%s: status %d, want %d\n%s", what, r.status, status, snippet(r.body))
		return
	}
	for _, c := range contains {
		if !strings.Contains(r.body, c) {
			t.Errorf("%s: body lacks %q\n%s", what, c, snippet(r.body))
		}
	}
}

func snippet(s string) string {
	if i := strings.Index(s, `<main id="content">`); i >= 0 {
		s = s[i:]
	}
	if len(s) > 1500 {
		s = s[:1500] + "…"
	}
	return s
}
