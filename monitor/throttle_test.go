package monitor_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// rootPrimary opens a root session on the primary through its socket.
func rootPrimary(t *testing.T) *sql.DB {
	t.Helper()
	mc := mysql.NewConfig()
	mc.User, mc.Net, mc.Addr = "root", "unix", env.SB.Primary.Socket
	return testdb.Open(t, mc)
}

// waitThrottle polls th until its verdict matches closed, at most d.
func waitThrottle(t *testing.T, th *monitor.Throttle, closed bool, d time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		_, err := th.Check()
		if (err != nil) == closed {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("throttle still %v after %v (last verdict %v)", map[bool]string{true: "open", false: "closed"}[closed], d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestThrottleSysbench: sysbench oltp_read_write with 32 threads on the
// primary pushes Threads_running over the limit, so the throttle closes
// (reason threads_running); once the load stops, it opens again. It also
// proves an account with no privilege at all reads Threads_running.
func TestThrottleSysbench(t *testing.T) {
	sysbench := testdb.Tool(t, "sysbench", "sysbench")
	b := setup(t, true) // the load replicates: keep other tests' lag measurements apart
	root := rootPrimary(t)

	// Threads_running needs no privilege: a bare account reads it.
	user := b.name + "_np"
	admin(t, b.ctx, root, fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY 'np'", user))
	t.Cleanup(func() { root.ExecContext(context.Background(), fmt.Sprintf("DROP USER IF EXISTS '%s'@'%%'", user)) })
	mc := env.Primary("")
	mc.User, mc.Passwd = user, "np"
	bare := testdb.Open(t, mc)
	idle, err := monitor.ReadThreadsRunning(b.ctx, bare)
	if err != nil {
		t.Fatalf("an account without privileges cannot read Threads_running: %v", err)
	}
	t.Logf("Threads_running idle: %d", idle)

	sb := func(ctx context.Context, cmd string, extra ...string) *exec.Cmd {
		args := append([]string{"oltp_read_write", "--db-driver=mysql", "--mysql-user=root",
			"--mysql-socket=" + env.SB.Primary.Socket, "--mysql-db=" + b.name, "--tables=4", "--table-size=2000"}, extra...)
		return exec.CommandContext(ctx, sysbench, append(args, cmd)...)
	}
	if out, err := sb(b.ctx, "prepare").CombinedOutput(); err != nil {
		t.Fatalf("sysbench prepare: %v\n%s", err, out)
	}

	// The limit: 6 running threads. 32 clients on 2 cores keep far more
	// than that running (measured on a loaded 2-core host: median 13 to 19,
	// max 34); an idle primary shows 2 (the sampling session and one
	// more).
	const limit = 6
	th := &monitor.Throttle{Primary: bare, Config: monitor.ThrottleConfig{MaxThreadsRunning: limit, SampleInterval: 100 * time.Millisecond}}
	if err := th.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { th.Stop(context.Background()) })
	if err := waitThrottle(t, th, false, 5*time.Second); err != nil {
		t.Fatalf("throttle closed before any load: %v", err)
	}

	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	run := sb(ctx, "run", "--threads=32", "--time=15", "--report-interval=0")
	var out strings.Builder
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	var seen []int64
	var verdict error
	checks, closed := 0, 0
	closedAt := time.Time{}
	start := time.Now()
	for time.Since(start) < 14*time.Second {
		if n, _, ok := th.ThreadsRunning(); ok {
			seen = append(seen, n)
		}
		_, err := th.Check()
		if checks++; err != nil {
			closed++
		}
		if err != nil && closedAt.IsZero() {
			closedAt, verdict = time.Now(), err
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := run.Wait(); err != nil {
		t.Fatalf("sysbench run: %v\n%s", err, out.String())
	}
	stopped := time.Now()
	slices.Sort(seen)
	t.Logf("Threads_running under sysbench (32 threads), sampled every 100ms: min %d, median %d, max %d, samples %d",
		seen[0], seen[len(seen)/2], seen[len(seen)-1], len(seen))
	if closedAt.IsZero() {
		t.Fatalf("the throttle never closed under the load (limit %d)", limit)
	}
	var te *monitor.ThrottledError
	if !errors.As(verdict, &te) || !slices.Contains(te.Reasons, monitor.ThrottleThreadsRunning) || !errors.Is(verdict, monitor.ErrThrottled) {
		t.Fatalf("verdict %v: want a ThrottledError for threads_running", verdict)
	}
	t.Logf("closed %v after the load started: %v; closed at %d of %d checks during the load", closedAt.Sub(start).Round(time.Millisecond), verdict, closed, checks)
	if closed < checks/2 {
		t.Errorf("closed at only %d of %d checks under the load", closed, checks)
	}
	if err := waitThrottle(t, th, false, 10*time.Second); err != nil {
		t.Fatalf("after the load stopped: %v", err)
	}
	t.Logf("open again %v after the load stopped", time.Since(stopped).Round(time.Millisecond))
}

// freno stands in for a freno-style check: it answers code (and, with
// delay, answers late).
type freno struct {
	code  atomic.Int32
	delay atomic.Int64
	hits  atomic.Int64
}

func (f *freno) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	if d := time.Duration(f.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	w.WriteHeader(int(f.code.Load()))
}

// TestThrottleURL: only a 200 opens the throttle; a 429, a 500 and an
// answer slower than the timeout close it (reason throttle_url); a server
// that is gone closes it too. The URL is asked by the collector at its
// interval, not per Check.
func TestThrottleURL(t *testing.T) {
	t.Parallel()
	f := &freno{}
	f.code.Store(http.StatusTooManyRequests)
	srv := httptest.NewServer(f)
	defer srv.Close()
	th := &monitor.Throttle{Config: monitor.ThrottleConfig{URL: srv.URL + "/check/nonqueue", URLTimeout: 200 * time.Millisecond,
		SampleInterval: 50 * time.Millisecond}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := th.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer th.Stop(context.Background())

	_, err := th.Check()
	var te *monitor.ThrottledError
	if !errors.As(err, &te) || !slices.Equal(te.Reasons, []string{monitor.ThrottleURL}) {
		t.Fatalf("429: verdict %v, want closed for throttle_url", err)
	}
	hits := f.hits.Load()
	for range 1000 {
		th.Check()
	}
	if n := f.hits.Load() - hits; n > 2 {
		t.Errorf("1000 Checks asked the URL %d times: Check must only read", n)
	}
	f.code.Store(http.StatusOK)
	if err := waitThrottle(t, th, false, 5*time.Second); err != nil {
		t.Fatalf("200: %v", err)
	}
	f.code.Store(http.StatusInternalServerError)
	if err := waitThrottle(t, th, true, 5*time.Second); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("500: %v", err)
	}
	f.code.Store(http.StatusOK)
	if err := waitThrottle(t, th, false, 5*time.Second); err != nil {
		t.Fatalf("200 again: %v", err)
	}
	f.delay.Store(int64(time.Second)) // answers 200, but after the 200ms timeout
	if err := waitThrottle(t, th, true, 5*time.Second); err == nil || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("slow answer: %v", err)
	}
	f.delay.Store(0)
	if err := waitThrottle(t, th, false, 5*time.Second); err != nil {
		t.Fatalf("prompt 200: %v", err)
	}
	srv.CloseClientConnections()
	srv.Close()
	if err := waitThrottle(t, th, true, 5*time.Second); err == nil {
		t.Fatal("server gone: still open")
	}
}

// TestPublishSlots: with Max slots, Max sessions get one each, the next
// waits and gets the one freed, and gives up with ErrNoPublishSlot when
// none is freed within Wait. Release reports a time on the primary's
// clock inside the hold.
func TestPublishSlots(t *testing.T) {
	b := setup(t, false)
	slots := &monitor.PublishSlots{Schema: b.name, Max: 2, Wait: 300 * time.Millisecond}
	conn := func() *sql.Conn {
		c, err := b.primary.Conn(b.ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1, c2, c3 := conn(), conn(), conn()
	s1, err := slots.Acquire(b.ctx, c1)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := slots.Acquire(b.ctx, c2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := slots.Acquire(b.ctx, c3); !errors.Is(err, monitor.ErrNoPublishSlot) {
		t.Fatalf("third session with 2 slots: %v, want ErrNoPublishSlot", err)
	}
	slots.Wait = 10 * time.Second
	got := make(chan error, 1)
	var s3 *monitor.PublishSlot
	go func() { var err error; s3, err = slots.Acquire(b.ctx, c3); got <- err }()
	time.Sleep(200 * time.Millisecond)
	until, err := s1.Release(b.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiting session: %v", err)
	}
	if until.Before(s1.Since) || s3.Since.Before(until) {
		t.Errorf("windows on the primary's clock: slot 1 held %v to %v, then taken at %v", s1.Since, until, s3.Since)
	}
	for _, s := range []*monitor.PublishSlot{s2, s3} {
		if _, err := s.Release(b.ctx); err != nil {
			t.Fatal(err)
		}
	}
	var nilSlots *monitor.PublishSlots
	if s, err := nilSlots.Acquire(b.ctx, c1); s != nil || err != nil {
		t.Fatalf("no cap: %v %v", s, err)
	}
}
