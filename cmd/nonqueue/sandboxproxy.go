package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// startSandboxProxy starts `nonqueue sandbox proxy` (this binary) for
// `sandbox up --latency`: a process of its own, because toxiproxy runs as a
// library and the proxy must outlive `sandbox up`, as the daemons do.
func startSandboxProxy(ctx context.Context, sb *sandbox.Sandbox, latency time.Duration) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("start the network proxy: %w", err)
	}
	ready := filepath.Join(sb.Dir, "proxy", "ready.json")
	_, err = sb.StartProxy(ctx, latency.String(), ready,
		exe, "sandbox", "proxy", "--dir", sb.Dir, "--latency", latency.String(), "--ready", ready)
	return err
}

// runSandboxProxy is `nonqueue sandbox proxy`: it relays the sandbox's
// primary (MySQL and sshd) through toxiproxy with latency added to every
// round trip, writes its ports to ready, and runs until SIGTERM (sandbox
// down).
func runSandboxProxy(ctx context.Context, dir string, latency time.Duration, ready string) error {
	if ready == "" {
		return fmt.Errorf("sandbox proxy needs --ready FILE")
	}
	sb, err := sandbox.Load(dir)
	if err != nil {
		return err
	}
	nw, err := netsim.New(latency)
	if err != nil {
		return err
	}
	defer nw.Close()
	route, err := nw.RouteSandbox(sb)
	if err != nil {
		return err
	}
	b, err := json.Marshal(sandbox.Proxy{MySQLPort: route.MySQL.Port(), SSHPort: route.SSH.Port(), KnownHosts: route.Sandbox.SSH.KnownHosts})
	if err != nil {
		return err
	}
	tmp := ready + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, ready); err != nil {
		return err
	}
	fmt.Printf("nonqueue sandbox proxy: mysql 127.0.0.1:%d -> %s, ssh 127.0.0.1:%d -> %s, %v round trip\n",
		route.MySQL.Port(), route.MySQL.Upstream, route.SSH.Port(), route.SSH.Upstream, latency)
	<-ctx.Done()
	return nil
}
