package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// upState is the sandbox being built. Every started process is recorded in
// it (and in sandbox.json) immediately, so a failed or interrupted Up, or a
// later Down, can stop exactly what was started.
type upState struct {
	mu    sync.Mutex
	sb    *Sandbox
	ready map[int]bool // pids that passed their readiness check
	bin   binaries
	log   *slog.Logger
}

// markReady records that pid finished start-up, so a failed Up stops it
// with SIGTERM. Daemons that never got ready are SIGKILLed: mariadbd ignores
// a SIGTERM that arrives early in its start-up, and their data is a
// throwaway copy anyway.
func (u *upState) markReady(pid int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ready[pid] = true
}

// update applies f to the sandbox under the lock and persists the result.
func (u *upState) update(f func(sb *Sandbox)) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	f(u.sb)
	if err := saveState(u.sb); err != nil {
		return fmt.Errorf("write %s: %w", stateFile, err)
	}
	return nil
}

// Up starts a sandbox in opt.Dir and returns once every daemon accepts work:
// the primary and replicas answer queries, the replicas replicate (IO and SQL
// threads running, caught up with the primary's GTID position) and sshd
// accepts the client key. The daemons keep running after the caller exits;
// stop them with Down. Every Up starts from fresh datadirs (old data in Dir
// is replaced), with new random passwords.
//
// On any failure Up stops everything it started and returns an error that
// includes the tail of the failing daemon's log. A missing binary yields an
// error wrapping ErrMissing.
func Up(ctx context.Context, opt Options) (_ *Sandbox, err error) {
	start := time.Now()
	bin, err := findBinaries()
	if err != nil {
		return nil, err
	}
	if opt.Replicas < 0 || opt.Replicas > maxReplicas {
		return nil, fmt.Errorf("sandbox: Replicas must be 0..%d, got %d", maxReplicas, opt.Replicas)
	}
	if err := checkShape(opt); err != nil {
		return nil, err
	}
	if opt.Dir == "" {
		return nil, errors.New("sandbox: Options.Dir is required")
	}
	dir, err := filepath.Abs(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	log := opt.Logger
	if log == nil {
		log = discardLogger()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	// Serialise Ups on the same Dir; the lock dies with the process.
	lock, err := os.OpenFile(filepath.Join(dir, ".up.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("sandbox: another Up is running in %s: %w", dir, err)
	}
	if err := refuseIfRunning(dir); err != nil {
		return nil, err
	}
	// Unix socket paths are limited to 107 bytes; fail clearly, not with a
	// cryptic server error.
	if n := len(filepath.Join(dir, "replica9", "mysqld.sock")); n > 100 {
		return nil, fmt.Errorf("sandbox: Dir %s is too long for unix socket paths (%d bytes > 100); use a shorter directory", dir, n)
	}

	u := &upState{bin: bin, log: log, sb: newSandbox(dir, opt), ready: map[int]bool{}}
	defer func() {
		if err == nil {
			return
		}
		// Stop whatever was started, even if ctx has ended.
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout+killTimeout+time.Second)
		defer cancel()
		u.mu.Lock()
		procs := u.sb.procs()
		for i := range procs {
			procs[i].hard = !u.ready[procs[i].pid]
		}
		u.mu.Unlock()
		if stopErr := stopProcs(stopCtx, dir, procs, abortTimeout, log); stopErr != nil {
			err = errors.Join(err, stopErr)
			return // keep sandbox.json so Down can retry
		}
		_ = os.Remove(filepath.Join(dir, stateFile))
	}()
	if err := u.update(func(*Sandbox) {}); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}

	if err := u.ensureTemplate(ctx); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	// Everything below runs in parallel per daemon: copy datadir, start,
	// wait for readiness. sshd does not depend on MariaDB. The first failure
	// cancels the others' waits so Up fails fast.
	var (
		wg             sync.WaitGroup
		servers        = 1 + len(u.sb.Replicas)
		errs           = make([]error, 1+servers)
		startCtx, stop = context.WithCancelCause(ctx)
	)
	defer stop(nil)
	run := func(i int, f func(context.Context) error) {
		wg.Go(func() {
			if errs[i] = f(startCtx); errs[i] != nil {
				stop(errs[i])
			}
		})
	}
	run(0, u.startSSH)
	for i := range servers {
		run(1+i, func(ctx context.Context) error { return u.startServer(ctx, i) })
	}
	wg.Wait()
	if err := firstCauses(ctx, errs); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := u.setupReplication(ctx); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if err := u.update(func(*Sandbox) {}); err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	log.Info("sandbox up", "dir", dir, "replicas", opt.Replicas, "tiers", max(opt.Tiers, 1), "parallel", opt.Parallel, "elapsed", time.Since(start).Round(time.Millisecond))
	u.mu.Lock()
	defer u.mu.Unlock()
	out := *u.sb
	out.Replicas = append([]Server(nil), u.sb.Replicas...)
	return &out, nil
}

// refuseIfRunning errs if dir's sandbox.json records a live process; a stale
// file (everything dead, e.g. after a reboot) is simply replaced.
func refuseIfRunning(dir string) error {
	s, err := Load(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w (remove it if no sandbox runs in %s)", err, dir)
	}
	var alive []string
	for _, p := range s.procs() {
		if procAlive(p.pid, s.Dir) {
			alive = append(alive, fmt.Sprintf("%s pid %d", p.name, p.pid))
		}
	}
	if len(alive) > 0 {
		return fmt.Errorf("sandbox: %s already runs a sandbox (%s); stop it first with `nonqueue sandbox down --dir %s`", dir, strings.Join(alive, ", "), dir)
	}
	return nil
}

// firstCauses joins errs, leaving out the cancellations that a sibling's
// failure caused (unless the caller's ctx itself ended).
func firstCauses(ctx context.Context, errs []error) error {
	var real []error
	for _, e := range errs {
		if e != nil && (ctx.Err() != nil || !errors.Is(e, context.Canceled)) {
			real = append(real, e)
		}
	}
	if len(real) == 0 {
		return errors.Join(errs...)
	}
	return errors.Join(real...)
}

// checkShape validates Options.Tiers and Options.Parallel.
func checkShape(opt Options) error {
	if opt.Tiers < 0 {
		return fmt.Errorf("sandbox: Tiers must be 0 or more, got %d", opt.Tiers)
	}
	if t := max(opt.Tiers, 1); opt.Replicas*t > maxReplicas {
		return fmt.Errorf("sandbox: Replicas × Tiers must be at most %d (server ids 1001..1009), got %d × %d", maxReplicas, opt.Replicas, t)
	}
	if opt.Tiers > 1 && opt.Replicas == 0 {
		return fmt.Errorf("sandbox: Tiers %d needs at least one replica", opt.Tiers)
	}
	if opt.Parallel < 0 || opt.Parallel > maxParallel {
		return fmt.Errorf("sandbox: Parallel must be 0..%d, got %d", maxParallel, opt.Parallel)
	}
	return nil
}

// newSandbox lays out the servers: the primary, then the replicas tier by
// tier (Options.Tiers), replica K of tier t (t > 1) replicating from
// replica K of tier t-1.
func newSandbox(dir string, opt Options) *Sandbox {
	srv := func(name string, id uint32) Server {
		return Server{
			Name:     name,
			ServerID: id,
			Host:     "127.0.0.1",
			Socket:   filepath.Join(dir, name, "mysqld.sock"),
			Datadir:  filepath.Join(dir, name, "data"),
		}
	}
	sb := &Sandbox{
		Dir:          dir,
		Primary:      srv("primary", 1000),
		User:         "nonqueue",
		Password:     randomHex(16),
		ReplUser:     "nq_repl",
		ReplPassword: randomHex(16),
		SSH: SSH{
			Host:       "127.0.0.1",
			User:       currentUser(),
			KeyFile:    filepath.Join(dir, "ssh", "client_ed25519"),
			KnownHosts: filepath.Join(dir, "known_hosts"),
		},
	}
	for t := range max(opt.Tiers, 1) {
		for k := 1; k <= opt.Replicas; k++ {
			n := t*opt.Replicas + k
			r := srv("replica"+strconv.Itoa(n), uint32(1000+n))
			r.Source = "primary"
			if t > 0 {
				r.Source = "replica" + strconv.Itoa(n-opt.Replicas)
			}
			r.Relay = t+1 < max(opt.Tiers, 1)
			r.ParallelThreads = opt.Parallel
			sb.Replicas = append(sb.Replicas, r)
		}
	}
	return sb
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux (Go 1.24+ crashes instead)
	return hex.EncodeToString(b)
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if n := os.Getenv("USER"); n != "" {
		return n
	}
	return strconv.Itoa(os.Getuid())
}
