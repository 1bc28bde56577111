package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Proxy is a long-running process (`nonqueue sandbox proxy`) that relays
// the primary's MySQL port and sshd through a simulated network
// (internal/netsim: toxiproxy with a latency). Workers configured by
// `sandbox up --latency` connect to its ports; the replicas' replication
// does not go through it. Down stops it with the daemons.
type Proxy struct {
	// PID of the proxy process; its command line names the sandbox
	// directory, as the daemons' do.
	PID int
	// Latency is the round trip it adds, as given ("1ms").
	Latency string
	// MySQLPort and SSHPort are its listening ports on 127.0.0.1, in
	// front of Primary.Port and SSH.Port.
	MySQLPort, SSHPort int
	// KnownHosts has the sshd host key at the proxy's SSH address.
	KnownHosts string
}

// Via returns a copy of the sandbox as workers behind its proxy see it:
// the primary's port, sshd's port and known_hosts are the proxy's. Without
// a proxy it is a plain copy.
func (s *Sandbox) Via() *Sandbox {
	c := *s
	c.Replicas = append([]Server(nil), s.Replicas...)
	if p := s.Proxy; p != nil {
		c.Primary.Port, c.SSH.Port, c.SSH.KnownHosts = p.MySQLPort, p.SSHPort, p.KnownHosts
	}
	return &c
}

// proxyReadyTimeout bounds the proxy's start.
const proxyReadyTimeout = 30 * time.Second

// StartProxy starts argv (the proxy command; it must name the sandbox
// directory, and write the Proxy it serves as JSON to ready once it
// listens), waits for ready, and records the process in sandbox.json so
// Down stops it. On failure the process is killed.
func (s *Sandbox) StartProxy(ctx context.Context, latency, ready string, argv ...string) (*Proxy, error) {
	dir := filepath.Join(s.Dir, "proxy")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("sandbox: proxy: %w", err)
	}
	if err := os.Remove(ready); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("sandbox: proxy: %w", err)
	}
	out := filepath.Join(dir, "proxy.out")
	d, err := startDetached(argv[0], argv[1:], out)
	if err != nil {
		return nil, fmt.Errorf("sandbox: proxy: %w", err)
	}
	kill := func(err error) (*Proxy, error) {
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
		return nil, fmt.Errorf("sandbox: proxy: %w", withLogTail(err, out, 0))
	}
	deadline := time.Now().Add(proxyReadyTimeout)
	for {
		if b, err := os.ReadFile(ready); err == nil {
			var p Proxy
			if err := json.Unmarshal(b, &p); err != nil {
				return kill(fmt.Errorf("read %s: %w", ready, err))
			}
			p.PID, p.Latency = d.pid, latency
			s.Proxy = &p
			if err := saveState(s); err != nil {
				return kill(err)
			}
			return &p, nil
		}
		if d.hasExited() {
			return kill(fmt.Errorf("exited at start: %v", d.err))
		}
		if time.Now().After(deadline) {
			return kill(fmt.Errorf("not ready after %v", proxyReadyTimeout))
		}
		select {
		case <-ctx.Done():
			return kill(ctx.Err())
		case <-time.After(readyPoll):
		}
	}
}
