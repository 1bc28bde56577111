package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopTimeout bounds how long Down waits after SIGTERM before SIGKILL, and
// killTimeout how long it then waits for the kernel to finish the job.
// abortTimeout is the shorter grace a failed Up gives its daemons: their
// data is a throwaway copy.
const (
	stopTimeout  = 30 * time.Second
	killTimeout  = 5 * time.Second
	abortTimeout = 5 * time.Second
)

// lookBin finds name in PATH, then /usr/sbin and /usr/bin, and returns an
// absolute path (sshd refuses to re-exec itself from a relative one).
func lookBin(name string) (string, bool) {
	cands := []string{}
	if p, err := exec.LookPath(name); err == nil {
		cands = append(cands, p)
	}
	cands = append(cands, filepath.Join("/usr/sbin", name), filepath.Join("/usr/bin", name))
	for _, c := range cands {
		st, err := os.Stat(c)
		if err != nil || st.IsDir() || st.Mode().Perm()&0o111 == 0 {
			continue
		}
		abs, err := filepath.Abs(c)
		if err != nil {
			continue
		}
		return abs, true
	}
	return "", false
}

// daemon is a detached child started by this process. exited is closed once
// it has been reaped (so it never lingers as a zombie of a long-lived
// caller such as a test binary).
type daemon struct {
	pid    int
	exited chan struct{}
	err    error // valid once exited is closed
}

// startDetached starts bin in its own session (so terminal signals and the
// caller's exit do not reach it) with stdout and stderr appended to outPath.
func startDetached(bin string, args []string, outPath string) (*daemon, error) {
	f, err := os.OpenFile(outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdin = nil
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Dir = filepath.Dir(outPath)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	d := &daemon{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

func (d *daemon) hasExited() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// procAlive reports whether pid is a live process whose command line
// contains dir followed by a path separator. Zombies have an empty command
// line and count as gone. This is what keeps Down from signalling a PID the
// kernel handed to some other program.
func procAlive(pid int, dir string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(b) == 0 {
		return false
	}
	return bytes.Contains(b, []byte(strings.TrimRight(dir, "/")+"/"))
}

// signalIfOurs sends sig to pid only if it is still one of dir's processes.
func signalIfOurs(pid int, dir string, sig syscall.Signal) {
	if procAlive(pid, dir) {
		_ = syscall.Kill(pid, sig)
	}
}

// stopProcs SIGTERMs (SIGKILLs if hard) every live process of dir in procs, waits until they
// are gone (bounded by grace and ctx), SIGKILLs the rest and waits up to
// killTimeout more. It errs only if something survives SIGKILL.
func stopProcs(ctx context.Context, dir string, procs []procRef, grace time.Duration, log *slog.Logger) error {
	var live []procRef
	for _, p := range procs {
		if procAlive(p.pid, dir) {
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return nil
	}
	for _, p := range live {
		sig := syscall.SIGTERM
		if p.hard {
			sig = syscall.SIGKILL
		}
		log.Debug("sandbox: stopping", "name", p.name, "pid", p.pid, "signal", sig)
		signalIfOurs(p.pid, dir, sig)
	}
	live = waitGone(ctx, dir, live, grace)
	if len(live) == 0 {
		return nil
	}
	for _, p := range live {
		log.Warn("sandbox: process ignored SIGTERM, sending SIGKILL", "name", p.name, "pid", p.pid)
		signalIfOurs(p.pid, dir, syscall.SIGKILL)
	}
	// SIGKILL cannot be ignored; do not let an ended ctx cut this short.
	live = waitGone(context.WithoutCancel(ctx), dir, live, killTimeout)
	if len(live) > 0 {
		var names []string
		for _, p := range live {
			names = append(names, fmt.Sprintf("%s (pid %d)", p.name, p.pid))
		}
		return fmt.Errorf("sandbox: still running after SIGKILL: %s", strings.Join(names, ", "))
	}
	return nil
}

// waitGone polls until none of procs is alive, ctx ends or max elapses, and
// returns those still alive.
func waitGone(ctx context.Context, dir string, procs []procRef, max time.Duration) []procRef {
	deadline := time.Now().Add(max)
	for i := 0; ; i++ {
		var still []procRef
		for _, p := range procs {
			if procAlive(p.pid, dir) {
				still = append(still, p)
			}
		}
		if len(still) == 0 || !time.Now().Before(deadline) || ctx.Err() != nil || i > int(max/(20*time.Millisecond))+1 {
			return still
		}
		procs = still
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tailFile returns roughly the last n lines of path read from offset on (a
// log may hold earlier runs), for error messages.
func tailFile(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "(no log written yet)"
	}
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(cannot stat %s: %v)", path, err)
	}
	const maxBytes = 16 << 10
	start := offset
	if st.Size()-start > maxBytes {
		start = st.Size() - maxBytes
	}
	if start < 0 {
		start = 0
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot seek %s: %v)", path, err)
	}
	b, _ := io.ReadAll(io.LimitReader(f, maxBytes))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	s := strings.Join(lines, "\n")
	if strings.TrimSpace(s) == "" {
		return "(empty)"
	}
	return s
}

// withLogTail wraps err with the tail of a log file, which is almost always
// where the real reason a daemon failed is.
func withLogTail(err error, path string, offset int64) error {
	return fmt.Errorf("%w\n--- tail of %s ---\n%s\n---", err, path, tailFile(path, offset, 25))
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// ports hands out free loopback ports, never the same one twice in a
// process, so concurrently starting daemons cannot pick each other's port.
var ports struct {
	mu   sync.Mutex
	used map[int]bool
}

// freePort finds a port by listening on 127.0.0.1:0 and closing. Another
// program may still grab it before the daemon binds; callers retry on bind
// failures.
func freePort() (int, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.used == nil {
		ports.used = map[int]bool{}
	}
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("find free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !ports.used[p] {
			ports.used[p] = true
			return p, nil
		}
	}
	return 0, errors.New("find free port: no unused port after 20 tries")
}

// bindFailed reports whether the log, from offset on, says the daemon could
// not bind its port (the one start-up failure worth retrying elsewhere).
func bindFailed(path string, offset int64) bool {
	t := tailFile(path, offset, 200)
	return strings.Contains(t, "Address already in use") ||
		strings.Contains(t, "Bind on TCP/IP port") ||
		strings.Contains(t, "Cannot bind any address")
}

// waitGroupGone polls until process group pgid has no live (non-zombie)
// member or max elapses.
func waitGroupGone(pgid int, max time.Duration) {
	deadline := time.Now().Add(max)
	for i := 0; i < int(max/(20*time.Millisecond))+1 && time.Now().Before(deadline); i++ {
		if !groupAlive(pgid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// groupAlive reports whether any non-zombie process belongs to group pgid.
func groupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid pgrp ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			return true
		}
	}
	return false
}
