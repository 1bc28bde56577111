package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// TestThrottleConfig: the [throttle] keys load, and each bad value is
// refused naming its key: an explicit 0 (it would silently mean off), a
// negative limit, a URL that is not http(s), a zero duration.
func TestThrottleConfig(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n[throttle]\n"
	c, err := LoadConfig(writeFile(t, base+`max_threads_running = 40
throttle_url = "http://freno.local:9777/check/nonqueue/mysql/main"
throttle_url_timeout = "500ms"
sample_interval = "2s"
max_concurrent_publishes = 3
publish_wait = "5m"
`))
	if err != nil {
		t.Fatal(err)
	}
	tc := c.throttleConfig()
	if tc.MaxThreadsRunning != 40 || tc.URLTimeout != 500*time.Millisecond || tc.SampleInterval != 2*time.Second ||
		tc.MaxConcurrentPublishes != 3 || tc.PublishWait != 5*time.Minute || !tc.Enabled() {
		t.Fatalf("decoded %+v", tc)
	}
	if d, _ := LoadConfig(writeFile(t, "[primary]\nuser = \"nq\"\n")); d.throttleConfig().Enabled() || d.throttleConfig().MaxConcurrentPublishes != 0 {
		t.Fatalf("throttle on by default: %+v", d.throttleConfig())
	}
	for _, bad := range []struct{ body, key string }{
		{"max_threads_running = 0", "throttle.max_threads_running"},
		{"max_threads_running = -3", "throttle.max_threads_running"},
		{"max_concurrent_publishes = 0", "throttle.max_concurrent_publishes"},
		{"max_concurrent_publishes = -1", "throttle.max_concurrent_publishes"},
		{`throttle_url = "ftp://freno/check"`, "throttle.throttle_url"},
		{`throttle_url = "freno:9777/check"`, "throttle.throttle_url"},
		{`throttle_url_timeout = "0s"`, "throttle.throttle_url_timeout"},
		{`sample_interval = "0s"`, "throttle.sample_interval"},
		{`publish_wait = "-1s"`, "throttle.publish_wait"},
	} {
		_, err := LoadConfig(writeFile(t, base+bad.body+"\n"))
		var ce *ConfigError
		var me *monitor.ConfigError
		switch {
		case errors.As(err, &ce) && ce.Key == bad.key, errors.As(err, &me) && me.Field == bad.key:
		default:
			t.Errorf("%s: %v, want an error naming %s", bad.body, err, bad.key)
		}
	}
}

// TestCheckThrottle: `nonqueue check` reads Threads_running and asks the
// throttle URL: ok with a 200, a warning while the URL says 429 or
// Threads_running is over the limit, a failure when the URL does not
// answer.
func TestCheckThrottle(t *testing.T) {
	b := setupWork(t)
	var code atomic.Int32
	code.Store(http.StatusOK)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(int(code.Load())) }))
	defer srv.Close()
	withThrottle := func(extra string) string {
		path := b.config(t, 0, "")
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(body, []byte("[throttle]\n"+extra)...), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	out, err := run(t, "check", "--config", withThrottle("max_threads_running = 1000\nthrottle_url = \""+srv.URL+"/check\"\nmax_concurrent_publishes = 2\n"))
	if err != nil || !strings.Contains(out, "ok    primary throttle: Threads_running ") || !strings.Contains(out, "throttle URL answered 200") {
		t.Fatalf("check with a healthy throttle: %v\n%s", err, out)
	}
	code.Store(http.StatusTooManyRequests)
	out, err = run(t, "check", "--config", withThrottle("max_threads_running = 1\nthrottle_url = \""+srv.URL+"/check\"\n"))
	if err != nil || !strings.Contains(out, "WARN  primary throttle: the throttle is closed now") || !strings.Contains(out, "answered 429") ||
		!strings.Contains(out, "is over max_threads_running 1") {
		t.Fatalf("check with a closed throttle: %v\n%s", err, out)
	}
	srv.Close()
	out, err = run(t, "check", "--config", withThrottle("throttle_url = \""+srv.URL+"/check\"\nthrottle_url_timeout = \"300ms\"\n"))
	if err == nil || !strings.Contains(out, "FAIL  primary throttle: throttle_url") {
		t.Fatalf("check with a throttle URL that does not answer: %v\n%s", err, out)
	}
}

// TestStatusShowsThrottled: a `nonqueue work` process whose throttle URL
// says 429 claims nothing, and `nonqueue status` shows the fleet
// throttled and why.
func TestStatusShowsThrottled(t *testing.T) {
	b := setupWork(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTooManyRequests) }))
	defer srv.Close()
	path := b.config(t, 0, "")
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(body, []byte("[throttle]\nthrottle_url = \""+srv.URL+"/check\"\nsample_interval = \"100ms\"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	b.addTopics(t, 1, 2)
	startWorker(t, path, "--instances", "2")
	testdb.WaitFor(t, 30*time.Second, "2 instances throttled", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance WHERE state = 'throttled'") == 2
	})
	out, err := run(t, "status", "--config", path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "THROTTLED: the primary is busy, nobody claims or publishes: throttle_url (2 instances)") ||
		!strings.Contains(out, "throttled (throttle_url)") {
		t.Fatalf("status does not show the throttle:\n%s", out)
	}
	if n := b.count(t, "SELECT COALESCE(SUM(claim_token), 0) FROM topic"); n != 0 {
		t.Fatalf("%d claims while throttled", n)
	}
}
