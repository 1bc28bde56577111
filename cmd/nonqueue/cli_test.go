package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
)

func newTestLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	err := Run(ctx, args, &out, &errb)
	return out.String() + errb.String(), err
}

func requireSandbox(t *testing.T) {
	t.Helper()
	if err := sandbox.Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

// TestCLI drives the commands a user runs, on a real sandbox: up, schema
// print and apply, request in its three forms, down, and up/down again in
// the same directory.
func TestCLI(t *testing.T) {
	requireSandbox(t)
	dir := t.TempDir()
	out, err := run(t, "sandbox", "up", "--dir", dir, "--replicas", "1")
	if err != nil {
		t.Fatalf("sandbox up: %v\n%s", err, out)
	}
	t.Cleanup(func() { sandbox.Down(context.Background(), dir) })
	cfgPath := filepath.Join(dir, "nonqueue.toml")
	if !strings.Contains(out, cfgPath) {
		t.Fatalf("sandbox up did not name its config:\n%s", out)
	}
	if fi, err := os.Stat(cfgPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("config %s: %v %v", cfgPath, fi.Mode(), err)
	}
	if _, err := run(t, "sandbox", "up", "--dir", dir); err == nil {
		t.Fatal("a second sandbox up on a running dir succeeded")
	}

	out, err = run(t, "schema", "print", "--config", cfgPath)
	if err != nil || out != (queue.Config{}).WithDefaults().Script() {
		t.Fatalf("schema print with the sandbox config: %v\n%s", err, out)
	}
	for range 2 {
		if out, err := run(t, "schema", "apply", "--config", cfgPath); err != nil {
			t.Fatalf("schema apply: %v\n%s", err, out)
		}
	}

	c, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	mc, _ := c.Primary.MySQL("primary")
	db := openDB(t, mc)
	if out, err := run(t, "request", "--config", cfgPath, "--create", "--priority", "5", "--scope", "partial", "1,2", "3"); err != nil {
		t.Fatalf("request: %v\n%s", err, out)
	}
	if out, err := run(t, "request", "--config", cfgPath, "--query", "SELECT id FROM nonqueue.topic WHERE id >= 2", "--after", "1h"); err != nil || !strings.Contains(out, "requested 2 topics (scope full)") {
		t.Fatalf("request --query: %v\n%s", err, out)
	}
	var got string
	err = db.QueryRow("SELECT GROUP_CONCAT(CONCAT(id, ':', required, ':', priority, ':', due > NOW(6)) ORDER BY id) FROM nonqueue.topic").Scan(&got)
	if err != nil || got != "1:1:5:0,2:2:5:0,3:2:5:0" {
		t.Fatalf("topics after requests: %q %v", got, err)
	}
	out, err = run(t, "request", "--config", cfgPath, "99")
	if err == nil || !strings.Contains(err.Error(), "99") {
		t.Fatalf("request of a missing id: %v\n%s", err, out)
	}
	if _, err := run(t, "request", "--config", cfgPath, "--scope", "huge", "1"); err == nil {
		t.Fatal("bad scope accepted")
	}

	sb, err := sandbox.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "sandbox", "down", "--dir", dir); err != nil {
		t.Fatalf("sandbox down: %v\n%s", err, out)
	}
	pids := []int{sb.SSH.PID}
	for _, s := range sb.Servers() {
		pids = append(pids, s.PID)
	}
	// Down returns once each process has let go of its memory; the last
	// instants of its exit (and the reaping of a child of this test) may
	// lag behind by a little.
	for _, pid := range pids {
		deadline := time.Now().Add(5 * time.Second)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("pid %d still alive 5s after sandbox down", pid)
		}
	}
	// Twice in a row, same directory.
	if out, err := run(t, "sandbox", "up", "--dir", dir, "--replicas", "1"); err != nil {
		t.Fatalf("second sandbox up: %v\n%s", err, out)
	}
	if out, err := run(t, "sandbox", "down", "--dir", dir); err != nil {
		t.Fatalf("second sandbox down: %v\n%s", err, out)
	}
}

func TestCLIErrors(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"nope"},
		{"schema"},
		{"schema", "apply"},
		{"request", "1"},
		{"sandbox", "up"},
		{"sandbox", "up", "--dir", t.TempDir(), "--replicas", "12"},
		{"sandbox", "up", "--dir", t.TempDir(), "--replicas", "5", "--tiers", "2"},
		{"sandbox", "up", "--dir", t.TempDir(), "--parallel", "-1"},
		{"demo", "--dir", t.TempDir(), "--tiers", "0"},
		{"request", "--config", "/nonexistent/nq.toml", "1"},
	} {
		if out, err := run(t, args...); err == nil {
			t.Errorf("%v succeeded:\n%s", args, out)
		}
	}
}

func openDB(t *testing.T, mc *mysql.Config) *sql.DB {
	t.Helper()
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	t.Cleanup(func() { db.Close() })
	if err := db.Ping(); err != nil {
		t.Fatal(fmt.Errorf("connect: %w", err))
	}
	return db
}

// alive: the process exists and is not a zombie waiting to be reaped.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) STATE ...; comm may hold spaces, so split after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
