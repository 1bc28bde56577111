package main

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

// relay is a server that is down, then up: its loopback port has nothing
// listening until start, then forwards every connection to upstream (the
// sandbox's primary or sshd), as if that server had just started there.
type relay struct {
	port     int
	upstream string
	mu       sync.Mutex
	ln       net.Listener
	conns    []net.Conn
	wg       sync.WaitGroup
}

// newRelay reserves a free port (nothing listens on it) for upstream; it
// is closed with everything it forwards when t ends.
func newRelay(t *testing.T, upstream string) *relay {
	t.Helper()
	_, p, _ := net.SplitHostPort(freePort(t))
	port, _ := strconv.Atoi(p)
	r := &relay{port: port, upstream: upstream}
	t.Cleanup(r.close)
	return r
}

func (r *relay) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// start listens on the reserved port and forwards from now on.
func (r *relay) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", r.addr())
	if err != nil {
		t.Fatalf("relay to %s: %v", r.upstream, err)
	}
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.DialTimeout("tcp", r.upstream, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, u)
			r.mu.Unlock()
			r.wg.Add(2)
			go func() { defer r.wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer r.wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
}

func (r *relay) close() {
	r.mu.Lock()
	if r.ln != nil {
		r.ln.Close()
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// relayConfig rewrites a worker configuration of b.config so that the
// primary's MySQL port and (when ssh is not nil) its sshd are reached
// through relays, with a known_hosts for the relayed sshd.
func (b *workBundle) relayConfig(t *testing.T, mysqlRelay, sshRelay *relay, extra string) string {
	t.Helper()
	sb := env.SB
	kh := ""
	if sshRelay != nil {
		orig, err := os.ReadFile(sb.SSH.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		kh = filepath.Join(b.dir, "known_hosts_relay")
		line := strings.ReplaceAll(string(orig), fmt.Sprintf("]:%d ", sb.SSH.Port), fmt.Sprintf("]:%d ", sshRelay.port))
		if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := b.config(t, 0, kh)
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := string(body)
	replacePort := func(from, to int) {
		old := fmt.Sprintf("\nport = %d\n", from)
		if strings.Count(s, old) != 1 {
			t.Fatalf("configuration has not exactly one %q:\n%s", old, s)
		}
		s = strings.Replace(s, old, fmt.Sprintf("\nport = %d\n", to), 1)
	}
	if mysqlRelay != nil {
		replacePort(sb.Primary.Port, mysqlRelay.port)
	}
	if sshRelay != nil {
		replacePort(sb.SSH.Port, sshRelay.port)
	}
	s = strings.Replace(s, "[worker]\n", "[worker]\n"+extra, 1)
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// liveWorker is `nonqueue work` as a process whose output can be read
// while it runs and whose exit is seen.
type liveWorker struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startLiveWorker(t *testing.T, cfg string, args ...string) *liveWorker {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"work", "--config", cfg}, args...)...)
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1")
	w := &liveWorker{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = w.out, w.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.err = cmd.Wait(); close(w.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-w.done
		if t.Failed() {
			t.Logf("worker output:\n%s", w.out.String())
		}
	})
	return w
}

func (w *liveWorker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// wait returns the exit error, or fails the test after d.
func (w *liveWorker) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-w.done:
		return w.err
	case <-time.After(d):
		t.Fatalf("worker did not exit within %v", d)
		return nil
	}
}

// retryWarnings counts the WARN lines of failed start-up tries in out
// that name addr.
func retryWarnings(out, addr string) int {
	n := 0
	for line := range strings.Lines(out) {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "cannot reach the servers; retrying") && strings.Contains(line, addr) {
			n++
		}
	}
	return n
}

// TestWorkWaitsForServersAtStart: a worker started while the primary and
// its sshd are down keeps running and logs each failed try at WARN naming
// what it tried to reach; once the primary is up it waits for the sshd
// still, and once both are up it starts and does the topics requested.
// The password never shows in the log.
func TestWorkWaitsForServersAtStart(t *testing.T) {
	b := setupWork(t)
	b.addTopics(t, 1, 2)
	sb := env.SB
	primary := newRelay(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(sb.Primary.Port)))
	sshd := newRelay(t, net.JoinHostPort(sb.SSH.Host, strconv.Itoa(sb.SSH.Port)))
	w := startLiveWorker(t, b.relayConfig(t, primary, sshd, ""), "--instances", "1")

	testdb.WaitFor(t, 30*time.Second, "two failed tries on the primary logged at WARN", func() bool {
		return retryWarnings(w.out.String(), primary.addr()) >= 2 || w.exited()
	})
	if w.exited() {
		t.Fatalf("worker exited while the primary was down: %v", w.err)
	}
	if !strings.Contains(w.out.String(), "connection refused") {
		t.Errorf("the retry warnings do not give the error:\n%s", w.out)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run"); n != 0 {
		t.Fatalf("%d runs while the primary was down", n)
	}

	// The primary is up; the sshd is not: still waiting, now on the sshd.
	primary.start(t)
	testdb.WaitFor(t, 30*time.Second, "a failed try on the sshd logged at WARN", func() bool {
		return retryWarnings(w.out.String(), "sshd at "+sshd.addr()) >= 1 || w.exited()
	})
	if w.exited() {
		t.Fatalf("worker exited while the sshd was down: %v", w.err)
	}

	sshd.start(t)
	testdb.WaitFor(t, 90*time.Second, "topics 1 and 2 done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM run WHERE topic_id IN (1, 2) AND outcome = 'done'") == 2 || w.exited()
	})
	if w.exited() {
		t.Fatalf("worker exited: %v", w.err)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM topic WHERE id IN (1, 2) AND required = 0 AND running = 0"); n != 2 {
		t.Errorf("%d of topics 1 and 2 finished, want 2", n)
	}
	out := w.out.String()
	if !strings.Contains(out, "worker start: servers reachable") {
		t.Errorf("the log does not say the servers became reachable:\n%s", out)
	}
	if strings.Contains(out, sb.Password) {
		t.Errorf("the log shows the password:\n%s", out)
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// TestWorkStopsWhileWaitingForServers: SIGTERM while the worker waits for
// a primary that is down ends it at once, with status 0 as any stop.
func TestWorkStopsWhileWaitingForServers(t *testing.T) {
	b := setupWork(t)
	primary := newRelay(t, "127.0.0.1:1") // never started
	w := startLiveWorker(t, b.relayConfig(t, primary, nil, ""), "--instances", "1")
	testdb.WaitFor(t, 30*time.Second, "a failed try logged at WARN", func() bool {
		return retryWarnings(w.out.String(), primary.addr()) >= 1 || w.exited()
	})
	if w.exited() {
		t.Fatalf("worker exited while the primary was down: %v", w.err)
	}
	start := time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM while waiting: %v, want status 0", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to stop while waiting", d)
	}
	if !strings.Contains(w.out.String(), "stopped while waiting for the servers") {
		t.Errorf("the log does not say why it stopped:\n%s", w.out)
	}
}

// TestWorkStartTimeout: with [worker] start_timeout, a worker whose
// primary stays down gives up after about that long, with the last error.
func TestWorkStartTimeout(t *testing.T) {
	b := setupWork(t)
	primary := newRelay(t, "127.0.0.1:1") // never started
	w := startLiveWorker(t, b.relayConfig(t, primary, nil, "start_timeout = \"4s\"\n"), "--instances", "1")
	start := time.Now()
	err := w.wait(t, 60*time.Second)
	d := time.Since(start)
	out := w.out.String()
	if err == nil || !strings.Contains(out, "servers still unreachable at the end of the start timeout (4s)") || !strings.Contains(out, "connection refused") {
		t.Fatalf("worker with start_timeout: %v, want the start timeout and the last error:\n%s", err, out)
	}
	if d < 4*time.Second || d > 30*time.Second {
		t.Errorf("gave up after %v with start_timeout = 4s", d)
	}
	if retryWarnings(out, primary.addr()) < 1 {
		t.Errorf("no retry before giving up:\n%s", out)
	}
}

// TestWorkWrongPasswordFailsFast: a wrong password is not waited out: the
// worker exits at once with access denied and no retry.
func TestWorkWrongPasswordFailsFast(t *testing.T) {
	b := setupWork(t)
	path := b.config(t, 0, "")
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(body), fmt.Sprintf("password = %q\n", env.SB.Password), "password = \"not-the-password\"\n", 1)
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	w := startLiveWorker(t, path, "--instances", "1")
	err = w.wait(t, 30*time.Second)
	out := w.out.String()
	if err == nil || !strings.Contains(out, "Access denied") {
		t.Fatalf("worker with a wrong password: %v, want access denied:\n%s", err, out)
	}
	if strings.Contains(out, "retrying") {
		t.Errorf("a wrong password was retried:\n%s", out)
	}
	if strings.Contains(out, "not-the-password") {
		t.Errorf("the log shows the password:\n%s", out)
	}
	t.Logf("exited after %v", time.Since(start))
}

// TestFollowWaitsForPrimaryAtStart: `nonqueue follow` started while the
// primary is down logs its tries at WARN and becomes the active follower
// once the primary is up; a stop while it waits returns nil.
func TestFollowWaitsForPrimaryAtStart(t *testing.T) {
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	p := testdb.Open(t, env.Primary(name))
	if _, err := p.ExecContext(ctx, "CREATE TABLE post (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NOT NULL) ENGINE=InnoDB"); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	primary := newRelay(t, net.JoinHostPort("127.0.0.1", strconv.Itoa(env.SB.Primary.Port)))
	conf := strings.Replace(serversTOML(0, name), fmt.Sprintf("\nport = %d\n", env.SB.Primary.Port), fmt.Sprintf("\nport = %d\n", primary.port), 1) +
		fmt.Sprintf("[follower]\nname = \"startretry\"\n[[follow]]\ntable = \"%s.post\"\ntopic_column = \"topic\"\n", name)
	cfg := filepath.Join(t.TempDir(), "follow.toml")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	follow := func(fctx context.Context) (*syncBuffer, chan error) {
		var stdout, stderr syncBuffer
		done := make(chan error, 1)
		go func() { done <- Run(fctx, []string{"follow", "--config", cfg}, &stdout, &stderr) }()
		return &stderr, done
	}
	// A stop while it waits.
	sctx, scancel := context.WithCancel(ctx)
	logs, done := follow(sctx)
	testdb.WaitFor(t, 30*time.Second, "a failed try logged at WARN", func() bool { return retryWarnings(logs.String(), primary.addr()) >= 1 })
	scancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow stopped while waiting: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not stop while waiting")
	}

	fctx, fcancel := context.WithCancel(ctx)
	logs, done = follow(fctx)
	t.Cleanup(func() {
		fcancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	})
	testdb.WaitFor(t, 30*time.Second, "two failed tries logged at WARN", func() bool { return retryWarnings(logs.String(), primary.addr()) >= 2 })
	select {
	case err := <-done:
		t.Fatalf("follow returned while the primary was down: %v\n%s", err, logs)
	default:
	}
	primary.start(t)
	up := time.Now()
	testdb.WaitFor(t, 60*time.Second, "follower active", func() bool {
		fr, err := q.Followers(ctx)
		return err == nil && len(fr) == 1 && fr[0].Active && fr[0].Pos != ""
	})
	t.Logf("active %v after the primary came up", time.Since(up))
	fcancel()
	select {
	case err := <-done:
		done <- err // for the cleanup
		if err != nil {
			t.Errorf("follow returned %v on cancel: want nil\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("follow did not stop on cancel")
	}
}

// TestOpenNodeRetryLeaksNothing: failed tries (everything opened but the
// sshd, which is down) leave no goroutine behind: each try closes its
// pools, connections and watchers.
func TestOpenNodeRetryLeaksNothing(t *testing.T) {
	b := setupWork(t)
	sshd := newRelay(t, "127.0.0.1:1") // never started
	c, err := LoadConfig(b.relayConfig(t, nil, sshd, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.validateWorker(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	try := func() {
		n, err := openNode(b.ctx, c, 2, log)
		if err == nil {
			n.close()
			t.Fatal("openNode succeeded with the sshd down")
		}
		if !transientStartErr(err) || !strings.Contains(err.Error(), sshd.addr()) {
			t.Fatalf("openNode with the sshd down: %v, want a transient error naming %s", err, sshd.addr())
		}
	}
	try() // the first try's lazily made state, once per process
	settle := func(want int) int {
		var n int
		testdb.Poll(10*time.Second, func() bool { n = runtime.NumGoroutine(); return n <= want })
		return n
	}
	before := runtime.NumGoroutine()
	for range 5 {
		try()
	}
	if after := settle(before); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before 5 failed tries, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// TestTransientStartErr: which start-up failures are waited out.
func TestTransientStartErr(t *testing.T) {
	refused := func() error {
		_, err := net.DialTimeout("tcp", freePort(t), time.Second)
		if err == nil {
			t.Fatal("dial to a free port succeeded")
		}
		return err
	}()
	_, missingKey := os.ReadFile(filepath.Join(t.TempDir(), "id_ed25519"))
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		// Servers not up, or going down: waited out.
		{"connection refused", fmt.Errorf("connect to replica 127.0.0.1:3306: %w", refused), true},
		{"refused, wrapped twice", fmt.Errorf("connect to primary x: detect server flavor: %w", refused), true},
		{"unix socket not created yet", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ENOENT)}, true},
		{"too many connections", fmt.Errorf("x: %w", &mysql.MySQLError{Number: 1040, Message: "Too many connections"}), true},
		{"server shutdown in progress", &mysql.MySQLError{Number: 1053}, true},
		{"connection killed", &mysql.MySQLError{Number: 1927}, true},
		{"lost connection", &mysql.MySQLError{Number: 2013}, true},
		{"invalid connection", fmt.Errorf("x: %w", mysql.ErrInvalidConn), true},
		{"bad connection", fmt.Errorf("x: %w", driver.ErrBadConn), true},
		{"a try's deadline", fmt.Errorf("ssh handshake with x: %w (read: closed)", context.DeadlineExceeded), true},
		{"sshd closed the handshake", fmt.Errorf("ssh login to x: %w", fmt.Errorf("ssh: handshake failed: %w", io.EOF)), true},
		{"resolver not answering", &net.OpError{Op: "dial", Err: &net.DNSError{Err: "timeout", Name: "db", IsTimeout: true}}, true},
		{"network unreachable", os.NewSyscallError("connect", syscall.ENETUNREACH), true},
		// What retrying cannot cure: reported at once.
		{"access denied", fmt.Errorf("connect to primary x: %w", &mysql.MySQLError{Number: 1045, Message: "Access denied"}), false},
		{"unknown database", &mysql.MySQLError{Number: 1049}, false},
		{"unknown table", &mysql.MySQLError{Number: 1146}, false},
		{"host not allowed", &mysql.MySQLError{Number: 1130}, false},
		{"unknown host name", &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "dbb", IsNotFound: true}}, false},
		{"host key mismatch, even over a network error", fmt.Errorf("%w: %s: %w", transfer.ErrHostKey, "does not match", refused), false},
		{"ssh login refused", fmt.Errorf("ssh login to x: %w", errors.New("ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain")), false},
		{"key file missing", fmt.Errorf("read ssh private key: %w", missingKey), false},
		{"bad configuration", &ConfigError{Key: "primary.password_env", Err: errors.New("not set")}, false},
		{"transfer configuration", fmt.Errorf("%w: x", transfer.ErrConfig), false},
		{"cancelled: a stop, not a failure", fmt.Errorf("x: %w", context.Canceled), false},
		{"unknown", errors.New("something else"), false},
		{"nil", nil, false},
	} {
		if got := transientStartErr(tc.err); got != tc.want {
			t.Errorf("%s (%v): transient %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// TestOpenWithRetry: transient failures are retried until success, a
// permanent one ends at once, a cancelled context ends the wait at once.
func TestOpenWithRetry(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	transient := &mysql.MySQLError{Number: 1040}
	tries := 0
	v, err := openWithRetry(t.Context(), log, "test", 0, func(context.Context) (int, error) {
		if tries++; tries < 2 {
			return 0, transient
		}
		return 7, nil
	})
	if v != 7 || err != nil || tries != 2 {
		t.Errorf("after a transient failure: %d, %v after %d tries; want 7, nil after 2", v, err, tries)
	}

	tries = 0
	denied := &mysql.MySQLError{Number: 1045}
	if _, err := openWithRetry(t.Context(), log, "test", 0, func(context.Context) (int, error) { tries++; return 0, denied }); !errors.Is(err, denied) || tries != 1 {
		t.Errorf("access denied: %v after %d tries; want it after 1", err, tries)
	}

	ctx, cancel := context.WithCancel(t.Context())
	start := time.Now()
	time.AfterFunc(200*time.Millisecond, cancel)
	if _, err := openWithRetry(ctx, log, "test", 0, func(context.Context) (int, error) { return 0, transient }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while waiting: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 450*time.Millisecond {
		t.Errorf("cancel took %v to end the wait", d)
	}
}

// TestStartTimeoutKey: [worker] start_timeout takes "0s" (wait as long as
// it takes, the default) and a positive duration; a negative one is
// refused naming the key, by the file's loader and by Validate.
func TestStartTimeoutKey(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n[worker]\n"
	for _, tc := range []struct {
		line string
		want time.Duration
	}{{"", 0}, {"start_timeout = \"0s\"\n", 0}, {"start_timeout = \"5m\"\n", 5 * time.Minute}} {
		c, err := LoadConfig(writeFile(t, base+tc.line))
		if err != nil || c.Worker.StartTimeout != tc.want {
			t.Errorf("%q: %v, start_timeout %v; want %v", tc.line, err, c.Worker.StartTimeout, tc.want)
			continue
		}
		if err := c.Worker.WithDefaults(time.Minute).Validate(time.Minute); err != nil {
			t.Errorf("%q: Validate: %v", tc.line, err)
		}
	}
	_, err := LoadConfig(writeFile(t, base+"start_timeout = \"-1s\"\n"))
	if ce, ok := errors.AsType[*ConfigError](err); !ok || ce.Key != "worker.start_timeout" {
		t.Errorf("start_timeout = \"-1s\": %v, want a configuration error on worker.start_timeout", err)
	}
	wc := worker.Config{StartTimeout: -time.Second}.WithDefaults(time.Minute)
	if err := wc.Validate(time.Minute); err == nil || !strings.Contains(err.Error(), "worker.start_timeout") {
		t.Errorf("Validate with a negative start_timeout: %v", err)
	}
}
