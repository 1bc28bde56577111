package dashboard_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/queue"
)

// replicaServerID is replica 1's @@server_id in the sandbox.
const replicaServerID = 1001

// seedActivity gives b topics 1..30, a running topic (claimed by
// instance 100101, registered on replica 1), a heartbeat row replicated to
// replica 1, and a run history: done runs, two failures with the same
// error but different numbers, and runs whose logs are inside, outside and
// around the log directory. It returns the run ids by name.
func seedActivity(t *testing.T, b *bundle) map[string]int64 {
	t.Helper()
	b.seedTopics(t, 1, 30)
	const inst = 100101
	claim, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: inst})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.hist.Register(b.ctx, monitor.InstanceInfo{ID: inst, Host: "worker-a", PID: 4242, Version: "test", ReplicaServerID: replicaServerID}); err != nil {
		t.Fatal(err)
	}
	if err := b.hist.SetState(b.ctx, inst, monitor.StateRunning, claim.TopicID, 0, 0); err != nil {
		t.Fatal(err)
	}
	hb := &monitor.Heartbeat{Primary: b.db, Schema: b.name, WriterID: replicaServerID}
	if err := hb.RunOnce(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.db); err != nil {
		t.Fatal(err)
	}
	inside := b.writeLog(t, "5.1.1.log", "procedure calc(5, 2)\nSUMMARY\t5\noutcome: done <b>bold</b>\n")
	for i := range 5 {
		b.seedRun(t, monitor.Run{TopicID: int64(5 + i), InstanceID: inst, Replica: "replica1", ClaimToken: 1, Scope: 2, Outcome: monitor.OutcomeDone,
			Bytes: 4096, LagWait: time.Duration(i+1) * time.Millisecond, Proc: 20 * time.Millisecond, Transfer: 5 * time.Millisecond, Publish: 2 * time.Millisecond,
			LogPath: inside})
	}
	b.seedRun(t, monitor.Run{TopicID: 7, InstanceID: inst, ClaimToken: 2, Scope: 2, Outcome: monitor.OutcomeFailed, Error: "procedure: calc failed on purpose (topic 7)"})
	b.seedRun(t, monitor.Run{TopicID: 8, InstanceID: inst, ClaimToken: 2, Scope: 2, Outcome: monitor.OutcomeParked, Error: "procedure: calc failed on purpose (topic 8)"})
	// Topic 12's log as the worker writes it, rewritten by its latest run
	// (claim token 9): the older run's page says so.
	rewritten := b.writeLog(t, "12.log", "# nonqueue: CALL db.calc(12, 1) at 2026-11-30T10:00:00Z, timeout 1h0m0s, claim token 9, instance 100101\nSUMMARY\t12\n")
	b.seedRun(t, monitor.Run{TopicID: 12, InstanceID: inst, ClaimToken: 8, Scope: 1, Outcome: monitor.OutcomeDone, LogPath: rewritten})
	b.seedRun(t, monitor.Run{TopicID: 12, InstanceID: inst, ClaimToken: 9, Scope: 1, Outcome: monitor.OutcomeDone, LogPath: rewritten})
	b.seedRun(t, monitor.Run{TopicID: 9, InstanceID: inst, ClaimToken: 3, Scope: 1, Outcome: monitor.OutcomeDone, LogPath: "/etc/passwd"})
	b.seedRun(t, monitor.Run{TopicID: 9, InstanceID: inst, ClaimToken: 4, Scope: 1, Outcome: monitor.OutcomeDone, LogPath: b.logDir + "/../../etc/passwd"})
	b.seedRun(t, monitor.Run{TopicID: 9, InstanceID: inst, ClaimToken: 5, Scope: 1, Outcome: monitor.OutcomeDone, LogPath: b.logDir + "/gone.log"})
	ids := map[string]int64{}
	rows, err := b.db.QueryContext(b.ctx, "SELECT id, topic_id, claim_token FROM run ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, topic, token int64
		rows.Scan(&id, &topic, &token)
		switch {
		case topic == 5:
			ids["inside"] = id
		case topic == 9 && token == 3:
			ids["outside"] = id
		case topic == 9 && token == 4:
			ids["dotdot"] = id
		case topic == 9 && token == 5:
			ids["missing"] = id
		case topic == 7:
			ids["failed"] = id
		case topic == 12 && token == 8:
			ids["older"] = id
		case topic == 12 && token == 9:
			ids["latest"] = id
		}
	}
	ids["running"] = claim.TopicID
	return ids
}

// TestPages: every page renders on a live database with what it is for.
func TestPages(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ids := seedActivity(t, b)
	c := b.client(t)

	r := c.get("/")
	expect(t, "overview", r, 200, `data-state="due"`, `data-state="running"`, "Backlog by priority and scope", "<svg", "Time per phase", `id="running"`, "read-only")
	if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || r.header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("security headers: %v", r.header)
	}
	var sum dashboard.Summary
	r = c.get("/api/summary")
	if err := json.Unmarshal([]byte(r.body), &sum); err != nil || r.status != 200 {
		t.Fatalf("summary json: %d %v\n%s", r.status, err, snippet(r.body))
	}
	if sum.Topics.Total != 30 || sum.Topics.States[queue.TopicRunning] != 1 || sum.Hour.Done != 10 || sum.Hour.Failed != 2 || sum.Phases.Runs != 10 {
		t.Errorf("summary: total %d running %d done %d failed %d phase runs %d", sum.Topics.Total, sum.Topics.States[queue.TopicRunning], sum.Hour.Done, sum.Hour.Failed, sum.Phases.Runs)
	}
	if len(sum.Instances) != 1 || sum.Instances[0].Stale || sum.Instances[0].TopicID != ids["running"] {
		t.Errorf("summary instances: %+v", sum.Instances)
	}

	expect(t, "replicas", c.get("/replicas"), 200, fmt.Sprintf("Replica server_id %d", replicaServerID), "live lag", "replication running", "worker-a", "heartbeat row age", "newest run")
	r = c.get("/topics")
	expect(t, "topics", r, 200, `data-topic="1"`, `data-topic="30"`)
	if !strings.Contains(r.body, "done ") || strings.Count(r.body, `<span class="muted">none</span>`) != 30-6 {
		t.Errorf("topic list's last runs: want 6 topics with a run and 24 with none\n%s", snippet(r.body))
	}
	expect(t, "running topics", c.get("/topics?state=running"), 200, fmt.Sprintf(`data-topic="%d"`, ids["running"]), "instance 100101")
	expect(t, "topic page", c.get("/topics/7"), 200, "Topic 7", "Run history", "calc failed on purpose (topic 7)")
	expect(t, "running topic page", c.get(fmt.Sprintf("/topics/%d", ids["running"])), 200, "instance 100101, claim token 1")
	expect(t, "failures", c.get("/failures"), 200, "calc failed on purpose (topic #)", "parked 1", "failed 1")
	expect(t, "failures 1h", c.get("/failures?window=1h"), 200, "in the last 1h00m")
	r = c.get(fmt.Sprintf("/runs/%d/log", ids["inside"]))
	expect(t, "run log", r, 200, "SUMMARY", "outcome: done &lt;b&gt;bold&lt;/b&gt;")
	expect(t, "an older run's rewritten log", c.get(fmt.Sprintf("/runs/%d/log", ids["older"])), 200, `id="rewritten"`, "claim token 9; this run's was 8", "SUMMARY\t12")
	if r := c.get(fmt.Sprintf("/runs/%d/log", ids["latest"])); r.status != 200 || strings.Contains(r.body, `id="rewritten"`) {
		t.Errorf("the latest run's own log: status %d, says rewritten: %v", r.status, strings.Contains(r.body, `id="rewritten"`))
	}
	expect(t, "log outside the log dir", c.get(fmt.Sprintf("/runs/%d/log", ids["outside"])), 403, "not under a configured log directory")
	expect(t, "log path with ..", c.get(fmt.Sprintf("/runs/%d/log", ids["dotdot"])), 403, "not under a configured log directory")
	expect(t, "missing log", c.get(fmt.Sprintf("/runs/%d/log", ids["missing"])), 404, "not on this host")
	expect(t, "run without a log", c.get(fmt.Sprintf("/runs/%d/log", ids["failed"])), 404, "recorded no log")
	expect(t, "healthz", c.get("/healthz"), 200, "ok")
	r = c.get("/static/app.js")
	expect(t, "script", r, 200, "X-Nonqueue-Refresh")
	expect(t, "style", c.get("/static/style.css"), 200, "svg.chart")
}

// TestBadInput: malformed or unknown input is a 4xx with a message that
// says what was wrong.
func TestBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seedTopics(t, 1, 3)
	c := b.client(t)
	for _, tc := range []struct {
		path   string
		status int
		msg    string
	}{
		{"/topics/abc", 400, `topic id &#34;abc&#34;: want a positive integer`}, // not a number
		{"/topics/0", 400, "want a positive integer"},                           // 0 means "not running", never a topic
		{"/topics/99", 404, "topic 99 is not in the topic table"},               // well-formed, absent
		{"/topics?state=sleeping", 400, "state &#34;sleeping&#34;"},             // unknown state
		{"/topics?min_priority=high", 400, "min priority &#34;high&#34;: not an integer"},
		{"/topics?min_priority=5&max_priority=1", 400, "min priority 5 is above max priority 1"},
		{"/topics?after=x", 400, "after &#34;x&#34;"},
		{"/failures?window=forever", 400, "want a duration from 1m to 744h"},
		{"/failures?window=1s", 400, "want a duration from 1m to 744h"},
		{"/runs/x/log", 400, "run id"},
		{"/runs/12345/log", 404, "run 12345 is not in the run history"},
		{"/nowhere", 404, "no page at /nowhere"},
	} {
		expect(t, tc.path, c.get(tc.path), tc.status, tc.msg)
	}
	// Wrong methods.
	if r := c.get("/actions/priority"); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET on an action: %d, want 405", r.status)
	}
	if r := c.post("/topics/1", url.Values{}, ""); r.status != http.StatusMethodNotAllowed {
		t.Errorf("POST on a page: %d, want 405", r.status)
	}
}

// TestActionsDisabledWithoutToken: with no operator token, pages say
// read-only and show no forms, and every POST is 403 and changes nothing.
func TestActionsDisabledWithoutToken(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.seedTopics(t, 1, 1)
	c := b.client(t)
	r := c.get("/topics/1")
	expect(t, "topic page", r, 200, "read-only")
	if strings.Contains(r.body, "<form method=\"post\"") {
		t.Error("read-only topic page has a POST form")
	}
	for _, path := range []string{"/login", "/logout", "/actions/priority", "/actions/request", "/actions/release", "/actions/park", "/actions/unpark", "/actions/request-matching", "/actions/pause", "/actions/resume"} {
		r := c.post(path, url.Values{"id": {"1"}, "priority": {"77"}, "token": {testToken}, "name": {"eve"}, "csrf": {"x"}}, "")
		expect(t, "POST "+path, r, 403, "actions are disabled")
	}
	if p := b.count(t, "SELECT priority FROM topic WHERE id = 1"); p == 77 {
		t.Fatal("a disabled action changed the priority")
	}
}

// TestLoginAndCSRF: the login needs the double-submit token, the same
// origin and the right operator token; actions need a session, the same
// origin and the session's CSRF token. Every refusal is a 403 that
// changes nothing, and the token never reaches the log.
func TestLoginAndCSRF(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.OperatorToken = testToken })
	b.seedTopics(t, 1, 1)
	c := b.client(t)
	loginCSRF := c.csrf("/")
	good := url.Values{"csrf": {loginCSRF}, "name": {"alice"}, "token": {testToken}}
	with := func(v url.Values, k, val string) url.Values {
		out := url.Values{}
		for kk, vv := range v {
			out[kk] = vv
		}
		if val == "" {
			out.Del(k)
		} else {
			out.Set(k, val)
		}
		return out
	}
	expect(t, "login, wrong token", c.post("/login", with(good, "token", "not-the-token-at-all"), ""), 403, "wrong operator token")
	expect(t, "login, no token", c.post("/login", with(good, "token", ""), ""), 403, "wrong operator token")
	expect(t, "login, no csrf", c.post("/login", with(good, "csrf", ""), ""), 403, "CSRF")
	expect(t, "login, wrong csrf", c.post("/login", with(good, "csrf", "forged"), ""), 403, "CSRF")
	expect(t, "login, cross-origin", c.post("/login", good, "https://evil.example"), 403, "cross-origin")
	expect(t, "login, bad name", c.post("/login", with(good, "name", "<script>"), ""), 400, "name:")
	fresh := b.client(t) // no csrf cookie at all
	expect(t, "login without the cookie", fresh.post("/login", good, ""), 403, "CSRF")

	// An action before logging in.
	expect(t, "action without a session", c.post("/actions/priority", url.Values{"id": {"1"}, "priority": {"9"}, "csrf": {loginCSRF}}, ""), 403, "log in")

	r := c.post("/login", with(good, "next", "https://evil.example/"), "")
	if r.status != http.StatusSeeOther || r.location != "/?msg=login" {
		t.Fatalf("login: %d %q (an outside next must land home)", r.status, r.location)
	}
	csrf := c.csrf("/topics/1")
	if csrf == loginCSRF {
		t.Fatal("the session's CSRF token is the login cookie's")
	}
	act := url.Values{"id": {"1"}, "priority": {"9"}, "csrf": {csrf}}
	expect(t, "action, no csrf", c.post("/actions/priority", with(act, "csrf", ""), ""), 403, "CSRF")
	expect(t, "action, login csrf", c.post("/actions/priority", with(act, "csrf", loginCSRF), ""), 403, "CSRF")
	expect(t, "action, cross-origin", c.post("/actions/priority", act, "http://evil.example"), 403, "cross-origin")
	expect(t, "action, no Origin or Referer", c.post("/actions/priority", act, "-"), 303) // not a browser; the session and CSRF token still count
	b.exec(t, "UPDATE topic SET priority = 0 WHERE id = 1")
	req, _ := http.NewRequest("POST", b.ts.URL+"/actions/priority", strings.NewReader(act.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Referer", "https://evil.example/page")
	expect(t, "action, foreign referer", c.do(req), 403, "cross-origin")
	if p := b.count(t, "SELECT priority FROM topic WHERE id = 1"); p != 0 {
		t.Fatalf("a refused action changed the priority to %d", p)
	}
	r = c.post("/actions/priority", act, "")
	if r.status != http.StatusSeeOther || r.location != "/topics/1?msg=priority" {
		t.Fatalf("action: %d %q\n%s", r.status, r.location, snippet(r.body))
	}
	if p := b.count(t, "SELECT priority FROM topic WHERE id = 1"); p != 9 {
		t.Fatalf("priority %d after the action, want 9", p)
	}
	expect(t, "flash", c.get("/topics/1?msg=priority"), 200, "Priority changed.", "operator: <b id=\"operator\">alice</b>")

	// Log out: the session is gone.
	expect(t, "logout", c.post("/logout", url.Values{"csrf": {csrf}}, ""), 303)
	expect(t, "action after logout", c.post("/actions/priority", act, ""), 403, "log in")
	if strings.Contains(b.logs.String(), testToken) {
		t.Fatal("the operator token appears in the log")
	}
	if !strings.Contains(b.logs.String(), "wrong operator token") {
		t.Errorf("failed logins are not logged:\n%s", b.logs.String())
	}
}

// TestActions drives every action through HTTP and checks the table, and
// that bad input is a 4xx that changes nothing.
func TestActions(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.OperatorToken = testToken })
	b.seedTopics(t, 1, 5)
	b.exec(t, "UPDATE topic SET required = 0 WHERE id = 2")
	b.exec(t, "UPDATE topic SET parked_at = NOW(6), attempts = 5 WHERE id IN (3, 4)")
	c := b.client(t)
	c.login("", "bob")
	csrf := c.csrf("/topics/1")
	post := func(path string, kv ...string) response {
		v := url.Values{"csrf": {csrf}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return c.post(path, v, "")
	}

	// Request recalc.
	if r := post("/actions/request", "id", "2", "scope", "partial", "priority", "7"); r.status != 303 {
		t.Fatalf("request: %d\n%s", r.status, snippet(r.body))
	}
	if req, prio := b.count(t, "SELECT required FROM topic WHERE id = 2"), b.count(t, "SELECT priority FROM topic WHERE id = 2"); req != 1 || prio != 7 {
		t.Fatalf("after request: required %d priority %d", req, prio)
	}
	expect(t, "request, bad scope", post("/actions/request", "id", "2", "scope", "huge"), 400, "scope &#34;huge&#34;")
	expect(t, "request, missing topic", post("/actions/request", "id", "404"), 404, "not found")
	expect(t, "request, bad id", post("/actions/request", "id", "one"), 400, "topic id")

	// Request for a filter: the parked ones.
	r := post("/actions/request-matching", "state", "parked", "scope", "full")
	if r.status != 303 || !strings.Contains(r.location, "n=2") {
		t.Fatalf("request matching: %d %q\n%s", r.status, r.location, snippet(r.body))
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE parked_at IS NOT NULL"); n != 0 {
		t.Fatalf("%d topics still parked", n)
	}
	expect(t, "request matching, no filter", post("/actions/request-matching", "scope", "full"), 400, "give a state or a priority range")
	expect(t, "request matching, bad state", post("/actions/request-matching", "state", "nope"), 400, "state")

	// Priority.
	expect(t, "priority, not a number", post("/actions/priority", "id", "1", "priority", "high"), 400, "priority &#34;high&#34;: not an integer")
	expect(t, "priority, empty", post("/actions/priority", "id", "1", "priority", ""), 400, "give an integer")
	expect(t, "priority, missing topic", post("/actions/priority", "id", "404", "priority", "1"), 404, "not found")

	// Park and unpark.
	if r := post("/actions/park", "id", "5", "reason", "broken source data"); r.status != 303 {
		t.Fatalf("park: %d\n%s", r.status, snippet(r.body))
	}
	var lastErr string
	b.db.QueryRowContext(b.ctx, "SELECT last_error FROM topic WHERE id = 5 AND parked_at IS NOT NULL").Scan(&lastErr)
	if !strings.Contains(lastErr, "bob") || !strings.Contains(lastErr, "broken source data") {
		t.Fatalf("parked topic's last error %q", lastErr)
	}
	if r := post("/actions/unpark", "id", "5"); r.status != 303 || !strings.Contains(r.location, "msg=unparked") {
		t.Fatalf("unpark: %d %q", r.status, r.location)
	}
	if r := post("/actions/unpark", "id", "5"); r.status != 303 || !strings.Contains(r.location, "msg=not-parked") {
		t.Fatalf("second unpark: %d %q", r.status, r.location)
	}

	// Release a claim: the one shown, by the operator; a stale one is 409.
	claim, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 100102})
	if err != nil {
		t.Fatal(err)
	}
	id := strconv.FormatInt(claim.TopicID, 10)
	page := c.get("/topics/" + id)
	expect(t, "running topic page", page, 200, `id="release-form"`, fmt.Sprintf(`name="token" value="%d"`, claim.Token))
	expect(t, "park running", post("/actions/park", "id", id), 409, "running")
	expect(t, "release, stale token", post("/actions/release", "id", id, "instance", "100102", "token", strconv.FormatUint(claim.Token+5, 10)), 409, "claim changed since the page was loaded")
	expect(t, "release, bad token", post("/actions/release", "id", id, "instance", "100102", "token", "-1"), 400, "claim token")
	expect(t, "release, no instance", post("/actions/release", "id", id, "token", "1"), 400, "instance")
	if r := post("/actions/release", "id", id, "instance", "100102", "token", strconv.FormatUint(claim.Token, 10), "reason", "worker host died"); r.status != 303 {
		t.Fatalf("release: %d\n%s", r.status, snippet(r.body))
	}
	var outcome, msg string
	if err := b.db.QueryRowContext(b.ctx, "SELECT outcome, error FROM run WHERE topic_id = ? ORDER BY id DESC LIMIT 1", claim.TopicID).Scan(&outcome, &msg); err != nil {
		t.Fatal(err)
	}
	if outcome != "released" || !strings.Contains(msg, `"bob"`) || !strings.Contains(msg, "worker host died") {
		t.Fatalf("release record: %q %q", outcome, msg)
	}
	if n := b.count(t, "SELECT running FROM topic WHERE id = ?", claim.TopicID); n != 0 {
		t.Fatalf("running = %d after release", n)
	}
	expect(t, "topic page shows the release", c.get("/topics/"+id), 200, "released by operator")
}

// TestPrefix: mounted under /ops, every link, cookie and form stays under
// it; the root is not served.
func TestPrefix(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.Prefix = "/ops/"; c.OperatorToken = testToken })
	b.seedTopics(t, 1, 2)
	c := b.client(t)
	r := c.get("/ops")
	if r.status != http.StatusMovedPermanently || r.location != "/ops/" {
		t.Fatalf("/ops: %d %q", r.status, r.location)
	}
	r = c.get("/ops/")
	expect(t, "overview", r, 200, `href="/ops/topics"`, `href="/ops/static/style.css"`, `action="/ops/login"`)
	if strings.Contains(r.body, `href="/topics"`) {
		t.Error("a link escapes the prefix")
	}
	for _, p := range []string{"/", "/topics", "/healthz", "/opsx/"} {
		if r := c.get(p); r.status != 404 {
			t.Errorf("%s outside the prefix: %d, want 404", p, r.status)
		}
	}
	expect(t, "healthz", c.get("/ops/healthz"), 200, "ok")
	expect(t, "topic", c.get("/ops/topics/2"), 200, "Topic 2")
	expect(t, "script", c.get("/ops/static/app.js"), 200)
	c.login("/ops", "carol")
	u, _ := url.Parse(b.ts.URL + "/ops/")
	for _, ck := range c.http.Jar.Cookies(u) {
		if ck.Name == "nq_session" {
			goto found
		}
	}
	t.Fatal("no session cookie for /ops/")
found:
	csrf := c.csrf("/ops/topics/2")
	r = c.post("/ops/actions/priority", url.Values{"id": {"2"}, "priority": {"3"}, "csrf": {csrf}}, "")
	if r.status != 303 || r.location != "/ops/topics/2?msg=priority" {
		t.Fatalf("action under the prefix: %d %q\n%s", r.status, r.location, snippet(r.body))
	}
	if p := b.count(t, "SELECT priority FROM topic WHERE id = 2"); p != 3 {
		t.Fatalf("priority %d, want 3", p)
	}
}

// TestHealthzPrimaryDown: /healthz is 503 with the reason when the primary
// does not answer.
func TestHealthzPrimaryDown(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	dead := testdb.Open(t, env.Primary(b.name))
	dead.Close()
	srv, err := dashboard.New(dashboard.Config{}, &dashboard.Sources{Queue: b.q, History: &monitor.History{Primary: dead, Schema: b.name}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "primary unreachable") {
		t.Fatalf("healthz with the primary down: %d %q", rec.Code, rec.Body.String())
	}
}

// TestStartStop serves on a real port and stops cleanly; Stop is safe
// before Start and twice.
func TestStartStop(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.Listen = "127.0.0.1:0" })
	if err := b.srv.Stop(b.ctx); err != nil {
		t.Fatalf("stop before start: %v", err)
	}
	if err := b.srv.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.srv.Start(b.ctx); err == nil {
		t.Fatal("second start succeeded")
	}
	addr := b.srv.Addr()
	res, err := http.Get("http://" + addr + "/healthz")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("healthz over TCP: %v %v", res, err)
	}
	res.Body.Close()
	for range 2 {
		if err := b.srv.Stop(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := http.Get("http://" + addr + "/healthz"); err == nil {
		res.Body.Close()
		t.Fatal("still serving after Stop")
	}
}
