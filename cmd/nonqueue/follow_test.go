package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
)

// freePort returns a loopback address nothing listens on (just now).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestFollowCommand: `nonqueue follow` as a user runs it. check passes on
// a follower-only configuration and asks for REPLICATION SLAVE; the
// follower requests the topics of rows inserted on the primary (full scope,
// as configured); status and the metrics endpoint show it; it stops on
// cancel. Then check names a followed table that does not exist, and a
// binlog_row_image that leaves the topic column out.
func TestFollowCommand(t *testing.T) {
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	p := testdb.Open(t, env.Primary(name))
	for _, s := range []string{
		"CREATE TABLE post (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NOT NULL) ENGINE=InnoDB",
		"INSERT INTO topic (id) VALUES (1), (2), (3), (4), (5)",
	} {
		if _, err := p.ExecContext(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	followTOML := fmt.Sprintf(`[follower]
name = "cli"
flush_interval = "100ms"
[[follow]]
table = "%s.post"
topic_column = "topic"
after = "0s"
`, name)
	cfg := filepath.Join(dir, "follow.toml")
	if err := os.WriteFile(cfg, []byte(serversTOML(0, name)+followTOML), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := run(t, "check", "--config", cfg)
	for _, want := range []string{"ok    binlog follower: the replica's binary log: binlog on, ROW format, row image FULL, row metadata FULL",
		"ok    binlog follower: followed tables: " + name + ".post.topic", "ok    binlog follower: position on the primary", "REPLICATION SLAVE"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL  binlog") || strings.Contains(out, "FAIL  configuration") {
		t.Errorf("check failed for the follower: %v\n%s", err, out)
	}

	metricsAddr := freePort(t)
	fctx, fcancel := context.WithCancel(ctx)
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- Run(fctx, []string{"follow", "--config", cfg, "--metrics-listen", metricsAddr}, &stdout, &stderr)
	}()
	t.Cleanup(func() {
		fcancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	})
	// Active, and its first position saved: later changes are followed.
	testdb.WaitFor(t, 30*time.Second, "follower active", func() bool {
		fr, err := q.Followers(ctx)
		return err == nil && len(fr) == 1 && fr[0].Active && fr[0].Pos != ""
	})
	if _, err := p.ExecContext(ctx, "INSERT INTO post (topic) VALUES (2), (4), (4)"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 30*time.Second, "topics 2 and 4 requested", func() bool {
		var n int
		err := p.QueryRowContext(ctx, "SELECT COUNT(*) FROM topic WHERE request_version > 0 AND required = 2").Scan(&n)
		return err == nil && n == 2
	})
	var others int
	if err := p.QueryRowContext(ctx, "SELECT COUNT(*) FROM topic WHERE request_version > 0 AND id NOT IN (2, 4)").Scan(&others); err != nil || others != 0 {
		t.Errorf("%d other topics requested (%v): want only 2 and 4", others, err)
	}

	statusRE := regexp.MustCompile(`(?m)^cli\s+active\s+\S+ \(pid \d+\)\s+replica 127\.0\.0\.1:\d+\s+0-\d+-\d+\s.*\s3\s+2\s+\S+$`)
	var status string
	if !testdb.Poll(15*time.Second, func() bool {
		status, _ = run(t, "status", "--config", cfg)
		return statusRE.MatchString(status)
	}) {
		t.Errorf("status does not show the follower cli, active, with 2 requests:\n%s", status)
	}
	body, _ := scrape(t, "http://"+metricsAddr+"/metrics")
	for _, m := range []string{`nonqueue_follow_events_total{follower="cli"} 3`, `nonqueue_follow_requests_total{follower="cli"} 2`,
		`nonqueue_follow_active{follower="cli"} 1`, `nonqueue_follow_delay_seconds{follower="cli"}`} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %q:\n%s", m, grepLines(body, "nonqueue_follow"))
		}
	}
	fcancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow returned %v on cancel: want nil\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("follow did not stop on cancel")
	}

	// A table that does not exist, and a row image without the column.
	bad := filepath.Join(dir, "bad.toml")
	badTOML := strings.Replace(followTOML, name+".post", name+".nosuch", 1)
	if err := os.WriteFile(bad, []byte(serversTOML(0, name)+badTOML), 0o600); err != nil {
		t.Fatal(err)
	}
	root := testdb.Open(t, env.Replica(0, ""))
	if _, err := root.ExecContext(ctx, "SET GLOBAL binlog_row_image = 'MINIMAL'"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.ExecContext(context.Background(), "SET GLOBAL binlog_row_image = 'FULL'") })
	out, err = run(t, "check", "--config", bad)
	if err == nil {
		t.Errorf("check passed with a missing table and binlog_row_image MINIMAL:\n%s", out)
	}
	for _, want := range []string{"FAIL  binlog follower: followed tables: follow[0].table " + name + ".nosuch does not exist on the replica",
		"FAIL  binlog follower: the replica's binary log: binlog_row_image is MINIMAL"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n") + "\n(" + strconv.Itoa(len(out)) + " lines)"
}

// TestFollowGrants: accounts holding only the GRANTs `check --grants`
// prints for a follower-only configuration run schema apply, check (no
// failure, no warning) and the follower, which requests the topic of a new
// row. Without REPLICATION SLAVE on the source the follower requests
// nothing and check names the privilege; without SELECT on the followed
// table check cannot see it.
func TestFollowGrants(t *testing.T) {
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	root := testdb.Open(t, env.Primary(name))
	for _, s := range []string{
		"CREATE TABLE post (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NOT NULL) ENGINE=InnoDB",
	} {
		if _, err := root.ExecContext(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	users := []string{name + "_fp", name + "_fr"}
	for _, u := range users {
		acct := quoteAccount(u, "127.0.0.1")
		if _, err := root.ExecContext(ctx, "CREATE USER "+acct+" IDENTIFIED BY 'pw-"+u+"'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { root.ExecContext(context.Background(), "DROP USER IF EXISTS "+acct) })
	}
	text := serversTOML(0, name) + fmt.Sprintf("[follower]\nname = \"grants\"\nflush_interval = \"100ms\"\n[[follow]]\ntable = \"%s.post\"\ntopic_column = \"topic\"\nafter = \"0s\"\n", name)
	cred := "user = \"" + env.SB.User + "\"\npassword = \"" + env.SB.Password + "\""
	for _, u := range users {
		text = strings.Replace(text, cred, "user = \""+u+"\"\npassword = \"pw-"+u+"\"", 1)
	}
	// The accounts must have reached the replica before check probes it.
	if err := env.WaitReplicas(ctx, root); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "least.toml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "check", "--config", cfg, "--grants")
	if err != nil {
		t.Fatalf("check --grants: %v\n%s", err, out)
	}
	replAcct := quoteAccount(users[1], "127.0.0.1")
	if !strings.Contains(out, "GRANT REPLICATION SLAVE ON *.* TO "+replAcct) {
		t.Errorf("the block does not give the source account REPLICATION SLAVE:\n%s", out)
	}
	for _, s := range grantStatements(t, out) {
		if _, err := root.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := env.WaitReplicas(ctx, root); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, "schema", "apply", "--config", cfg); err != nil {
		t.Fatalf("schema apply: %v\n%s", err, out)
	}
	if _, err := root.ExecContext(ctx, "INSERT INTO topic (id) VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, "check", "--config", cfg)
	if err != nil || strings.Contains(out, "WARN") || strings.Contains(out, "FAIL") {
		t.Errorf("check with exactly the printed grants: %v\n%s", err, out)
	}
	// follows runs the follower until topic requested, or d passes; it
	// reports whether the topic was requested.
	follows := func(topic int, d time.Duration) (bool, string) {
		fctx, fcancel := context.WithCancel(ctx)
		var stdout, stderr syncBuffer
		done := make(chan error, 1)
		go func() { done <- Run(fctx, []string{"follow", "--config", cfg}, &stdout, &stderr) }()
		defer func() { fcancel(); <-done }()
		// The follower starts at the source's position: write once it
		// has saved one.
		if !testdb.Poll(30*time.Second, func() bool {
			var n int
			err := root.QueryRowContext(ctx, "SELECT COUNT(*) FROM follow WHERE gtid_pos <> '' AND name = 'grants'").Scan(&n)
			return err == nil && n == 1
		}) {
			return false, stderr.String()
		}
		if _, err := root.ExecContext(ctx, "INSERT INTO post (topic) VALUES (?)", topic); err != nil {
			t.Fatal(err)
		}
		ok := testdb.Poll(d, func() bool {
			var n int
			err := root.QueryRowContext(ctx, "SELECT COUNT(*) FROM topic WHERE id = ? AND request_version > 0", topic).Scan(&n)
			return err == nil && n == 1
		})
		return ok, stderr.String()
	}
	if ok, log := follows(1, 30*time.Second); !ok {
		t.Fatalf("the follower with the printed grants did not request topic 1:\n%s", log)
	}
	if _, err := root.ExecContext(ctx, "REVOKE REPLICATION SLAVE ON *.* FROM "+replAcct); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, root); err != nil {
		t.Fatal(err)
	}
	if ok, log := follows(2, 8*time.Second); ok {
		t.Errorf("the follower requested topic 2 without REPLICATION SLAVE: it is not needed\n%s", log)
	} else if !strings.Contains(log, "REPLICATION SLAVE") && !strings.Contains(log, "denied") {
		t.Logf("follower log without REPLICATION SLAVE:\n%s", lastLines(log, 5))
	}
	out, err = run(t, "check", "--config", cfg)
	if err == nil || !strings.Contains(lineWith(out, "FAIL  privileges on the replica: "), "REPLICATION SLAVE ON *.*") {
		t.Errorf("check without REPLICATION SLAVE: %v\n%s", err, out)
	}
	if _, err := root.ExecContext(ctx, "REVOKE SELECT ON "+quoteObject(name+".post")+" FROM "+replAcct); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, root); err != nil {
		t.Fatal(err)
	}
	out, _ = run(t, "check", "--config", cfg)
	if !strings.Contains(out, "FAIL  binlog follower: followed tables: follow[0].table "+name+".post does not exist on the replica (or the account may not read it)") {
		t.Errorf("check without SELECT on the followed table:\n%s", out)
	}
}
