package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the harness started: a `nonqueue work` process or one
// instance of the original loop. Every child gets its own process group,
// so stopping it never signals anything the harness did not start, and
// SIGTERM on the harness's death (Pdeathsig), so a killed harness does not
// leave workers polling forever.
type child struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	// group: stop signals the whole process group (the original loop is a
	// shell that starts mariadb and scp); otherwise only the process.
	group   bool
	done    chan struct{}
	waitErr error
}

// children tracks every running child so teardown can stop them all.
type children struct {
	mu   sync.Mutex
	list []*child
}

func (cs *children) start(name, logPath string, group bool, argv ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, logPath: logPath, cmd: cmd, group: group, done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to end by itself, at most d. It reports
// false on timeout.
func (c *child) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.done:
		return true
	case <-t.C:
		return false
	}
}

func (c *child) signal(sig syscall.Signal) {
	if c.exited() {
		return
	}
	if c.group {
		_ = syscall.Kill(-c.pid(), sig)
	} else {
		_ = syscall.Kill(c.pid(), sig)
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs the child's process
// group. The error says whether it exited cleanly.
func (c *child) stop(grace time.Duration) error {
	if !c.exited() {
		c.signal(syscall.SIGTERM)
		if !c.wait(grace) {
			_ = syscall.Kill(-c.pid(), syscall.SIGKILL)
			c.wait(10 * time.Second)
			return fmt.Errorf("%s (pid %d) did not stop within %v after SIGTERM; killed (log %s)", c.name, c.pid(), grace, c.logPath)
		}
	}
	if c.waitErr != nil {
		return fmt.Errorf("%s (pid %d) exited: %v (log %s)%s", c.name, c.pid(), c.waitErr, c.logPath, logTail(c.logPath))
	}
	return nil
}

// stopAll stops every child still running, in parallel, and forgets them.
func (cs *children) stopAll(grace time.Duration) error {
	cs.mu.Lock()
	list := cs.list
	cs.list = nil
	cs.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, c := range list {
		if c.exited() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.stop(grace)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// forget drops exited children from the list.
func (cs *children) forget() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	kept := cs.list[:0]
	for _, c := range cs.list {
		if !c.exited() {
			kept = append(kept, c)
		}
	}
	cs.list = kept
}

// stopList stops the given children in parallel.
func stopList(list []*child, grace time.Duration) error {
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, c := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.stop(grace)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// vmHWM reads the peak resident set size of pid, in MB, from
// /proc/PID/status.
func vmHWM(pid int) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("pid %d: unexpected VmHWM line %q", pid, line)
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("pid %d: no VmHWM in /proc status", pid)
}

// logTail returns the last lines of a log, indented, for error messages.
func logTail(path string) string {
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
