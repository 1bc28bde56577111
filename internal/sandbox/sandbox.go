// Package sandbox starts, on loopback, a real local nonqueue topology: one
// MariaDB primary, N GTID replicas of it (optionally with replicas of
// those, Options.Tiers, and parallel appliers, Options.Parallel), and one
// OpenSSH sshd whose login
// can write the primary's datadir (where nonqueue ships result table files
// over SFTP).
//
// The daemons are started detached (own session, output to log files in the
// sandbox directory) so they outlive the process that called Up: the CLI
// `nonqueue sandbox up` exits right after Up and `nonqueue sandbox down`
// stops them later from another process, using the identities recorded in
// DIR/sandbox.json. Integration tests call the same Up in TestMain and
// (*Sandbox).Down when they finish.
//
// Everything listens on 127.0.0.1 only. The sandbox is for development and
// tests: it runs as the current user (root included) and favours start-up
// speed over durability.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// StateFile is the name, inside the sandbox directory, of the JSON file that
// records the running sandbox.
const stateFile = "sandbox.json"

// maxReplicas bounds Options.Replicas (times Options.Tiers): replica k gets server_id 1000+k and
// nonqueue derives instance ids as (server_id-1000)*100+instance, so more
// than 9 replicas would not fit the scheme's single digit.
const maxReplicas = 9

// maxParallel bounds Options.Parallel: more applier threads than that on a
// sandbox only cost memory.
const maxParallel = 64

// ErrMissing is wrapped by Check and Up when a required binary (mariadbd,
// mariadb-install-db or sshd) cannot be found, so callers (the CLI, test
// mains) can tell "not installed here" from a real failure with errors.Is and
// skip or print the install hint instead of failing obscurely.
var ErrMissing = errors.New("sandbox: required binary missing; install with: apt-get update && apt-get install -y mariadb-server mariadb-client openssh-server")

// Options configures Up.
type Options struct {
	// Dir is the sandbox root. It is created if missing and made absolute,
	// because the absolute path is what identifies the sandbox's processes
	// (it appears in their command lines). Up refuses to run when
	// Dir/sandbox.json exists and any process it records is still alive.
	Dir string
	// Replicas is the number of GTID replicas of the primary to start (the
	// first tier). With Tiers <= 1 it is the whole topology: 0 to 9.
	Replicas int
	// Tiers is the depth of the replication tree; 0 or 1 is flat (every
	// replica replicates from the primary). With Tiers = T each of the
	// Replicas first-tier replicas heads a chain of T-1 more: replica K of
	// tier t replicates from replica K of tier t-1, which writes what it
	// applies to its own binary log (log_slave_updates, GTIDs preserved),
	// the hierarchical shape of the Drizzle seed. Replicas*Tiers must be
	// 9 or fewer (server ids 1001..1009); tier t's replicas are numbered
	// after tier t-1's: with Replicas 2 and Tiers 2, replica3 replicates
	// from replica1 and replica4 from replica2.
	Tiers int
	// Parallel, when positive, runs every replica's SQL applier with
	// slave_parallel_threads = Parallel in slave_parallel_mode =
	// optimistic (the Tungsten seed's parallel appliers); 0 applies
	// serially. At most 64.
	Parallel int
	// Logger receives progress (each started daemon at Info). Nil discards.
	Logger *slog.Logger
}

// Server describes one running mariadbd of the sandbox. It is recorded in
// sandbox.json, so it must stay JSON-serialisable.
type Server struct {
	// Name is "primary" or "replicaK" (K = 1..9); it is also the name of the
	// server's directory under the sandbox root.
	Name string
	// ServerID is the server's @@server_id: 1000 for the primary and 1000+K
	// for replica K, matching nonqueue's default instance-id formula
	// (server_id-1000)*100+instance.
	ServerID uint32
	// Host is always "127.0.0.1": servers bind loopback only.
	Host string
	// Port is the server's TCP port, chosen free at start-up.
	Port int
	// Socket is the unix socket on which root can log in without a password
	// (the sandbox's administrative path; applications use User over TCP).
	Socket string
	// Datadir is the server's data directory (absolute).
	Datadir string
	// PID is the mariadbd process id; Down only signals it while its command
	// line still names the sandbox directory.
	PID int
	// Source is the Name of the server this one replicates from: "primary"
	// for a first-tier replica, "replicaK" for a replica of a replica (see
	// Options.Tiers); empty for the primary.
	Source string `json:",omitempty"`
	// Relay is true for a replica that other replicas replicate from (a
	// middle tier).
	Relay bool `json:",omitempty"`
	// ParallelThreads is the replica's slave_parallel_threads (optimistic
	// mode when positive; see Options.Parallel); kept so Restart starts
	// the server the same way.
	ParallelThreads int `json:",omitempty"`
}

// SSH describes the sandbox's sshd, through which nonqueue ships files into
// the primary's datadir over SFTP.
type SSH struct {
	// Host is "127.0.0.1" and User the current OS user, who can write the
	// primary's datadir.
	Host, User string
	// Port is sshd's TCP port; PID its listener process id.
	Port, PID int
	// KeyFile is the client private key (OpenSSH PEM, ed25519, mode 0600)
	// authorised for User.
	KeyFile string
	// KnownHosts is Dir/known_hosts with the single line
	// "[127.0.0.1]:PORT ssh-ed25519 …", so clients can verify the host key
	// strictly instead of disabling verification.
	KnownHosts string
}

// Sandbox is a running (or recorded) topology. Up returns it, Load reads it
// back from Dir/sandbox.json, and Down stops it. The file holds passwords and
// is written with mode 0600.
type Sandbox struct {
	// Dir is the absolute sandbox root.
	Dir string
	// Primary is the replication source; Replicas replicate from it, or
	// from one another in a tiered sandbox (each Server's Source), with
	// master_use_gtid=slave_pos.
	Primary  Server
	Replicas []Server
	// SSH is the sshd that lands where the primary's datadir is writable.
	SSH SSH
	// User/Password is the application account: ALL PRIVILEGES ON *.* WITH
	// GRANT OPTION at '127.0.0.1' and 'localhost'. It is created on the
	// primary and reaches the replicas by replication, so it works on every
	// server.
	User, Password string
	// ReplUser/ReplPassword is the account replicas use to connect to the
	// primary (REPLICATION SLAVE at '127.0.0.1').
	ReplUser, ReplPassword string
	// Proxy, when set, is the simulated network `sandbox up --latency`
	// puts between the workers and the primary (StartProxy).
	Proxy *Proxy `json:",omitempty"`
}

// Check reports whether every binary the sandbox needs (mariadbd,
// mariadb-install-db, sshd) is installed, looking in PATH and in /usr/sbin
// and /usr/bin (often not in a non-root PATH). The error wraps ErrMissing and
// names what is missing, so tests can skip with a useful message.
func Check() error {
	_, err := findBinaries()
	return err
}

type binaries struct {
	mariadbd, installDB, sshd string
}

func findBinaries() (binaries, error) {
	var b binaries
	var missing []string
	for _, x := range []struct {
		name string
		dst  *string
	}{
		{"mariadbd", &b.mariadbd},
		{"mariadb-install-db", &b.installDB},
		{"sshd", &b.sshd},
	} {
		p, ok := lookBin(x.name)
		if !ok {
			missing = append(missing, x.name)
			continue
		}
		*x.dst = p
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("%w (not found in PATH, /usr/sbin or /usr/bin: %s)", ErrMissing, strings.Join(missing, ", "))
	}
	return b, nil
}

// Load reads Dir/sandbox.json, as written by Up, so a later process (the
// `sandbox down` CLI, a test) can address or stop the sandbox. A missing file
// yields an error wrapping fs.ErrNotExist.
func Load(dir string) (*Sandbox, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(abs, stateFile))
	if err != nil {
		return nil, fmt.Errorf("sandbox: load: %w", err)
	}
	var s Sandbox
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("sandbox: load %s: %w", filepath.Join(abs, stateFile), err)
	}
	if s.Dir == "" {
		return nil, fmt.Errorf("sandbox: load %s: no Dir recorded", filepath.Join(abs, stateFile))
	}
	return &s, nil
}

// Down stops the sandbox recorded in dir: Load followed by (*Sandbox).Down.
// It is what `nonqueue sandbox down` calls. If dir has no sandbox.json the
// error wraps fs.ErrNotExist, so callers can treat "nothing to stop" as they
// wish.
func Down(ctx context.Context, dir string) error {
	s, err := Load(dir)
	if err != nil {
		return err
	}
	return s.Down(ctx)
}

// Down stops every recorded process: SIGTERM, a bounded wait (about 30s, or
// until ctx ends) for a clean exit, then SIGKILL. A PID is signalled only
// while /proc/PID/cmdline still contains the sandbox directory, so a PID the
// kernel reused for an unrelated process is never hit. Down is idempotent
// (stopping a stopped sandbox is not an error). It removes sandbox.json once
// everything is gone but keeps datadirs and logs for post-mortems; the next
// Up on the same Dir starts from fresh datadirs.
func (s *Sandbox) Down(ctx context.Context) error {
	if s == nil || s.Dir == "" {
		return errors.New("sandbox: Down on a nil or empty Sandbox")
	}
	if err := stopProcs(ctx, s.Dir, s.procs(), stopTimeout, discardLogger()); err != nil {
		return err
	}
	path := filepath.Join(s.Dir, stateFile)
	// Only remove the state file if it still describes this sandbox: a later
	// Up on the same Dir may have replaced it, and removing that would orphan
	// its processes.
	if cur, err := Load(s.Dir); err == nil && !sameProcs(cur, s) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("sandbox: %w", err)
	}
	return nil
}

// MySQLConfig returns a go-sql-driver config for User/Password over TCP to
// srv (Net "tcp", Addr host:port, ParseTime true, Params nil). It is a fresh
// value each call, so callers can set DBName, timeouts or Params freely.
func (s *Sandbox) MySQLConfig(srv Server) *mysql.Config {
	c := mysql.NewConfig()
	c.User = s.User
	c.Passwd = s.Password
	c.Net = "tcp"
	c.Addr = net.JoinHostPort(srv.Host, strconv.Itoa(srv.Port))
	c.ParseTime = true
	c.Params = nil
	return c
}

// Servers returns the primary followed by the replicas in order, for code
// that treats every server alike (checks, per-server setup). The slice is a
// copy.
func (s *Sandbox) Servers() []Server {
	out := make([]Server, 0, 1+len(s.Replicas))
	out = append(out, s.Primary)
	return append(out, s.Replicas...)
}

// procRef names one recorded process for stopping.
type procRef struct {
	name string
	pid  int
	hard bool // SIGKILL at once (a daemon that never became ready)
}

func (s *Sandbox) procs() []procRef {
	var out []procRef
	for _, srv := range s.Servers() {
		if srv.PID > 0 {
			out = append(out, procRef{name: srv.Name, pid: srv.PID})
		}
	}
	if s.SSH.PID > 0 {
		out = append(out, procRef{name: "sshd", pid: s.SSH.PID})
	}
	if s.Proxy != nil && s.Proxy.PID > 0 {
		out = append(out, procRef{name: "proxy", pid: s.Proxy.PID})
	}
	return out
}

func sameProcs(a, b *Sandbox) bool {
	pa, pb := a.procs(), b.procs()
	if len(pa) != len(pb) {
		return false
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return false
		}
	}
	return true
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// saveState writes s to Dir/sandbox.json atomically with mode 0600 (it holds
// passwords).
func saveState(s *Sandbox) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	path := filepath.Join(s.Dir, stateFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readyPoll is the interval of every readiness poll in the package.
const readyPoll = 75 * time.Millisecond

// TempBase is the directory a throwaway sandbox goes under when the caller
// names none: $TMPDIR if set, else /var/tmp if it takes a file, else the
// system's temporary directory. Not /tmp first: a sandbox's datadirs receive
// every result table's files, and on this project's machines creating a file
// under /tmp is far slower than under /var/tmp, enough to dominate what
// `make bench` and `make demo` show. A production datadir lives on such an
// ordinary filesystem too.
func TempBase() string {
	if d := os.Getenv("TMPDIR"); d != "" {
		return d
	}
	if f, err := os.CreateTemp("/var/tmp", ".nonqueue-probe-"); err == nil {
		f.Close()
		os.Remove(f.Name())
		return "/var/tmp"
	}
	return os.TempDir()
}
