package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// dashOutput is written by the command's goroutine and read by the test.
type dashOutput struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *dashOutput) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *dashOutput) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var dashboardURL = regexp.MustCompile(`dashboard on (http://\S+/) ; actions (\w+)`)

// startDashboard runs `nonqueue dashboard` in the background and returns
// its URL, its actions word (enabled/disabled) and a stop function that
// sends the "signal" (cancels the context) and returns Run's error.
func startDashboard(t *testing.T, args ...string) (string, string, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb dashOutput
	done := make(chan error, 1)
	go func() { done <- Run(ctx, append([]string{"dashboard"}, args...), &out, &errb) }()
	var once sync.Once
	var stopErr error
	stop := func() error { // idempotent: the test and its cleanup both call it
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				stopErr = errors.New("dashboard did not stop within 20s")
			}
		})
		return stopErr
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := dashboardURL.FindStringSubmatch(out.String()); m != nil {
			t.Cleanup(func() { stop() })
			return m[1], m[2], stop
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("dashboard exited: %v\n%s%s", err, out.String(), errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("dashboard did not start in 30s:\n%s%s", out.String(), errb.String())
		}
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestDashboardCommand serves the dashboard from the binary's command
// line under a prefix, read-only without a token, and stops on the
// signal with nil.
func TestDashboardCommand(t *testing.T) {
	t.Parallel()
	b := setupOps(t, "")
	b.seed(t)
	url, actions, stop := startDashboard(t, "--config", b.path, "--listen", "127.0.0.1:0", "--prefix", "ops/")
	if !strings.HasSuffix(url, "/ops/") || actions != "disabled" {
		t.Fatalf("dashboard at %s, actions %s", url, actions)
	}
	if code, body := httpGet(t, url+"healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	code, body := httpGet(t, url)
	if code != 200 || !strings.Contains(body, `data-state="due"`) || !strings.Contains(body, "read-only") {
		t.Fatalf("overview: %d\n%.2000s", code, body)
	}
	if code, body := httpGet(t, url+"replicas"); code != 200 || !strings.Contains(body, "live lag") {
		t.Fatalf("replicas page ([replica] read live): %d\n%.2000s", code, body)
	}
	// The topic table's metrics, checked by Prometheus's own linter.
	code, body = httpGet(t, url+"metrics")
	if code != 200 || !strings.Contains(body, `nonqueue_topics{state="due"}`) || !strings.Contains(body, "nonqueue_oldest_due_age_seconds") {
		t.Fatalf("metrics: %d\n%.2000s", code, body)
	}
	if promtool, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("promtool check metrics on the dashboard: %v\n%s", err, out)
		}
	} else if os.Getenv("CI") != "" {
		t.Fatal("promtool missing")
	}
	if err := stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	for _, args := range [][]string{
		{"dashboard"}, // no config
		{"dashboard", "--config", b.path, "--listen", "256.0.0.1:99999"}, // cannot listen
		{"dashboard", "--config", b.path, "--prefix", "/a b"},            // bad prefix
		{"dashboard", "--config", b.path, "--log-level", "loud"},         // bad level
	} {
		if out, err := run(t, args...); err == nil {
			t.Errorf("%v succeeded:\n%s", args, out)
		}
	}
}

// loadDashboardSection loads a whole file and returns its [dashboard]
// section, as `nonqueue dashboard` does.
func loadDashboardSection(path string) (*DashboardConfig, error) {
	c, err := LoadConfig(path)
	if err != nil {
		return nil, err
	}
	return &c.Dashboard, nil
}

// TestDashboardSection: the [dashboard] keys, their defaults and errors.
func TestDashboardSection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".toml")
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	d, err := loadDashboardSection(write(`[primary]
user = "u"
[dashboard]
listen = "127.0.0.1:9999"
prefix = "/nq"
operator_token_env = "NQ_TEST_DASHBOARD_TOKEN_UNSET"
log_dirs = ["/var/log/nq"]
refresh = "10s"
[[dashboard.replicas]]
host = "10.0.0.9"
user = "ro"
`))
	if err != nil {
		t.Fatal(err)
	}
	if d.Listen != "127.0.0.1:9999" || d.Refresh != 10*time.Second || len(d.Replicas) != 1 || d.Replicas[0].Port != 3306 {
		t.Fatalf("section: %+v", d)
	}
	c := &Config{}
	c.Topics.Lease = 30 * time.Second
	// The token variable is named but unset: an error naming the key.
	_, err = d.serverConfig(c, "", "")
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "dashboard.operator_token_env" || !strings.Contains(err.Error(), "NQ_TEST_DASHBOARD_TOKEN_UNSET") {
		t.Fatalf("unset token variable: %v", err)
	}
	d.OperatorTokenEnv = ""
	dc, err := d.serverConfig(c, "127.0.0.1:1", "other/")
	if err != nil || dc.Listen != "127.0.0.1:1" || dc.Prefix != "/other" || dc.OperatorToken != "" {
		t.Fatalf("flags over the file: %+v %v", dc, err)
	}
	d.LogDirs = nil
	if dc, _ := d.serverConfig(c, "", ""); len(dc.LogDirs) != 1 || dc.LogDirs[0] != "/var/log/nonqueue" {
		t.Fatalf("default log dirs: %v", dc.LogDirs)
	}
	if _, err := loadDashboardSection(write("[primary]\nuser = \"u\"\n[dashboard]\nlisten = \"x\"\ntoken = \"inline secrets are not a key\"\n")); !errors.As(err, &ce) || ce.Key != "dashboard.token" {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := loadDashboardSection(write("[primary]\nuser = \"u\"\n[[dashboard.replicas]]\nhost = \"h\"\n")); err == nil {
		t.Fatal("a replica without a user was accepted")
	}
}

// TestDashboardTokenFromEnvironment: with [dashboard] operator_token_env
// the actions are enabled and the token is never printed. It needs the
// Dashboard field in Config (LoadConfig refuses unknown sections).
func TestDashboardTokenFromEnvironment(t *testing.T) {
	const token = "env-token-0123456789abcdef"
	t.Setenv("NQ_TEST_OPERATOR_TOKEN", token)
	b := setupOps(t, "[dashboard]\noperator_token_env = \"NQ_TEST_OPERATOR_TOKEN\"\nlisten = \"127.0.0.1:0\"\n")
	url, actions, stop := startDashboard(t, "--config", b.path)
	if actions != "enabled" {
		t.Fatalf("actions %s with a token configured", actions)
	}
	if code, body := httpGet(t, url); code != 200 || !strings.Contains(body, "Operator login") || strings.Contains(body, token) {
		t.Fatalf("overview with actions: %d", code)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
