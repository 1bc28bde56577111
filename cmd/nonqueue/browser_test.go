package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// TestBrowserWithRealWorkers drives `nonqueue dashboard` in real headless
// Chromium while real `nonqueue work` processes on both replicas work the
// queue: the overview's counts equal the counts from SQL, an operator
// requests a recalc through the topic page and the table changes, and a
// screenshot of the overview is kept as a test artifact.
func TestBrowserWithRealWorkers(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s: %v (apt-get install -y chromium)", chromium, err)
		}
		t.Skipf("%s missing; apt-get install -y chromium", chromium)
	}
	b := setupWork(t)
	for id := int64(1); id <= 60; id++ {
		b.primary.ExecContext(b.ctx, "INSERT INTO slow VALUES (?, 0.05)", id)
	}
	b.primary.ExecContext(b.ctx, "INSERT INTO fail VALUES (7)")
	ids := make([]int64, 120)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	b.addTopics(t, ids...)
	const token = "browser-token-0123456789"
	t.Setenv("NQ_BROWSER_TOKEN", token)
	body, err := os.ReadFile(b.config(t, 0, ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(b.dir, "dashboard.toml")
	body = append(body, "[dashboard]\noperator_token_env = \"NQ_BROWSER_TOKEN\"\nrefresh = \"1s\"\n"...)
	if err := os.WriteFile(cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	w1 := startWorker(t, b.config(t, 0, ""), "--instances", "2")
	w2 := startWorker(t, b.config(t, 1, ""), "--instances", "2")
	url, actions, _ := startDashboard(t, "--config", cfg, "--listen", "127.0.0.1:0")
	if actions != "enabled" {
		t.Fatalf("actions %s", actions)
	}
	base := strings.TrimSuffix(url, "/")
	testdb.WaitFor(t, 60*time.Second, "20 runs by the workers", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run") >= 20
	})

	actx, cancelAlloc := chromedp.NewExecAllocator(b.ctx,
		chromedp.ExecPath(chromium), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1100))
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	// The first call starts the browser, bound to bctx: no timeout on it.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// The overview while the workers run, and a screenshot of it.
	do("overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#states")))
	sctx, cancelShot := context.WithTimeout(bctx, 30*time.Second)
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	cancelShot()
	if err != nil {
		t.Fatalf("browser: screenshot: %v", err)
	}
	dir := os.Getenv("NONQUEUE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "nonqueue-artifacts")
	}
	os.MkdirAll(dir, 0o755)
	shot := filepath.Join(dir, "dashboard-overview-real-workers.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the overview with real workers running: %s", shot)

	// Counts: once the workers are stopped the table holds still.
	for _, w := range []*proc{w1, w2} {
		w.cmd.Process.Signal(os.Interrupt)
		if err := w.wait(t, 30*time.Second); err != nil {
			t.Fatalf("worker exit: %v", err)
		}
	}
	// The overview is cached for 2 s: reload until it shows the stopped
	// table, for at most 15 s.
	want := map[string]string{
		"running":  "running <> 0",
		"parked":   "running = 0 AND parked_at IS NOT NULL",
		"idle":     "running = 0 AND parked_at IS NULL AND active = 1 AND required = 0",
		"due":      "running = 0 AND parked_at IS NULL AND active = 1 AND required > 0 AND due <= NOW(6)",
		"backoff":  "running = 0 AND parked_at IS NULL AND active = 1 AND required > 0 AND due > NOW(6) AND attempts > 0",
		"inactive": "running = 0 AND parked_at IS NULL AND active <> 1",
	}
	sqlCounts := map[string]int{}
	for st, cond := range want {
		sqlCounts[st] = b.count(t, "SELECT COUNT(*) FROM topic WHERE "+cond)
	}
	if sqlCounts["running"] != 0 {
		t.Fatalf("%d topics still running after both workers exited", sqlCounts["running"])
	}
	var shown map[string]float64
	for try := 0; ; try++ {
		do("reload the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#states")))
		cctx, cancelCounts := context.WithTimeout(bctx, 30*time.Second)
		shown, err = chromedp.Run(cctx, chromedp.Evaluate[map[string]float64](
			`Object.fromEntries([...document.querySelectorAll("[data-state]")].map(e => [e.dataset.state, Number(e.querySelector("[data-count]").dataset.count)]))`))
		cancelCounts()
		if err != nil {
			t.Fatalf("browser: read the counts: %v", err)
		}
		same := true
		for st, n := range sqlCounts {
			same = same && int(shown[st]) == n
		}
		if same {
			break
		}
		if try == 30 {
			t.Fatalf("the page shows %v, SQL counts %v", shown, sqlCounts)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if shown["idle"] == 0 || shown["backoff"] != 1 {
		t.Errorf("expected finished topics and topic 7 backing off: %v", shown)
	}

	// An operator logs in and requests a recalc of a finished topic.
	if n := b.count(t, "SELECT required FROM topic WHERE id = 3"); n != 0 {
		t.Fatalf("topic 3 still required (%d) after the workers", n)
	}
	do("log in",
		chromedp.Click(css("details.login summary")),
		chromedp.SendKeys(css("#login-name"), "dana"),
		chromedp.SendKeys(css("#login-token"), token),
		chromedp.Click(css("#login-submit")),
		chromedp.WaitVisible(css("#operator")))
	do("request topic 3",
		chromedp.Navigate(base+"/topics/3"),
		chromedp.WaitVisible(css("#request-form")),
		chromedp.Focus(css(`#request-form select[name="scope"]`)),
		chromedp.Submit(css("#request-form")),
		chromedp.WaitVisible(css("#flash")))
	if n := b.count(t, "SELECT required FROM topic WHERE id = 3"); n != 2 {
		t.Fatalf("after the request through the page topic 3 has required = %d, want 2", n)
	}
}
