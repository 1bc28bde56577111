package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// maxPauseProcs bounds the process tree PauseSSH walks.
const maxPauseProcs = 10000

// PauseSSH stops (SIGSTOP) the sandbox's sshd: the listener and every
// process under it. sshd serves each connection in a child that starts its
// own session (internal-sftp and exec'd commands run below it), so neither
// the listener alone nor its process group would stall an established
// connection. The tree is walked again until no new process shows up. The
// returned resume sends SIGCONT to every process stopped; it is safe to
// call more than once (tests also register it as a cleanup). For fault
// tests: clients see a peer that stops answering, as a hung or vanished
// host would look.
func (sb *Sandbox) PauseSSH() (resume func(), err error) {
	if !procAlive(sb.SSH.PID, sb.Dir) {
		return func() {}, fmt.Errorf("sandbox: sshd (pid %d) is not running", sb.SSH.PID)
	}
	var stopped []int
	var once sync.Once
	resume = func() {
		once.Do(func() {
			for _, p := range stopped {
				_ = syscall.Kill(p, syscall.SIGCONT)
			}
		})
	}
	seen := map[int]bool{}
	for pass := 0; pass < 5; pass++ {
		fresh := 0
		for _, p := range processTree(sb.SSH.PID) {
			if seen[p] {
				continue
			}
			seen[p] = true
			if err := syscall.Kill(p, syscall.SIGSTOP); err == nil {
				stopped = append(stopped, p)
				fresh++
			} else if !errors.Is(err, syscall.ESRCH) {
				resume()
				return func() {}, fmt.Errorf("sandbox: stop sshd process %d: %w", p, err)
			}
		}
		if fresh == 0 {
			break
		}
	}
	return resume, nil
}

// processTree returns root and every process under it, from /proc.
func processTree(root int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid …": comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := []int{root}
	for i := 0; i < len(out) && len(out) < maxPauseProcs; i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}
