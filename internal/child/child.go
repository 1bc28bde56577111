// Package child starts and stops the processes that `nonqueue demo` and
// the benchmark harness run next to themselves (`nonqueue work`, the
// original loop), so both stop them the same way: SIGTERM, a grace period
// for the worker's own clean shutdown, then SIGKILL.
//
// Every child gets its own process group, so a stop never signals
// anything its parent did not start, and SIGTERM on the parent's death
// (Pdeathsig), so a killed demo or harness does not leave workers polling
// forever.
package child

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// killWait bounds the wait after SIGKILL, which the kernel acts on at once
// unless the process is stuck in the kernel.
const killWait = 10 * time.Second

// Process is one started child. Its fields do not change after Start.
type Process struct {
	// Name says what the child is, in errors ("worker 1", "nonqueue work
	// (replica2)").
	Name string
	// LogPath is the file that receives its stdout and stderr.
	LogPath string
	cmd     *exec.Cmd
	// group: signals go to the whole process group (a shell script that
	// starts mariadb and scp); otherwise SIGTERM goes to the process only,
	// which stops its own children. SIGKILL always goes to the group.
	group   bool
	done    chan struct{}
	waitErr error
}

// Start runs argv with stdout and stderr appended to a new file at
// logPath.
func Start(name, logPath string, group bool, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("start %s: no command", name)
	}
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: log: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, group: group, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id (also its process group id).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended (nil: exit status 0); valid once Done is
// closed.
func (p *Process) Err() error {
	<-p.done
	return p.waitErr
}

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end by itself, at most d. It reports
// false on timeout.
func (p *Process) Wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

func (p *Process) signal(sig syscall.Signal) {
	if p.Exited() {
		return
	}
	if p.group {
		_ = syscall.Kill(-p.Pid(), sig)
	} else {
		_ = syscall.Kill(p.Pid(), sig)
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs the process group.
// The error says whether it exited cleanly, with the end of its log.
func (p *Process) Stop(grace time.Duration) error {
	if !p.Exited() {
		p.signal(syscall.SIGTERM)
		if !p.Wait(grace) {
			_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
			p.Wait(killWait)
			return fmt.Errorf("%s (pid %d) did not stop within %v after SIGTERM; killed (log %s)", p.Name, p.Pid(), grace, p.LogPath)
		}
	}
	if p.waitErr != nil {
		return fmt.Errorf("%s (pid %d) exited: %w (log %s)%s", p.Name, p.Pid(), p.waitErr, p.LogPath, LogTail(p.LogPath))
	}
	return nil
}

// StopAll stops the given processes in parallel, each as Stop does.
func StopAll(list []*Process, grace time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, p := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Stop(grace)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Set tracks every running child so a teardown, also on errors and
// interrupts, can stop them all. The zero value is ready to use.
type Set struct {
	mu   sync.Mutex
	list []*Process
}

// Start starts a child as Start does and tracks it.
func (s *Set) Start(name, logPath string, group bool, argv ...string) (*Process, error) {
	p, err := Start(name, logPath, group, argv...)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.list = append(s.list, p)
	s.mu.Unlock()
	return p, nil
}

// StopAll stops every tracked child still running, in parallel, and
// forgets them all.
func (s *Set) StopAll(grace time.Duration) error {
	s.mu.Lock()
	list := s.list
	s.list = nil
	s.mu.Unlock()
	var running []*Process
	for _, p := range list {
		if !p.Exited() {
			running = append(running, p)
		}
	}
	return StopAll(running, grace)
}

// Forget drops exited children.
func (s *Set) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.list[:0]
	for _, p := range s.list {
		if !p.Exited() {
			kept = append(kept, p)
		}
	}
	s.list = kept
}

// LogTail returns the last lines of a log, indented, for error messages.
func LogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return "\n      " + string(bytes.Join(lines, []byte("\n      ")))
}
