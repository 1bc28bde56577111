package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// TestPauseInBrowser: an operator pauses the fleet from the dashboard in
// real headless Chromium while real workers on both replicas run; the
// pause is recorded with the operator's name, the workers drain and claim
// nothing more, the overview shows the banner and the pause list, and the
// Resume button lets the workers finish every topic.
func TestPauseInBrowser(t *testing.T) {
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s: %v (apt-get install -y chromium)", chromium, err)
		}
		t.Skipf("%s missing; apt-get install -y chromium", chromium)
	}
	b := setupWork(t)
	// About 25 s of work for the 4 instances: the browser's start, login
	// and pause (a few seconds) must land while topics are still due, on
	// an idle machine too.
	const topics = 200
	b.seedPaused(t, topics, 0.5, func(int64) int64 { return 0 })
	const token = "browser-token-0123456789"
	t.Setenv("NQ_PAUSE_TOKEN", token)
	body, err := os.ReadFile(b.config(t, 0, ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(b.dir, "dashboard.toml")
	body = append(body, "[dashboard]\noperator_token_env = \"NQ_PAUSE_TOKEN\"\nrefresh = \"1s\"\n"...)
	if err := os.WriteFile(cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	startWorker(t, b.config(t, 0, ""), "--instances", "2")
	startWorker(t, b.config(t, 1, ""), "--instances", "2")
	url, actions, _ := startDashboard(t, "--config", cfg, "--listen", "127.0.0.1:0")
	if actions != "enabled" {
		t.Fatalf("actions %s", actions)
	}
	base := strings.TrimSuffix(url, "/")
	testdb.WaitFor(t, 60*time.Second, "15 runs by the workers", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run") >= 15
	})

	actx, cancelAlloc := chromedp.NewExecAllocator(b.ctx,
		chromedp.ExecPath(chromium), chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1100))
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
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
	// retry runs steps that the page's self-refresh may race (it swaps
	// the content between finding a node and acting on it).
	retry := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		var err error
		for range 3 {
			ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
			err = chromedp.Do(ctx, steps...)
			cancel()
			if err == nil {
				return
			}
		}
		t.Fatalf("browser: %s: %v", what, err)
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(css(sel)))
		if err != nil {
			t.Fatalf("browser: read %s: %v", sel, err)
		}
		return v
	}

	do("log in",
		chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#states")),
		chromedp.Click(css("details.login summary")),
		chromedp.SendKeys(css("#login-name"), "dana"),
		chromedp.SendKeys(css("#login-token"), token),
		chromedp.Click(css("#login-submit")),
		chromedp.WaitVisible(css("#operator")))
	// Typing into the form stops the self-refresh until it is sent.
	retry("focus the pause form", chromedp.WaitVisible(css("#pause-reason")), chromedp.Focus(css("#pause-reason")))
	do("pause from the dashboard",
		chromedp.SendKeys(css("#pause-reason"), "browser incident"),
		chromedp.SendKeys(css("#pause-for"), "10m"),
		chromedp.Click(css("#pause-submit")),
		chromedp.WaitVisible(css("#flash")),
		chromedp.WaitVisible(css("#pause-banner")))
	id := b.lastPause(t)
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE id = ? AND paused_by LIKE '%dana%' AND reason = 'browser incident' AND expires_at > NOW(6) + INTERVAL 9 MINUTE", id); n != 1 {
		t.Fatal("the pause was not recorded with the operator, the reason and 10 minutes")
	}
	testdb.WaitFor(t, 30*time.Second, "the runs in flight to finish", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE running <> 0") == 0
	})
	claims := b.count(t, "SELECT SUM(claim_token) FROM topic")
	if testdb.Poll(1500*time.Millisecond, func() bool { return b.count(t, "SELECT SUM(claim_token) FROM topic") != claims }) {
		t.Fatal("workers claimed after the dashboard's pause")
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic t JOIN pause p ON p.id = ? WHERE t.claimed_at > p.created_at + INTERVAL ? MICROSECOND", id, pauseMargin.Microseconds()); n != 0 {
		t.Errorf("%d topics claimed more than %v after the dashboard's pause", n, pauseMargin)
	}
	left := b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0")
	if left == 0 {
		t.Fatal("every topic was done before the pause: the test proved nothing")
	}
	if banner := text("#pause-banner"); !strings.Contains(banner, "PAUSED") {
		t.Errorf("banner %q", banner)
	}
	if row := text(fmt.Sprintf(`#pauses tr[data-pause="%d"]`, id)); !strings.Contains(row, "browser incident") || !strings.Contains(row, "dana") || !strings.Contains(row, "left") {
		t.Errorf("pause row %q lacks who, why or until when", row)
	}
	sctx, cancelShot := context.WithTimeout(bctx, 30*time.Second)
	if png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100)); err == nil {
		dir := os.Getenv("NONQUEUE_ARTIFACTS")
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "nonqueue-artifacts")
		}
		os.MkdirAll(dir, 0o755)
		shot := filepath.Join(dir, "dashboard-paused.png")
		if os.WriteFile(shot, png, 0o644) == nil {
			t.Logf("screenshot of the paused overview (%d topics waiting): %s", left, shot)
		}
	}
	cancelShot()

	retry("resume from the dashboard",
		chromedp.WaitVisible(css(fmt.Sprintf("#resume-%d", id))),
		chromedp.Click(css(fmt.Sprintf("#resume-%d", id))),
		chromedp.WaitVisible(css("#flash")))
	if n := b.count(t, "SELECT COUNT(*) FROM pause WHERE id = ? AND expires_at <= NOW(6) AND resumed_by LIKE '%dana%'", id); n != 1 {
		t.Fatal("the Resume button did not end the pause in dana's name")
	}
	testdb.WaitFor(t, 2*time.Minute, "every topic done after the resume", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0") == 0
	})
	do("reload the overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#states")))
	ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
	banners, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#pause-banner").length`))
	cancel()
	if err != nil || banners != 0 {
		t.Errorf("the banner is still shown after the resume (%d, %v)", banners, err)
	}
}
