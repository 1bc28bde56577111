package main

import (
	"context"
	"database/sql"
	"fmt"
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

// leastPrivilegeFlow grants the printed block to b's accounts, with the
// privilege drop ("RELOAD ON *.* TO 'x_r'", matched on the statement)
// left out when not empty, and runs everything nonqueue does for real:
// schema apply, request, two worker instances taking three topics to done
// (claim, procedure, export, ship, publish), status, the dashboard and its
// operator actions' statements, and the dashboard's replica read. It
// returns the first failure. With nothing dropped, check runs too and
// must report no privilege problem.
func leastPrivilegeFlow(t *testing.T, b *grantsBundle, drop string) error {
	t.Helper()
	out, err := run(t, "check", "--config", b.cfg, "--grants")
	if err != nil {
		return fmt.Errorf("check --grants: %w\n%s", err, out)
	}
	dropped := false
	for _, s := range grantStatements(t, out) {
		if priv, rest, ok := strings.Cut(drop, " ON "); ok && strings.Contains(s, " ON "+rest) {
			head, tail, _ := strings.Cut(strings.TrimPrefix(s, "GRANT "), " ON ")
			var keep []string
			for _, p := range strings.Split(head, ", ") {
				if p == priv {
					dropped = true
				} else {
					keep = append(keep, p)
				}
			}
			if len(keep) == 0 {
				continue
			}
			s = "GRANT " + strings.Join(keep, ", ") + " ON " + tail
		}
		if _, err := b.root.ExecContext(b.ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if drop != "" && !dropped {
		t.Fatalf("no printed GRANT has %s:\n%s", drop, out)
	}
	if err := env.WaitReplicas(b.ctx, b.root); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "schema", "apply", "--config", b.cfg); err != nil {
		return fmt.Errorf("schema apply: %w\n%s", err, out)
	}
	if drop == "" {
		out, err = run(t, "check", "--config", b.cfg)
		if err != nil || strings.Contains(out, "WARN") || strings.Contains(out, "FAIL") {
			return fmt.Errorf("check with exactly the printed grants: %v\n%s", err, out)
		}
		for _, l := range []string{"ok    privileges on the primary: ", "ok    privileges on the replica: "} {
			if !strings.Contains(out, l) {
				return fmt.Errorf("check printed no %q line:\n%s", l, out)
			}
		}
	}
	if out, err := run(t, "request", "--config", b.cfg, "--create", "1,2,3"); err != nil {
		return fmt.Errorf("request: %w\n%s", err, out)
	}
	w := startWorker(t, b.cfg, "--instances", "2")
	deadline := time.Now().Add(90 * time.Second)
	if drop != "" {
		deadline = time.Now().Add(20 * time.Second) // three topics take about a second here
	}
	for b.count(t, "SELECT COUNT(DISTINCT topic_id) FROM run WHERE outcome = 'done'") < 3 {
		select {
		case err := <-w.done:
			w.done <- err
			return fmt.Errorf("work exited: %v: %s", err, lastLines(w.out.String(), 6))
		default:
		}
		if time.Now().After(deadline) {
			w.cmd.Process.Kill()
			w.wait(t, 10*time.Second)
			return fmt.Errorf("work: topics 1-3 not done in time:\n%s", lastLines(w.out.String(), 6))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A run drops its result tables on the replica once shipped; a failed
	// DROP is only logged.
	rroot := testdb.Open(t, env.Replica(0, b.db))
	for left := 1; left > 0; {
		if err := rroot.QueryRowContext(b.ctx, `SELECT COUNT(*) FROM information_schema.TABLES
 WHERE TABLE_SCHEMA = ? AND (TABLE_NAME LIKE 'R\\_%' OR TABLE_NAME LIKE 'S\\_%')`, b.db).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left > 0 && time.Now().After(deadline) {
			w.cmd.Process.Kill()
			w.wait(t, 10*time.Second)
			return fmt.Errorf("work: %d result tables left on the replica:\n%s", left, lastLines(w.out.String(), 6))
		}
		time.Sleep(50 * time.Millisecond)
	}
	w.cmd.Process.Signal(syscall.SIGTERM)
	if err := w.wait(t, 30*time.Second); err != nil {
		return fmt.Errorf("work: %w\n%s", err, w.out)
	}
	if n := b.count(t, "SELECT COUNT(*) FROM run WHERE outcome <> 'done'"); n != 0 {
		return fmt.Errorf("work: %d runs did not end done:\n%s", n, lastLines(w.out.String(), 6))
	}
	if n := b.count(t, "SELECT n FROM S_3"); n != 10 {
		return fmt.Errorf("work: published S_3 counts %d rows, want 10", n)
	}
	if out, err := run(t, "status", "--config", b.cfg); err != nil {
		return fmt.Errorf("status: %w\n%s", err, out)
	}
	if out, err := run(t, "pause", "--config", b.cfg, "--for", "1h", "--reason", "least privilege"); err != nil {
		return fmt.Errorf("pause: %w\n%s", err, out)
	}
	if out, err := run(t, "resume", "--config", b.cfg, "--all"); err != nil || !strings.Contains(out, "resumed: pause") {
		return fmt.Errorf("resume: %v\n%s", err, out)
	}
	url, _, stop := startDashboard(t, "--config", b.cfg)
	if code, body := httpGet(t, url); code != 200 || strings.Contains(body, "denied") {
		return fmt.Errorf("dashboard overview: %d\n%s", code, body)
	}
	if err := stop(); err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	c, err := LoadConfig(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	pmc, _ := c.Primary.MySQL("primary")
	q, err := queue.Open(b.ctx, pmc, c.Topics)
	if err != nil {
		return fmt.Errorf("open the queue as the dashboard: %w", err)
	}
	defer q.Close()
	if err := q.SetPriority(b.ctx, 1, 7); err != nil {
		return fmt.Errorf("dashboard: set priority: %w", err)
	}
	if err := q.Park(b.ctx, 2, "parked by the least-privilege test"); err != nil {
		return fmt.Errorf("dashboard: park: %w", err)
	}
	if ok, err := q.Unpark(b.ctx, 2); err != nil || !ok {
		return fmt.Errorf("dashboard: unpark: %v %w", ok, err)
	}
	if n := b.count(t, "SELECT priority FROM topic WHERE id = 1"); n != 7 {
		return fmt.Errorf("dashboard: priority %d after the operator's change", n)
	}
	rmc, _ := c.Replica.MySQL("replica")
	rdb := testdb.Open(t, rmc)
	if v := monitor.ReadReplica(b.ctx, "replica1", nil, rdb, c.Topics.MetaSchema, nil); v.Err != "" {
		return fmt.Errorf("dashboard: replica read: %s", v.Err)
	}
	return nil
}

// lastLines returns the first line of s that says access was denied,
// else its last n lines.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for _, x := range l {
		if strings.Contains(x, "denied") {
			return x
		}
	}
	return strings.Join(l[max(len(l)-n, 0):], "\n")
}

// TestLeastPrivilegeGrants: accounts that hold only the GRANTs `nonqueue
// check --grants` prints run everything for real (leastPrivilegeFlow),
// and check reports no privilege problem. Then a privilege beyond the
// block is warned about, and one taken away fails the check.
func TestLeastPrivilegeGrants(t *testing.T) {
	b := setupGrants(t)
	if err := leastPrivilegeFlow(t, b, ""); err != nil {
		t.Fatal(err)
	}
	// More than needed: warned, and named.
	primaryAcct := quoteAccount(b.user+"_p", "127.0.0.1")
	if _, err := b.root.ExecContext(b.ctx, "GRANT SELECT, SUPER ON *.* TO "+primaryAcct); err != nil {
		t.Fatal(err)
	}
	if _, err := b.root.ExecContext(b.ctx, "GRANT DELETE ON "+quoteObject(b.db+".*")+" TO "+primaryAcct); err != nil {
		t.Fatal(err)
	}
	out, _ := run(t, "check", "--config", b.cfg)
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
	out, err := run(t, "check", "--config", b.cfg)
	if err == nil || !strings.Contains(lineWith(out, "FAIL  privileges on the replica: "), "RELOAD ON *.*") {
		t.Errorf("check without RELOAD on the replica: %v\n%s", err, out)
	}
}

// TestEachGrantIsNeeded: the block is least. Without any one of these
// printed privileges the real run fails (check aside, which would name
// it). The list is every privilege of the block that this configuration
// (topic, meta and result tables in one schema) does not grant twice.
func TestEachGrantIsNeeded(t *testing.T) {
	if testing.Short() {
		t.Skip("a full run per privilege")
	}
	for _, drop := range []string{
		"SELECT ON `%s`.* TO '%[1]s_p'", "INSERT ON `%s`.* TO '%[1]s_p'", "UPDATE ON `%s`.* TO '%[1]s_p'",
		"CREATE ON `%s`.* TO '%[1]s_p'", "DROP ON `%s`.* TO '%[1]s_p'", "ALTER ON `%s`.* TO '%[1]s_p'",
		"TRIGGER ON `%s`.`topic` TO '%[1]s_p'", "BINLOG ADMIN ON *.* TO '%[1]s_p'", "SUPER ON *.* TO '%[1]s_p'",
		"EXECUTE ON PROCEDURE `%s`.`calc` TO '%[1]s_r'",
		"SELECT ON `%s`.* TO '%[1]s_r'", "DROP ON `%s`.* TO '%[1]s_r'", "LOCK TABLES ON `%s`.* TO '%[1]s_r'",
		"RELOAD ON *.* TO '%[1]s_r'", "BINLOG ADMIN ON *.* TO '%[1]s_r'", "SLAVE MONITOR ON *.* TO '%[1]s_r'",
	} {
		t.Run(strings.NewReplacer("`", "", "'", "", "%[1]s", "", "%s", "").Replace(drop), func(t *testing.T) {
			b := setupGrants(t)
			if strings.HasPrefix(drop, "BINLOG ADMIN ON *.* TO '%[1]s_p'") {
				// With binary logging on and log_bin_trust_function_creators
				// off, the block holds SUPER for schema apply, which also
				// allows sql_log_bin=0: turn it on, so the block has no
				// SUPER, to show that workers need BINLOG ADMIN.
				if _, err := b.root.ExecContext(b.ctx, "SET GLOBAL log_bin_trust_function_creators = 1"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.root.ExecContext(context.Background(), "SET GLOBAL log_bin_trust_function_creators = 0") })
				if out, _ := run(t, "check", "--config", b.cfg, "--grants"); strings.Contains(out, "SUPER") {
					t.Fatalf("the block asks for SUPER with log_bin_trust_function_creators on:\n%s", out)
				}
			}
			d := strings.ReplaceAll(drop, "%[1]s", b.db)
			d = strings.ReplaceAll(d, "%s", b.db)
			err := leastPrivilegeFlow(t, b, d)
			if err == nil {
				t.Fatalf("everything ran without %s: it is not needed", d)
			}
			t.Logf("without %s: %s", d, lastLines(err.Error(), 3))
		})
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

// TestParseGrant reads the SHOW GRANTS forms MariaDB writes: column
// privileges count as the table's, and what is not a privilege (a role,
// PROXY, GRANT OPTION) is kept for the warning.
func TestParseGrant(t *testing.T) {
	for _, tc := range []struct {
		line, privs, other string
	}{
		{"GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'", "", ""},
		{"GRANT RELOAD, BINLOG ADMIN, SLAVE MONITOR ON *.* TO `u`@`%`", "*.*:RELOAD *.*:BINLOG ADMIN *.*:SLAVE MONITOR", ""},
		{"GRANT SELECT (`a`, `b`), UPDATE (`c`) ON `db`.`t` TO `u`@`h`", "db.t:SELECT db.t:UPDATE", ""},
		{"GRANT EXECUTE ON PROCEDURE `db`.`calc` TO `u`@`h`", "PROCEDURE db.calc:EXECUTE", ""},
		{"GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION", "*.*:ALL PRIVILEGES", "WITH GRANT OPTION ON *.*"},
		{"GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION", "", "PROXY ON ''@'%'"},
		{"GRANT `ops` TO `u`@`h`", "", "role ops"},
	} {
		privs, other := parseGrant(tc.line)
		var got []string
		for _, p := range privs {
			got = append(got, p.object+":"+p.priv)
		}
		if strings.Join(got, " ") != tc.privs || strings.ReplaceAll(other, "`", "") != tc.other {
			t.Errorf("%s: %q %q, want %q %q", tc.line, got, other, tc.privs, tc.other)
		}
	}
	if !covers([]privilege{{"db.*", "EXECUTE"}}, privilege{"PROCEDURE db.calc", "EXECUTE"}) ||
		covers([]privilege{{"db.*", "SELECT"}}, privilege{"other.t", "SELECT"}) ||
		!covers([]privilege{{"*.*", "ALL PRIVILEGES"}}, privilege{"db.t", "TRIGGER"}) {
		t.Error("covers")
	}
}
