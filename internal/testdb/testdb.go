// Package testdb gives integration tests a real topology and a private
// database on it.
//
// A package's TestMain calls Main, which starts one sandbox (a MariaDB
// primary, GTID replicas and sshd on loopback) for the whole package and
// stops it afterwards; each test then calls Env.New for a database
// nq_<pkg>_<n> of its own that exists on the primary and, once New returns,
// on every replica. Set NONQUEUE_TEST_SANDBOX to the directory of a running
// `nonqueue sandbox up` to reuse it instead of starting one.
//
// Without mariadbd or sshd, tests skip locally with the command that
// installs them, and fail when the CI environment variable is set: a test
// that did not run must not look green in CI.
package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/sandbox"
)

// Env is one package's topology.
type Env struct {
	SB   *sandbox.Sandbox
	pkg  string
	n    atomic.Int64
	skip string // why tests skip, when no topology could be had
}

// Main starts the topology with the given number of replicas, runs the
// tests, stops the topology, and returns the exit code for os.Exit. *env is
// set before the tests run.
func Main(m *testing.M, pkg string, replicas int, env **Env) int {
	e := &Env{pkg: pkg}
	*env = e
	if err := sandbox.Check(); err != nil {
		if os.Getenv("CI") != "" {
			fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
			return 1
		}
		e.skip = err.Error()
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if dir := os.Getenv("NONQUEUE_TEST_SANDBOX"); dir != "" {
		sb, err := sandbox.Load(dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testdb: NONQUEUE_TEST_SANDBOX: %v\n", err)
			return 1
		}
		if len(sb.Replicas) < replicas {
			fmt.Fprintf(os.Stderr, "testdb: sandbox %s has %d replicas, package %s needs %d\n", dir, len(sb.Replicas), pkg, replicas)
			return 1
		}
		e.SB = sb
		if err := e.dropStale(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
			return 1
		}
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "nq-"+pkg+"-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
		return 1
	}
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Replicas: replicas})
	if err != nil {
		fmt.Fprintf(os.Stderr, "testdb: start sandbox: %v (logs kept in %s)\n", err, dir)
		return 1
	}
	e.SB = sb
	code := m.Run()
	dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
	defer dcancel()
	if err := sb.Down(dctx); err != nil {
		fmt.Fprintf(os.Stderr, "testdb: stop sandbox: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "testdb: sandbox logs kept in %s\n", dir)
	}
	return code
}

// Primary returns a connection config for the primary, database db.
func (e *Env) Primary(db string) *mysql.Config {
	mc := e.SB.MySQLConfig(e.SB.Primary)
	mc.DBName = db
	return mc
}

// Replica returns a connection config for replica i (0-based), database db.
func (e *Env) Replica(i int, db string) *mysql.Config {
	mc := e.SB.MySQLConfig(e.SB.Replicas[i])
	mc.DBName = db
	return mc
}

// Open opens a pool for mc and closes it when t ends.
func Open(t testing.TB, mc *mysql.Config) *sql.DB {
	t.Helper()
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	db := sql.OpenDB(conn)
	t.Cleanup(func() { db.Close() })
	return db
}

// New creates an empty database nq_<pkg>_<n> for t on the primary, waits
// until every replica has it, and drops it when t ends. It skips t when
// the topology could not be had outside CI.
func (e *Env) New(t testing.TB) string {
	t.Helper()
	if e.SB == nil {
		t.Skipf("testdb: %s", e.skip)
	}
	name := fmt.Sprintf("nq_%s_%d", e.pkg, e.n.Add(1))
	db := Open(t, e.Primary(""))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name)
	})
	if err := e.WaitReplicas(ctx, db); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return name
}

// WaitReplicas waits until every replica has applied everything the
// primary (reached through primary) has committed so far.
func (e *Env) WaitReplicas(ctx context.Context, primary *sql.DB) error {
	var pos string
	if err := primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("read primary position: %w", err)
	}
	for i, r := range e.SB.Replicas {
		conn, err := mysql.NewConnector(e.SB.MySQLConfig(r))
		if err != nil {
			return err
		}
		db := sql.OpenDB(conn)
		var res sql.NullInt64
		err = db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, 30)", pos).Scan(&res)
		db.Close()
		if err != nil {
			return fmt.Errorf("replica %d: wait for %s: %w", i+1, pos, err)
		}
		if !res.Valid || res.Int64 != 0 {
			return fmt.Errorf("replica %d did not reach %s in 30s", i+1, pos)
		}
	}
	return nil
}

func (e *Env) dropStale(ctx context.Context) error {
	conn, err := mysql.NewConnector(e.SB.MySQLConfig(e.SB.Primary))
	if err != nil {
		return err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	rows, err := db.QueryContext(ctx, "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE ?",
		"nq\\_"+e.pkg+"\\_%")
	if err != nil {
		return fmt.Errorf("list stale test databases: %w", err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		names = append(names, n)
	}
	rows.Close()
	for _, n := range names {
		if strings.ContainsAny(n, "`") {
			continue
		}
		if _, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS `"+n+"`"); err != nil {
			return fmt.Errorf("drop stale %s: %w", n, err)
		}
	}
	return nil
}

// Poll calls cond every 20ms until it returns true or d passes, and
// reports whether it did (cond is tried once more at the deadline). For
// tests that assert on the outcome themselves, including that something
// did not happen.
func Poll(d time.Duration, cond func() bool) bool {
	return poll(d, 20*time.Millisecond, cond)
}

// WaitFor polls cond every 50ms until it holds, and fails the test naming
// what it waited for when d passes first.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, 50*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

func poll(d, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(every)
	}
	return cond()
}

// Tool finds a command tests need (promtool, …), skipping without it with
// the install hint and failing under CI, where a skipped check must not look
// green.
func Tool(t testing.TB, name, debianPackage string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not installed (%v): run `bash .ci/deps` or `apt-get install %s`", name, err, debianPackage)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// Start starts a topology of its own for one test, in a shape the
// package's TestMain does not run (a tiered sandbox, parallel appliers),
// and stops it when t ends (its logs are kept, and named, when t failed).
// opt.Dir is set here. Without mariadbd or sshd it skips t locally and
// fails it under CI, as Main does.
func Start(t testing.TB, pkg string, opt sandbox.Options) *Env {
	t.Helper()
	if err := sandbox.Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("testdb: %v", err)
		}
		t.Skipf("testdb: %v", err)
	}
	dir, err := os.MkdirTemp("", "nq-"+pkg+"-")
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	opt.Dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sb, err := sandbox.Up(ctx, opt)
	if err != nil {
		t.Fatalf("testdb: start sandbox: %v (logs kept in %s)", err, dir)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := sb.Down(ctx); err != nil {
			t.Errorf("testdb: stop sandbox: %v (logs kept in %s)", err, dir)
			return
		}
		if t.Failed() {
			t.Logf("testdb: sandbox logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return &Env{SB: sb, pkg: pkg}
}
