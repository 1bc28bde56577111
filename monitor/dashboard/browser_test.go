package dashboard_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/queue"
)

const chromiumPath = "/usr/bin/chromium"

// requireChromium skips without Debian's chromium, except under CI.
func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s: %v (install with: apt-get install -y chromium)", chromiumPath, err)
		}
		t.Skipf("%s missing; install with: apt-get install -y chromium", chromiumPath)
	}
}

// artifactDir is $NONQUEUE_ARTIFACTS, or a directory under the system's
// temporary directory; test artifacts (screenshots) outlive the test.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("NONQUEUE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "nonqueue-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// workers imitates worker processes on replica 1 in this process: each
// instance registers, claims through the queue, "runs" for a few
// milliseconds, finishes (or fails every seventh topic with a back-off),
// records the run and keeps its registry row current, while a heartbeat
// writer runs for the process. stop ends them and waits; every loop is
// bounded.
type workers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	hb     *monitor.Heartbeat
	runs   atomic.Int64
	errs   chan error
}

func startWorkers(t *testing.T, b *bundle, instances int) *workers {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	w := &workers{cancel: cancel, errs: make(chan error, instances)}
	w.hb = &monitor.Heartbeat{Primary: b.db, Schema: b.name, WriterID: replicaServerID, Interval: 100 * time.Millisecond}
	if err := w.hb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range instances {
		id := int64(100101 + i)
		if err := b.hist.Register(ctx, monitor.InstanceInfo{ID: id, Host: "sim-host", PID: os.Getpid(), Version: "test", ReplicaServerID: replicaServerID}); err != nil {
			t.Fatal(err)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			if err := w.loop(ctx, b, id); err != nil && ctx.Err() == nil {
				w.errs <- err
			}
		}()
	}
	t.Cleanup(func() { w.stop(t) })
	return w
}

func (w *workers) loop(ctx context.Context, b *bundle, id int64) error {
	bg := context.WithoutCancel(ctx)
	defer b.hist.SetState(bg, id, monitor.StateExited, 0, 0, 0)
	for n := 0; n < 100_000 && ctx.Err() == nil; n++ {
		c, err := b.q.Claim(ctx, &queue.ClaimParams{InstanceID: id})
		if errors.Is(err, queue.ErrNoneDue) {
			b.hist.SetState(ctx, id, monitor.StateIdle, 0, 0, 0)
			sleepCtx(ctx, 30*time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		b.hist.SetState(bg, id, monitor.StateRunning, c.TopicID, 0, 0)
		start := time.Now()
		sleepCtx(ctx, time.Duration(20+c.TopicID%60)*time.Millisecond)
		run := &monitor.Run{TopicID: c.TopicID, InstanceID: id, Replica: "replica1", ClaimToken: c.Token, Scope: c.Scope, StartedAt: start,
			Claim: time.Millisecond, LagWait: time.Duration(1+c.TopicID%3) * time.Millisecond, Proc: time.Since(start),
			Transfer: 3 * time.Millisecond, Publish: time.Millisecond, Bytes: 16384}
		failed := 0
		if c.TopicID%7 == 0 {
			failed = 1
			run.Outcome, run.Error = monitor.OutcomeFailed, fmt.Sprintf("procedure: calc failed on purpose (topic %d)", c.TopicID)
			_, err = b.q.Release(bg, c, &queue.ReleaseParams{Error: run.Error, Backoff: time.Hour, CountAttempt: true})
		} else {
			run.Outcome = monitor.OutcomeDone
			err = b.q.Finish(bg, c)
		}
		if err != nil {
			return err
		}
		if err := b.hist.RecordRun(bg, run); err != nil {
			return err
		}
		w.runs.Add(1)
		b.hist.SetState(bg, id, monitor.StateIdle, 0, 1, failed)
	}
	return nil
}

func (w *workers) stop(t *testing.T) {
	w.cancel()
	w.wg.Wait()
	w.hb.Stop(context.Background())
	select {
	case err := <-w.errs:
		t.Errorf("worker: %v", err)
	default:
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// TestBrowser drives the dashboard in real headless Chromium while
// simulated instances work the queue: the overview renders and refreshes
// itself, a screenshot is kept, the counts it shows equal SQL's, and an
// operator logs in and changes a priority and releases a stuck claim by
// clicking through the pages.
func TestBrowser(t *testing.T) {
	requireChromium(t)
	t.Parallel()
	b := setup(t, func(c *dashboard.Config) {
		c.OperatorToken = testToken
		c.Listen = "127.0.0.1:0"
		c.Refresh = time.Second
	})
	if err := b.srv.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.srv.Stop(context.Background()) })
	base := "http://" + b.srv.Addr()
	// Enough work that the instances are still busy at the screenshot.
	for from := 1; from <= 2000; from += 500 {
		b.seedTopics(t, from, 500)
	}
	b.exec(t, "UPDATE topic SET required = 0 WHERE id > 1800")
	b.exec(t, "UPDATE topic SET active = 0 WHERE id BETWEEN 1791 AND 1795")
	b.exec(t, "UPDATE topic SET due = NOW(6) + INTERVAL 2 HOUR WHERE id BETWEEN 1781 AND 1790")
	w := startWorkers(t, b, 4)
	testdb.WaitFor(t, time.Minute, "40 runs by the workers", func() bool { return w.runs.Load() >= 40 })

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(b.ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	// The first call starts the browser and binds it to bctx: no timeout
	// on it; every later step gets one of its own.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	do := func(what string, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, timeout)
		defer cancel()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
	}
	// focus puts the cursor into a form field, which pauses the page's
	// self-refresh (it would swap the form under the next steps). The
	// refresh may swap the page between finding the field and focusing
	// it, so that one step is retried.
	focus := func(sel string) {
		t.Helper()
		var err error
		for range 3 {
			ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
			err = chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Focus(chromedp.CSS(sel)))
			cancel()
			if err == nil {
				return
			}
		}
		t.Fatalf("browser: focus %s: %v", sel, err)
	}
	text := func(sel string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("browser: read %s: %v", sel, err)
		}
		return v
	}
	screenshot := func(name string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
		defer cancel()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("browser: screenshot: %v", err)
		}
		path := filepath.Join(artifactDir(t), name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}

	// The overview while the workers run, its self-refresh, a screenshot.
	do("open the overview", time.Minute,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#states")),
		chromedp.WaitVisible(chromedp.CSS("svg.chart")),
	)
	testdb.WaitFor(t, 20*time.Second, "the page to refresh itself", func() bool {
		return strings.HasPrefix(text("#updated"), "updated ")
	})
	t.Logf("screenshot of the overview with %d runs done: %s", w.runs.Load(), screenshot("dashboard-overview.png"))
	do("replicas page", 30*time.Second, chromedp.Navigate(base+"/replicas"), chromedp.WaitVisible(chromedp.CSS("section.replica")))
	t.Logf("screenshot of the replicas page: %s", screenshot("dashboard-replicas.png"))

	// Counts: with the workers stopped the table holds still.
	w.stop(t)
	do("reload the overview", 30*time.Second, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS("#states")))
	ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]int64](
		`Object.fromEntries([...document.querySelectorAll("[data-state]")].map(e => [e.dataset.state, Number(e.querySelector("[data-count]").dataset.count)]))`))
	cancel()
	if err != nil {
		t.Fatalf("browser: read the counts: %v", err)
	}
	want := b.sqlCounts(t)
	for st, n := range want {
		if shown[string(st)] != n {
			t.Errorf("browser shows %s = %d, SQL counts %d", st, shown[string(st)], n)
		}
	}
	if want[queue.TopicBackoff] == 0 || want[queue.TopicIdle] == 0 || want[queue.TopicDue] == 0 {
		t.Errorf("the workers made no failures, finished nothing or finished everything: %v", want)
	}

	// An operator logs in and acts through the forms.
	do("log in", 30*time.Second,
		chromedp.Click(chromedp.CSS("details.login summary")),
		chromedp.SendKeys(chromedp.CSS("#login-name"), "dana"),
		chromedp.SendKeys(chromedp.CSS("#login-token"), testToken),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#operator")),
	)
	do("open topic 1900", 30*time.Second, chromedp.Navigate(base+"/topics/1900"))
	focus("#priority-input")
	do("change a priority", 30*time.Second,
		chromedp.SetValue(chromedp.CSS("#priority-input"), "77"),
		chromedp.Click(chromedp.CSS("#priority-submit")),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
	)
	if p := b.count(t, "SELECT priority FROM topic WHERE id = 1900"); p != 77 {
		t.Fatalf("priority of topic 1900 is %d after the form, want 77", p)
	}
	if p := text("#topic-priority"); p != "77" {
		t.Errorf("topic page shows priority %q after the change", p)
	}

	// A stuck claim (its instance is gone) released from its page.
	b.exec(t, "UPDATE topic SET required = 2, due = NOW(6) - INTERVAL 1 DAY, priority = 1000 WHERE id = 270")
	claim, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 100199})
	if err != nil || claim.TopicID != 270 {
		t.Fatalf("claim topic 270: %+v %v", claim, err)
	}
	do("open topic 270", 30*time.Second, chromedp.Navigate(base+"/topics/270"))
	focus(`#release-form input[name="reason"]`)
	do("release the claim", 30*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#release-form input[name="reason"]`), "instance host lost"),
		chromedp.Click(chromedp.CSS("#release-submit")),
		chromedp.WaitVisible(chromedp.CSS("#flash")),
	)
	var outcome, msg string
	if err := b.db.QueryRowContext(b.ctx, "SELECT outcome, error FROM run WHERE topic_id = 270 ORDER BY id DESC LIMIT 1").Scan(&outcome, &msg); err != nil {
		t.Fatal(err)
	}
	if running := b.count(t, "SELECT running FROM topic WHERE id = 270"); running != 0 || outcome != "released" || !strings.Contains(msg, `"dana"`) {
		t.Fatalf("after the release: running %d, run %q %q", running, outcome, msg)
	}
}
