package sandbox

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"syscall"
)

// RestartSSH stops the sandbox's sshd and every session under it (SIGKILL
// of the whole tree, as a host losing its sshd would look to clients) and
// starts it again on the same port with the same keys, then waits for a
// real handshake. For fault tests and the soak (bench/soak): established
// SFTP sessions break, and new ones work again once it returns. The new
// PID is recorded in sandbox.json, so Down still stops it.
func (s *Sandbox) RestartSSH(ctx context.Context) error {
	bin, err := findBinaries()
	if err != nil {
		return err
	}
	if procAlive(s.SSH.PID, s.Dir) {
		for _, p := range processTree(s.SSH.PID) {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		// SIGKILL is acted on at once; wait for the listener to be gone
		// (its port is then free for the new one).
		if left := waitGone(ctx, s.Dir, []procRef{{name: "sshd", pid: s.SSH.PID, hard: true}}, stopTimeout); len(left) > 0 {
			return fmt.Errorf("sandbox: restart sshd: pid %d survived SIGKILL", s.SSH.PID)
		}
	}
	sdir := filepath.Join(s.Dir, "ssh")
	config := filepath.Join(sdir, "sshd_config")
	logPath := filepath.Join(sdir, "sshd.log")
	offset := fileSize(logPath)
	d, err := startDetached(bin.sshd, []string{"-D", "-f", config, "-E", logPath}, filepath.Join(sdir, "sshd.out"))
	if err != nil {
		return fmt.Errorf("sandbox: restart sshd: %w", err)
	}
	s.SSH.PID = d.pid
	if err := saveState(s); err != nil {
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
		return fmt.Errorf("sandbox: restart sshd: write %s: %w", stateFile, err)
	}
	signer, err := loadSigner(s.SSH.KeyFile)
	if err != nil {
		return fmt.Errorf("sandbox: restart sshd: %w", err)
	}
	addr := net.JoinHostPort(s.SSH.Host, strconv.Itoa(s.SSH.Port))
	if err := waitSSH(ctx, d, addr, s.SSH.User, signer, s.SSH.KnownHosts); err != nil {
		return withLogTail(fmt.Errorf("sandbox: restart sshd (pid %d, port %d): %w", d.pid, s.SSH.Port, err), logPath, offset)
	}
	return nil
}
