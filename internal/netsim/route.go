package netsim

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// Route is a sandbox seen through a network: the primary's MySQL port and
// sshd reached through two links.
type Route struct {
	// Sandbox is a copy of the sandbox whose Primary.Port and SSH.Port are
	// the links' ports and whose SSH.KnownHosts names the sshd host key
	// at the link's address, so a worker configuration written from it
	// (sandbox.ConnectionsTOML, sandbox.SSHTOML) goes through the links.
	// The replicas are untouched: a worker's replica is local to it, and
	// replication is not a worker's connection.
	Sandbox *sandbox.Sandbox
	// MySQL and SSH are the two links.
	MySQL, SSH *Link
}

// Stats are the counts of both links of a Route.
type RouteStats struct {
	MySQL Stats `json:"mysql"`
	SSH   Stats `json:"ssh"`
}

// Stats returns both links' counts so far.
func (r *Route) Stats() RouteStats { return RouteStats{MySQL: r.MySQL.Stats(), SSH: r.SSH.Stats()} }

// Sub returns s - o.
func (s RouteStats) Sub(o RouteStats) RouteStats {
	return RouteStats{MySQL: s.MySQL.Sub(o.MySQL), SSH: s.SSH.Sub(o.SSH)}
}

// RouteSandbox adds a link to the sandbox's primary (MySQL) and one to its
// sshd, and writes known_hosts for the sshd link's address (name
// known_hosts.PORT beside the sandbox's own).
func (n *Network) RouteSandbox(sb *sandbox.Sandbox) (*Route, error) {
	my, err := n.Add("mysql", net.JoinHostPort(sb.Primary.Host, strconv.Itoa(sb.Primary.Port)), MySQL)
	if err != nil {
		return nil, err
	}
	sh, err := n.Add("ssh", net.JoinHostPort(sb.SSH.Host, strconv.Itoa(sb.SSH.Port)), Opaque)
	if err != nil {
		return nil, err
	}
	known, err := os.ReadFile(sb.SSH.KnownHosts)
	if err != nil {
		return nil, fmt.Errorf("netsim: read the sandbox's known_hosts: %w", err)
	}
	from := fmt.Sprintf("[%s]:%d ", sb.SSH.Host, sb.SSH.Port)
	to := fmt.Sprintf("[%s]:%d ", sb.SSH.Host, sh.Port())
	if !strings.Contains(string(known), from) {
		return nil, fmt.Errorf("netsim: %s has no line for %s", sb.SSH.KnownHosts, strings.TrimSpace(from))
	}
	kh := filepath.Join(filepath.Dir(sb.SSH.KnownHosts), "known_hosts."+strconv.Itoa(sh.Port()))
	if err := os.WriteFile(kh, []byte(strings.ReplaceAll(string(known), from, to)), 0o644); err != nil {
		return nil, fmt.Errorf("netsim: write %s: %w", kh, err)
	}
	c := *sb
	c.Replicas = append([]sandbox.Server(nil), sb.Replicas...)
	c.Primary.Port = my.Port()
	c.SSH.Port = sh.Port()
	c.SSH.KnownHosts = kh
	return &Route{Sandbox: &c, MySQL: my, SSH: sh}, nil
}
