package main

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// TestSandboxLatency: `sandbox up --latency 5ms` starts a proxy process
// whose ports the generated config uses: the primary answers through it
// (each round trip at least 5 ms late), sshd answers through it with a
// known_hosts line for the proxy's address, and `sandbox down` stops it
// with the daemons.
func TestSandboxLatency(t *testing.T) {
	requireSandbox(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "sandbox", "up", "--dir", dir, "--replicas", "1", "--latency", "5ms")
	cmd.Env = append(os.Environ(), "NQ_TEST_AS_NONQUEUE=1") // the proxy process is this binary too
	out, err := cmd.CombinedOutput()
	t.Cleanup(func() { _ = sandbox.Down(context.Background(), dir) })
	if err != nil {
		t.Fatalf("sandbox up --latency: %v\n%s", err, out)
	}
	sb, err := sandbox.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p := sb.Proxy
	if p == nil || p.PID == 0 || p.MySQLPort == sb.Primary.Port || p.SSHPort == sb.SSH.Port {
		t.Fatalf("no proxy recorded: %+v\n%s", p, out)
	}
	c, err := LoadConfig(dir + "/nonqueue.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Primary.Port != p.MySQLPort || c.SSH.Port != p.SSHPort || c.SSH.KnownHosts != p.KnownHosts {
		t.Fatalf("the config does not go through the proxy: primary port %d, ssh port %d, known_hosts %s; proxy %+v",
			c.Primary.Port, c.SSH.Port, c.SSH.KnownHosts, p)
	}
	mc, _ := c.Primary.MySQL("primary")
	db := openDB(t, mc)
	var id int
	if err := db.QueryRow("SELECT @@server_id").Scan(&id); err != nil || id != int(sb.Primary.ServerID) {
		t.Fatalf("through the proxy: server_id %d, %v; want the primary's %d", id, err, sb.Primary.ServerID)
	}
	start := time.Now()
	for range 10 {
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Errorf("10 pings through a 5 ms network took %v, want at least 50ms", el)
	}
	kh, err := os.ReadFile(p.KnownHosts)
	if err != nil || !strings.Contains(string(kh), "[127.0.0.1]:"+strconv.Itoa(p.SSHPort)+" ") {
		t.Errorf("known_hosts %s: %v\n%s", p.KnownHosts, err, kh)
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.SSHPort)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	banner, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if !strings.HasPrefix(banner, "SSH-2.0-") {
		t.Errorf("sshd through the proxy: banner %q, %v", banner, err)
	}

	db.Close()
	if out, err := run(t, "sandbox", "down", "--dir", dir); err != nil {
		t.Fatalf("sandbox down: %v\n%s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(p.PID) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(p.PID) {
		t.Errorf("proxy pid %d alive after sandbox down", p.PID)
	}
}
