package sandbox

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// sshReadyTimeout bounds waiting for sshd to accept the client key.
const sshReadyTimeout = 30 * time.Second

// startSSH writes fresh host and client keys, authorized_keys, known_hosts
// and sshd_config under Dir/ssh, starts sshd and waits until a real SSH
// handshake with host-key verification and key authentication succeeds.
func (u *upState) startSSH(ctx context.Context) error {
	u.mu.Lock()
	dir := u.sb.Dir
	info := u.sb.SSH
	u.mu.Unlock()
	sdir := filepath.Join(dir, "ssh")
	if err := os.MkdirAll(sdir, 0o700); err != nil {
		return fmt.Errorf("sshd: %w", err)
	}
	hostKey := filepath.Join(sdir, "host_ed25519")
	hostPub, err := writeKey(hostKey)
	if err != nil {
		return fmt.Errorf("sshd: host key: %w", err)
	}
	clientPub, err := writeKey(info.KeyFile)
	if err != nil {
		return fmt.Errorf("sshd: client key: %w", err)
	}
	authKeys := filepath.Join(sdir, "authorized_keys")
	if err := os.WriteFile(authKeys, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return fmt.Errorf("sshd: %w", err)
	}
	signer, err := loadSigner(info.KeyFile)
	if err != nil {
		return fmt.Errorf("sshd: %w", err)
	}
	if os.Geteuid() == 0 {
		// sshd's privilege separation directory; missing in fresh containers.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
	}
	config := filepath.Join(sdir, "sshd_config")
	logPath := filepath.Join(sdir, "sshd.log")
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
		if err := os.WriteFile(config, []byte(sshdConfig(sdir, port, hostKey, authKeys)), 0o600); err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
		line := knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(info.Host, strconv.Itoa(port)))}, hostPub)
		if err := os.WriteFile(info.KnownHosts, []byte(line+"\n"), 0o644); err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
		if attempt == 1 {
			// Test mode reports configuration errors clearly, before the
			// daemon would just exit.
			tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			out, err := exec.CommandContext(tctx, u.bin.sshd, "-t", "-f", config).CombinedOutput()
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("sshd -t: %w", ctx.Err())
				}
				return fmt.Errorf("sshd -t -f %s: %w: %s", config, err, strings.TrimSpace(string(out)))
			}
		}
		offset := fileSize(logPath)
		d, err := startDetached(u.bin.sshd, []string{"-D", "-f", config, "-E", logPath}, filepath.Join(sdir, "sshd.out"))
		if err != nil {
			return fmt.Errorf("sshd: %w", err)
		}
		if err := u.update(func(sb *Sandbox) { sb.SSH.Port, sb.SSH.PID = port, d.pid }); err != nil {
			return err
		}
		u.log.Info("sandbox: started sshd", "name", "sshd", "port", port, "pid", d.pid)
		err = waitSSH(ctx, d, net.JoinHostPort(info.Host, strconv.Itoa(port)), info.User, signer, info.KnownHosts)
		if err == nil {
			u.markReady(d.pid)
			return nil
		}
		if d.hasExited() && bindFailed(logPath, offset) && attempt < startAttempts {
			u.log.Warn("sandbox: sshd lost its port, retrying", "port", port)
			continue
		}
		return withLogTail(fmt.Errorf("sshd (pid %d, port %d): %w", d.pid, port, err), logPath, offset)
	}
}

// sshdConfig is a self-contained configuration: key login only, SFTP served
// in-process, everything else default.
func sshdConfig(sdir string, port int, hostKey, authKeys string) string {
	q := func(p string) string { return `"` + p + `"` }
	lines := []string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + q(hostKey),
		"PidFile " + q(filepath.Join(sdir, "sshd.pid")),
		// AuthorizedKeysFile expands %-tokens.
		"AuthorizedKeysFile " + q(strings.ReplaceAll(authKeys, "%", "%%")),
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin prohibit-password",
		"StrictModes no",
		"UsePAM no",
		"Subsystem sftp internal-sftp",
		"LogLevel VERBOSE",
	}
	return strings.Join(lines, "\n") + "\n"
}

// writeKey generates an ed25519 key, writes it as an OpenSSH PEM private key
// (mode 0600) and returns its public half.
func writeKey(path string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(path) // WriteFile keeps an existing file's mode
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

func loadSigner(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey(b)
}

// waitSSH polls an authenticated, host-verified SSH handshake until it
// works, sshd exits, ctx ends or sshReadyTimeout passes.
func waitSSH(ctx context.Context, d *daemon, addr, user string, signer ssh.Signer, knownHostsFile string) error {
	hostCB, err := knownhosts.New(knownHostsFile)
	if err != nil {
		return err
	}
	cfg := &ssh.ClientConfig{
		User:            user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostCB,
		Timeout:         2 * time.Second,
	}
	deadline := time.Now().Add(sshReadyTimeout)
	var last error
	for i := 0; i < int(sshReadyTimeout/readyPoll)+1; i++ {
		if d.hasExited() {
			return fmt.Errorf("sshd exited during start-up: %v", d.err)
		}
		last = sshHandshake(ctx, addr, cfg)
		if last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.exited:
		case <-time.After(readyPoll):
		}
	}
	return fmt.Errorf("sshd not accepting the client key within %s (last error: %v)", sshReadyTimeout, last)
}

func sshHandshake(ctx context.Context, addr string, cfg *ssh.ClientConfig) error {
	dialer := net.Dialer{Timeout: cfg.Timeout}
	nc, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	c, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		return err
	}
	ssh.NewClient(c, chans, reqs).Close()
	return nil
}
