package dashboard_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor/dashboard"
)

// TestNonPositiveIDsRefused: a topic id ≤ 0 is a 400 on every page and
// action that takes one, and changes nothing, even when the table holds
// such a row (an application's table may).
func TestNonPositiveIDsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) { c.OperatorToken = testToken })
	b.seedTopics(t, 1, 2)
	b.exec(t, "INSERT INTO topic (id, required, due, priority, active, attempts, parked_at) VALUES (-5, 0, NOW(6), 0, 1, 5, NOW(6)), (0, 0, NOW(6), 0, 1, 0, NULL)")
	c := b.client(t)
	c.login("", "carol")
	csrf := c.csrf("/topics/1")
	for _, id := range []string{"-5", "0"} {
		expect(t, "topic page "+id, c.get("/topics/"+id), http.StatusBadRequest, "want a positive integer")
		expect(t, "topic list filter "+id, c.get("/topics?id="+id), http.StatusBadRequest, "want a positive integer")
		for _, a := range []struct {
			path string
			form url.Values
		}{
			{"/actions/request", url.Values{"scope": {"full"}, "priority": {"9"}}},
			{"/actions/priority", url.Values{"priority": {"9"}}},
			{"/actions/park", url.Values{"reason": {"x"}}},
			{"/actions/unpark", url.Values{}},
			{"/actions/release", url.Values{"instance": {"100101"}, "token": {"1"}}},
		} {
			a.form.Set("csrf", csrf)
			a.form.Set("id", id)
			expect(t, a.path+" id="+id, c.post(a.path, a.form, ""), http.StatusBadRequest, "want a positive integer")
		}
	}
	// A request over a filter that matches the -5 row.
	expect(t, "request-matching over a row with id -5", c.post("/actions/request-matching", url.Values{"csrf": {csrf}, "state": {"parked"}, "scope": {"full"}}, ""),
		http.StatusBadRequest, "topic id -5: topic ids must be positive")
	var got string
	if err := b.db.QueryRowContext(b.ctx, "SELECT GROUP_CONCAT(CONCAT_WS(':', id, required, priority, attempts, parked_at IS NOT NULL) ORDER BY id) FROM topic WHERE id <= 0").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := "-5:0:0:5:1,0:0:0:0:0"; got != want {
		t.Errorf("rows with ids <= 0 after refused actions: %s, want %s", got, want)
	}
}

// fromClient is a browser-like client whose connections leave from the
// loopback address local (127.0.0.0/8 is all loopback on Linux).
func fromClient(t *testing.T, b *bundle, local string) *client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 10 * time.Second}
	return &client{t: t, base: b.ts.URL, http: &http.Client{
		Jar: jar, Timeout: 30 * time.Second,
		Transport:     &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// loginAttempt posts a login with token, sending X-Forwarded-For when fwd
// is set.
func (c *client) loginAttempt(token, fwd string) response {
	c.t.Helper()
	form := url.Values{"csrf": {c.csrf("/")}, "name": {"op"}, "token": {token}, "next": {"/topics"}}
	req, err := http.NewRequest("POST", c.base+"/login", strings.NewReader(form.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", c.base)
	if fwd != "" {
		req.Header.Set("X-Forwarded-For", fwd)
	}
	return c.do(req)
}

// TestLoginThrottlePerClient: 20 failed logins lock out the client that
// made them, not the others; X-Forwarded-For is ignored unless the
// connection comes from a configured trusted proxy, and then names the
// client. A real HTTP server, clients from distinct loopback addresses.
func TestLoginThrottlePerClient(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) {
		c.OperatorToken = testToken
		c.TrustedProxies = []string{"127.0.0.4"}
	})
	attacker := fromClient(t, b, "127.0.0.2")
	for i := 1; i <= 20; i++ {
		expect(t, "failed login", attacker.loginAttempt("wrong-token-wrong-token", ""), http.StatusForbidden, "wrong operator token")
	}
	expect(t, "21st login of the failing client", attacker.loginAttempt(testToken, ""), http.StatusTooManyRequests, "too many failed logins")
	// A forged X-Forwarded-For from an untrusted address changes nothing.
	expect(t, "failing client with a forged X-Forwarded-For", attacker.loginAttempt(testToken, "192.0.2.77"), http.StatusTooManyRequests, "too many failed logins")

	operator := fromClient(t, b, "127.0.0.3")
	expect(t, "another client's typo", operator.loginAttempt("typo", ""), http.StatusForbidden, "wrong operator token")
	if r := operator.loginAttempt(testToken, ""); r.status != http.StatusSeeOther {
		t.Errorf("another client's login while the first is locked out: %d, want 303\n%s", r.status, snippet(r.body))
	}

	// Behind the trusted proxy 127.0.0.4, clients are told apart by
	// X-Forwarded-For (its right-most untrusted entry).
	proxy := fromClient(t, b, "127.0.0.4")
	for i := 1; i <= 20; i++ {
		expect(t, "failed login via the proxy", proxy.loginAttempt("wrong-token-wrong-token", "198.51.100.9, 192.0.2.10"), http.StatusForbidden, "wrong operator token")
	}
	expect(t, "proxied failing client", proxy.loginAttempt(testToken, "192.0.2.10"), http.StatusTooManyRequests, "too many failed logins")
	if r := proxy.loginAttempt(testToken, "192.0.2.11"); r.status != http.StatusSeeOther {
		t.Errorf("another proxied client: %d, want 303\n%s", r.status, snippet(r.body))
	}
	if log := b.logs.String(); !strings.Contains(log, "client=127.0.0.2") || !strings.Contains(log, "client=192.0.2.10") {
		t.Errorf("failed logins are not logged with their client:\n%s", log)
	}
}

// TestNonLoopbackWarning: the dashboard warns at start-up when it listens
// on a non-loopback address (0.0.0.0: every interface), and not on
// 127.0.0.1. Tests bind only loopback addresses on the host, so the
// 0.0.0.0 server listens in a network namespace of its own (see
// inPrivateNetns), where every interface is the namespace's downed
// loopback, and is stopped at once.
func TestNonLoopbackWarning(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		listen string
		warn   bool
	}{{"0.0.0.0:0", true}, {"127.0.0.1:0", false}} {
		b := setup(t, func(c *dashboard.Config) { c.Listen = tc.listen })
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		start := func() error { return b.srv.Start(ctx) }
		var err error
		if tc.warn {
			err = inPrivateNetns(t, start)
		} else {
			err = start()
		}
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		err = b.srv.Stop(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		log := b.logs.String()
		if !strings.Contains(log, "dashboard listening") {
			t.Fatalf("%s: no start-up log:\n%s", tc.listen, log)
		}
		if got := strings.Contains(log, "level=WARN") && strings.Contains(log, "non-loopback"); got != tc.warn {
			t.Errorf("%s: non-loopback warning logged %v, want %v:\n%s", tc.listen, got, tc.warn, log)
		}
	}
}

// inPrivateNetns runs f on an OS thread moved into a new network namespace,
// so the sockets f creates (a listener's) live there and not on the host's
// interfaces. The thread is never unlocked: Go discards it when the
// goroutine ends, so no other goroutine runs in the namespace. Needs
// CAP_SYS_ADMIN (CI runs as root); elsewhere the test skips, except under
// CI, where it fails.
func inPrivateNetns(t *testing.T, f func() error) error {
	t.Helper()
	type result struct {
		err, setup error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			done <- result{setup: err}
			return
		}
		done <- result{err: f()}
	}()
	r := <-done
	if r.setup != nil {
		if os.Getenv("CI") == "" {
			t.Skipf("a private network namespace: unshare(CLONE_NEWNET): %v", r.setup)
		}
		t.Fatalf("a private network namespace: unshare(CLONE_NEWNET): %v", r.setup)
	}
	return r.err
}

// TestTrustedProxiesValidated: addresses and CIDR ranges pass, anything
// else is a configuration error naming the key.
func TestTrustedProxiesValidated(t *testing.T) {
	t.Parallel()
	ok := dashboard.Config{TrustedProxies: []string{"10.0.0.5", "10.1.0.0/16", "::1", "fd00::/8"}}.WithDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"proxy.example", "10.0.0.0/33", ""} {
		err := dashboard.Config{TrustedProxies: []string{bad}}.WithDefaults().Validate()
		var ce *dashboard.ConfigError
		if !errors.As(err, &ce) || ce.Field != "trusted_proxies" {
			t.Errorf("trusted_proxies %q: %v, want an error on trusted_proxies", bad, err)
		}
	}
}
