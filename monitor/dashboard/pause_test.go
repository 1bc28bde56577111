package dashboard_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/nonqueue/nonqueue/monitor/dashboard"
)

// TestPauseActions: pause and resume through HTTP like the other actions:
// refused without a session, the CSRF token or the same origin, and on bad
// input (each a 4xx that records nothing); a good pause is recorded with
// the operator and shows on the overview (banner, list, Resume button) and
// in /api/summary; Resume ends it in the operator's name.
func TestPauseActions(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.OperatorToken = testToken })
	c := b.client(t)
	loginCSRF := c.csrf("/")
	expect(t, "pause without a session", c.post("/actions/pause", url.Values{"csrf": {loginCSRF}, "reason": {"x"}}, ""), 403, "log in")
	if r := c.get("/"); strings.Contains(r.body, `id="pause-form"`) {
		t.Error("the pause form is shown before logging in")
	}
	c.login("", "erin")
	csrf := c.csrf("/")
	expect(t, "pause, no csrf", c.post("/actions/pause", url.Values{"reason": {"x"}}, ""), 403, "CSRF")
	expect(t, "pause, cross-origin", c.post("/actions/pause", url.Values{"csrf": {csrf}}, "https://evil.example"), 403, "cross-origin")
	for _, bad := range []struct {
		form url.Values
		want string
	}{
		{url.Values{"for": {"0s"}}, "want a positive duration"},
		{url.Values{"for": {"-1h"}}, "want a positive duration"},
		{url.Values{"for": {"soon"}}, "want a positive duration"},
		{url.Values{"for": {"9000h"}}, "for 9000h0m0s"},
		{url.Values{"replica": {"0"}}, "want a replica&#39;s server id"},
		{url.Values{"replica": {"r2"}}, "want a replica&#39;s server id"},
		{url.Values{"below_priority": {"high"}}, "not an integer"},
		{url.Values{"below_priority": {"99999999999"}}, "below priority 99999999999"},
		{url.Values{"reason": {strings.Repeat("r", 501)}}, "at most 500"},
	} {
		bad.form.Set("csrf", csrf)
		expect(t, "pause "+bad.form.Encode()[:min(40, len(bad.form.Encode()))], c.post("/actions/pause", bad.form, ""), 400, bad.want)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM pause"); n != 0 {
		t.Fatalf("%d pauses recorded by refused actions", n)
	}

	r := c.post("/actions/pause", url.Values{"csrf": {csrf}, "below_priority": {"4"}, "for": {"30m"}, "reason": {"INC-7 <b>hot</b>"}}, "")
	if r.status != http.StatusSeeOther || r.location != "/?msg=paused" {
		t.Fatalf("pause: %d %q\n%s", r.status, r.location, snippet(r.body))
	}
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE below_priority = 4 AND replica_server_id IS NULL AND paused_by LIKE '%erin%' AND expires_at > NOW(6) + INTERVAL 29 MINUTE"); n != 1 {
		t.Fatal("the pause is not recorded with its scope, operator and expiry")
	}
	id := b.count(t, "SELECT MAX(id) FROM pause")
	page := c.get("/?msg=paused")
	expect(t, "overview while paused", page, 200, `id="pause-banner"`, "PAUSED.", "topics with priority below 4 on every replica",
		"INC-7 &lt;b&gt;hot&lt;/b&gt;", "erin", "left)", `id="resume-`, "Paused: workers claim nothing")
	expect(t, "another page while paused", c.get("/topics"), 200, `id="pause-banner-page"`, "1 pause in force")
	var sum struct {
		Pauses []struct {
			ID     int64  `json:"id"`
			By     string `json:"paused_by"`
			Reason string `json:"reason"`
		} `json:"pauses"`
	}
	if err := json.Unmarshal([]byte(c.get("/api/summary").body), &sum); err != nil || len(sum.Pauses) != 1 || sum.Pauses[0].ID != id || sum.Pauses[0].Reason != "INC-7 <b>hot</b>" {
		t.Fatalf("/api/summary pauses: %+v %v", sum.Pauses, err)
	}

	expect(t, "resume, bad id", c.post("/actions/resume", url.Values{"csrf": {csrf}, "id": {"0"}}, ""), 400, "want a positive integer")
	r = c.post("/actions/resume", url.Values{"csrf": {csrf}, "id": {itoa(id)}}, "")
	if r.status != http.StatusSeeOther || r.location != "/?msg=resumed" {
		t.Fatalf("resume: %d %q", r.status, r.location)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE id = ? AND expires_at <= NOW(6) AND resumed_by LIKE '%erin%'", id); n != 1 {
		t.Fatal("resume did not end the pause in erin's name")
	}
	if r := c.get("/"); strings.Contains(r.body, `id="pause-banner"`) {
		t.Error("the banner is still shown after the resume")
	}
	if r := c.get("/failures"); strings.Contains(r.body, `id="pause-banner-page"`) {
		t.Error("the pages' banner is still shown after the resume")
	}
	r = c.post("/actions/resume", url.Values{"csrf": {csrf}, "id": {itoa(id)}}, "")
	if r.location != "/?msg=not-paused" {
		t.Errorf("second resume: %d %q, want the not-paused message", r.status, r.location)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
