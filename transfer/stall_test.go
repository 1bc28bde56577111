package transfer_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/transfer"
)

// TestKeepaliveClosesDeadConnection: the sandbox's sshd (with every
// per-connection process) stops answering while the connection is idle.
// With the stall bound far away (a minute), the keepalive alone finds the
// connection dead within keepalive_interval + keepalive_timeout: the call
// blocked on it fails with ErrStalled naming the keepalive. Callers that
// then need the connection at once fail together after one dial timeout,
// not one after the other. Once sshd resumes, the next call dials again
// and works.
func TestKeepaliveClosesDeadConnection(t *testing.T) {
	const dialTimeout = 2 * time.Second
	b := setup(t, func(c *transfer.Config) {
		c.SSH.StallTimeout = time.Minute
		c.SSH.KeepaliveInterval = time.Second
		c.SSH.KeepaliveTimeout = 2 * time.Second
		c.SSH.DialTimeout = dialTimeout
	})
	if err := b.sh.Connect(b.ctx); err != nil {
		t.Fatal(err)
	}
	resume, err := env.SB.PauseSSH()
	t.Cleanup(resume)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = b.sh.CheckDatadir(b.ctx)
	took := time.Since(start)
	t.Logf("CheckDatadir on the stopped server returned after %v: %v", took, err)
	if !errors.Is(err, transfer.ErrStalled) || !strings.Contains(err.Error(), "keepalive") {
		t.Fatalf("got %v; want ErrStalled from the keepalive", err)
	}
	// 3s at most by the settings; the rest is margin for a loaded host,
	// still far below the one-minute stall bound.
	if took > 15*time.Second {
		t.Errorf("the dead connection was found after %v; want about 3s", took)
	}

	// Four callers, as four instances of a worker: the server still
	// accepts TCP connections (the kernel does) but never answers the
	// handshake, so a dial takes the whole dial timeout.
	const callers = 4
	start = time.Now()
	errs := make(chan error, callers)
	for range callers {
		go func() { errs <- b.sh.CheckDatadir(b.ctx) }()
	}
	for range callers {
		if err := <-errs; err == nil {
			t.Error("CheckDatadir worked with sshd stopped")
		}
	}
	took = time.Since(start)
	t.Logf("%d callers failed in %v with sshd stopped (dial timeout %v)", callers, took, dialTimeout)
	if took > 2*dialTimeout+3*time.Second {
		t.Errorf("%d callers took %v to fail; want about one dial timeout (%v), not one each", callers, took, dialTimeout)
	}
	resume()
	time.Sleep(2 * time.Second) // past the failed dial's pause
	if err := b.sh.CheckDatadir(b.ctx); err != nil {
		t.Fatalf("after sshd resumed: %v", err)
	}
}

// TestShippedFilesSynced: every shipped file is fsynced on the primary's
// host (fsync@openssh.com) once all its bytes are written, before Ship
// swaps it in (and before the cksum comparison of the big ones), on the
// handle that wrote it: the file is opened once, so the sync costs one
// SFTP request, not three (open, fsync, close) through the link's
// single-threaded sftp-server. The observable is the SFTP server's own
// log: this test runs a second sshd on the sandbox's keys, configuration
// and datadir whose sftp subsystem is OpenSSH's sftp-server (the program
// internal-sftp is built from) logging every request, writes included.
func TestShippedFilesSynced(t *testing.T) {
	port, known, sftpLog := loggingSSHD(t)
	b := setup(t, func(c *transfer.Config) {
		c.SSH.Port, c.SSH.KnownHosts = port, known
		c.Verify = transfer.VerifyBytes
	})
	b.makeResultRows(t, 1, 1, 20000) // files of several hundred KiB: streamed, and compared by cksum
	const token = 42
	if _, err := b.sh.Ship(b.ctx, b.params(1, token)); err != nil {
		t.Fatalf("Ship: %v", err)
	}
	for _, live := range b.cfg.TableNames(1) {
		if got, want := checksum(t, b.ctx, b.primary, live), checksum(t, b.ctx, b.local, live); got != want {
			t.Errorf("%s: primary %s, replica %s", live, got, want)
		}
	}
	logText, err := os.ReadFile(sftpLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(logText), "\n")
	dir := filepath.Join(env.SB.Primary.Datadir, b.schema)
	for _, live := range b.cfg.TableNames(1) {
		for _, ext := range []string{".MYD", ".MYI", ".frm"} {
			f := filepath.Join(dir, transfer.StagingName("nqtmp_", token, live)+ext)
			// Every write request must come before the fsync, and the
			// file must be opened once: the fsync rides on the handle
			// that wrote it.
			opens, lastWrite, synced := 0, -1, -1
			for i, l := range lines {
				switch {
				case strings.Contains(l, fmt.Sprintf("open %q", f)):
					opens++
				case strings.Contains(l, fmt.Sprintf("write %q", f)):
					lastWrite = i
				case strings.Contains(l, fmt.Sprintf("fsync %q", f)):
					synced = i
				}
			}
			switch {
			case synced < 0:
				t.Errorf("%s was never fsynced (sftp-server logged no fsync of it)", f)
			case lastWrite < 0 || synced < lastWrite:
				t.Errorf("%s: fsync at log line %d, the last write at %d; want the fsync after every write", f, synced, lastWrite)
			}
			if opens != 1 {
				t.Errorf("%s opened %d times; want once (the fsync on the handle that wrote it)", f, opens)
			}
		}
	}
	if t.Failed() {
		t.Logf("sftp-server log:\n%s", logText)
	}
}

// loggingSSHD starts, for one test, an sshd like the sandbox's (same host
// key, authorized key and datadir) whose sftp subsystem is OpenSSH's
// sftp-server logging every request (DEBUG1: writes too) to a file. It returns the port, a
// known_hosts file for it and the log's path; the daemon is stopped at
// cleanup.
func loggingSSHD(t *testing.T) (port int, knownHosts, sftpLog string) {
	t.Helper()
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
	}
	var sftpServer string
	for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server"} {
		if _, err := os.Stat(p); err == nil {
			sftpServer = p
			break
		}
	}
	if sftpServer == "" {
		t.Fatal("OpenSSH's sftp-server not found")
	}
	dir := t.TempDir()
	if strings.ContainsAny(dir, " \t'\"") {
		t.Fatalf("temporary directory %q has characters the subsystem's command line cannot take", dir)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port = ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	sftpLog = filepath.Join(dir, "sftp.log")
	base, err := os.ReadFile(filepath.Join(env.SB.Dir, "ssh", "sshd_config"))
	if err != nil {
		t.Fatal(err)
	}
	var conf []string
	for _, l := range strings.Split(strings.TrimSpace(string(base)), "\n") {
		switch {
		case strings.HasPrefix(l, "Port "):
			l = "Port " + strconv.Itoa(port)
		case strings.HasPrefix(l, "PidFile "):
			l = `PidFile "` + filepath.Join(dir, "sshd.pid") + `"`
		case strings.HasPrefix(l, "Subsystem "):
			// External subsystems run through the login shell, which
			// takes the redirection.
			l = "Subsystem sftp " + sftpServer + " -e -l DEBUG1 2>>" + sftpLog
		}
		conf = append(conf, l)
	}
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	known, err := os.ReadFile(env.SB.SSH.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	oldAddr := fmt.Sprintf("[%s]:%d", env.SB.SSH.Host, env.SB.SSH.Port)
	newAddr := fmt.Sprintf("[%s]:%d", env.SB.SSH.Host, port)
	if !strings.Contains(string(known), oldAddr) {
		t.Fatalf("the sandbox's known_hosts has no line for %s", oldAddr)
	}
	knownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(strings.ReplaceAll(string(known), oldAddr, newAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-f", cfgPath, "-E", filepath.Join(dir, "sshd.log"))
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(env.SB.SSH.Host, strconv.Itoa(port)), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if i == 100 {
			l, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			t.Fatalf("sshd on port %d not listening after 10s: %v\n%s", port, err, l)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return port, knownHosts, sftpLog
}
