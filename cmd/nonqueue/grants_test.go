package main

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// grantStatements returns the statements of check's GRANT block, without
// its comments; it fails the test when the block is missing.
func grantStatements(t *testing.T, out string) []string {
	t.Helper()
	_, rest, ok := strings.Cut(out, grantsBegin+"\n")
	block, _, ok2 := strings.Cut(rest, grantsEnd)
	if !ok || !ok2 {
		t.Fatalf("no GRANT block in:\n%s", out)
	}
	var stmts []string
	for _, l := range strings.Split(block, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "--") {
			stmts = append(stmts, strings.TrimSuffix(l, ";"))
		}
	}
	return stmts
}

// grantsBundle is a topic schema with the calc procedure and two fresh
// accounts that hold no privilege yet: user+"_p" for the primary (worker,
// schema apply, request, dashboard) and user+"_r" for the replica.
type grantsBundle struct {
	*workBundle
	user, cfg string
	root      *sql.DB // the primary, as the sandbox's administrator
}

func setupGrants(t *testing.T) *grantsBundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	p := testdb.Open(t, env.Primary(name))
	if err := testdb.InstallCalc(ctx, p); err != nil {
		t.Fatal(err)
	}
	b := &grantsBundle{workBundle: &workBundle{db: name, primary: p, ctx: ctx, dir: t.TempDir()}, user: name, root: p}
	for _, u := range []string{name + "_p", name + "_r"} {
		acct := quoteAccount(u, "127.0.0.1")
		// Created on the primary: the account replicates to the replicas.
		if _, err := p.ExecContext(ctx, "CREATE USER "+acct+" IDENTIFIED BY 'pw-"+u+"'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.ExecContext(context.Background(), "DROP USER IF EXISTS "+acct) })
	}
	for id := 1; id <= 3; id++ {
		for k := 1; k <= 10; k++ {
			if _, err := p.ExecContext(ctx, "INSERT INTO src VALUES (?, ?, ?)", id, k, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	// The worker configuration of replica 1, with the two accounts.
	body, err := os.ReadFile(b.config(t, 0, ""))
	if err != nil {
		t.Fatal(err)
	}
	text := string(body)
	cred := "user = \"" + env.SB.User + "\"\npassword = \"" + env.SB.Password + "\""
	for _, u := range []string{name + "_p", name + "_r"} {
		if !strings.Contains(text, cred) {
			t.Fatalf("the worker configuration has no %q to replace:\n%s", cred, text)
		}
		text = strings.Replace(text, cred, "user = \""+u+"\"\npassword = \"pw-"+u+"\"", 1)
	}
	text += "[dashboard]\nlisten = \"127.0.0.1:0\"\n"
	b.cfg = filepath.Join(b.dir, "least.toml")
	if err := os.WriteFile(b.cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLeastPrivilegeGrants: accounts that hold only the GRANTs `nonqueue
// check --grants` prints run everything for real — schema apply, check
// (with no privilege warning), request, two worker instances taking three
// topics to done (claim, procedure, export, ship, publish), status, the
// dashboard and its operator actions, and the dashboard's replica read.
// Then a privilege beyond the block is warned about, and one taken away
// fails the check.
func TestLeastPrivilegeGrants(t *testing.T) {
	b := setupGrants(t)
	out, err := run(t, "check", "--config", b.cfg, "--grants")
	if err != nil {
		t.Fatalf("check --grants: %v\n%s", err, out)
	}
	t.Logf("check --grants:\n%s", out)
	stmts := grantStatements(t, out)
	for _, acct := range []string{quoteAccount(b.user+"_p", "127.0.0.1"), quoteAccount(b.user+"_r", "127.0.0.1")} {
		if !strings.Contains(out, "TO "+acct+";") {
			t.Fatalf("no GRANT for %s", acct)
		}
	}
	for _, s := range stmts {
		if _, err := b.root.ExecContext(b.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := env.WaitReplicas(b.ctx, b.root); err != nil {
		t.Fatal(err)
	}

	if out, err := run(t, "schema", "apply", "--config", b.cfg); err != nil {
		t.Fatalf("schema apply with the printed grants: %v\n%s", err, out)
	}
	out, err = run(t, "check", "--config", b.cfg)
	if err != nil || strings.Contains(out, "WARN") || strings.Contains(out, "FAIL") {
		t.Fatalf("check with exactly the printed grants: %v\n%s", err, out)
	}
	for _, l := range []string{"ok    privileges on the primary: ", "ok    privileges on the replica: "} {
		if !strings.Contains(out, l) {
			t.Fatalf("check printed no %q line:\n%s", l, out)
		}
	}
	t.Logf("check:\n%s", out)
	if out, err := run(t, "request", "--config", b.cfg, "--create", "1,2,3"); err != nil {
		t.Fatalf("request: %v\n%s", err, out)
	}
	w := startWorker(t, b.cfg, "--instances", "2")
	waitUntil(t, 90*time.Second, "topics 1-3 done by the least-privileged worker", func() bool {
		return b.count(t, "SELECT COUNT(DISTINCT topic_id) FROM run WHERE outcome = 'done'") == 3
	})
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Fatalf("worker: %v\n%s", err, w.out)
	}
	t.Logf("worker:\n%s", w.out)
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome <> 'done'"); n != 0 {
		t.Errorf("%d runs did not end done", n)
	}
	if n := b.count(t, "SELECT n FROM S_3"); n != 10 {
		t.Errorf("published S_3 counts %d rows, want 10", n)
	}
	if out, err := run(t, "status", "--config", b.cfg); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}

	// The dashboard: its pages, then the operator actions' statements with
	// the dashboard's account ([primary]) and its replica read ([replica]).
	url, _, stop := startDashboard(t, "--config", b.cfg)
	if code, body := httpGet(t, url); code != 200 || strings.Contains(body, "denied") {
		t.Fatalf("dashboard overview: %d\n%s", code, body)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	pmc, _ := c.Primary.MySQL("primary")
	q, err := queue.Open(b.ctx, pmc, c.Topics)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.SetPriority(b.ctx, 1, 7); err != nil {
		t.Fatalf("set priority: %v", err)
	}
	if err := q.Park(b.ctx, 2, "parked by the least-privilege test"); err != nil {
		t.Fatalf("park: %v", err)
	}
	if ok, err := q.Unpark(b.ctx, 2); err != nil || !ok {
		t.Fatalf("unpark: %v %v", ok, err)
	}
	if n := b.count(t, "SELECT priority FROM topic WHERE id = 1"); n != 7 {
		t.Errorf("priority %d after the operator's change", n)
	}
	rmc, _ := c.Replica.MySQL("replica")
	rdb := testdb.Open(t, rmc)
	if v := monitor.ReadReplica(b.ctx, "replica1", nil, rdb, c.Topics.MetaSchema, nil); v.Err != "" {
		t.Fatalf("the dashboard's replica read: %s", v.Err)
	}

	// More than needed: warned, and named.
	primaryAcct := quoteAccount(b.user+"_p", "127.0.0.1")
	if _, err := b.root.ExecContext(b.ctx, "GRANT SELECT, SUPER ON *.* TO "+primaryAcct); err != nil {
		t.Fatal(err)
	}
	if _, err := b.root.ExecContext(b.ctx, "GRANT DELETE ON "+quoteObject(b.db+".*")+" TO "+primaryAcct); err != nil {
		t.Fatal(err)
	}
	out, _ = run(t, "check", "--config", b.cfg)
	warn := lineWith(out, "WARN  privileges on the primary: ")
	for _, s := range []string{"global SELECT ON *.*", "DELETE ON `" + b.db + "`.*"} {
		if !strings.Contains(warn, s) {
			t.Errorf("check did not warn about %s:\n%s", s, out)
		}
	}
	// One needed privilege less: a failure that names it.
	if _, err := b.root.ExecContext(b.ctx, "REVOKE RELOAD ON *.* FROM "+quoteAccount(b.user+"_r", "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(b.ctx, b.root); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "check", "--config", b.cfg)
	if err == nil || !strings.Contains(lineWith(out, "FAIL  privileges on the replica: "), "RELOAD ON *.*") {
		t.Errorf("check without RELOAD on the replica: %v\n%s", err, out)
	}
}

// TestGrantsWarnAllPrivileges: the sandbox's administrator account (ALL
// PRIVILEGES WITH GRANT OPTION) passes the privilege checks with a
// warning on each server, and the GRANT block still lists the least.
func TestGrantsWarnAllPrivileges(t *testing.T) {
	b := setupWork(t)
	out, err := run(t, "check", "--config", b.config(t, 0, ""))
	if err != nil {
		t.Fatalf("check: %v\n%s", err, out)
	}
	for _, server := range []string{"primary", "replica"} {
		l := lineWith(out, "WARN  privileges on the "+server+": ")
		if !strings.Contains(l, "ALL PRIVILEGES ON *.*") || !strings.Contains(l, "WITH GRANT OPTION") {
			t.Errorf("no warning about ALL PRIVILEGES on the %s:\n%s", server, out)
		}
	}
	if s := grantStatements(t, out); len(s) < 3 || strings.Contains(strings.Join(s, "\n"), "ALL PRIVILEGES") {
		t.Errorf("GRANT block: %q", s)
	}
}

// lineWith returns the first line of out that starts with prefix.
func lineWith(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}
