package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// fullTextTopicFilter creates the application's TopicFilter with a
// full-text index on its name, rows rows, in a database of its own, and
// returns the database, a pool on it and a configuration mapping it.
// MariaDB cannot add columns to such a table instantly: it rebuilds it,
// and not with LOCK=NONE.
func fullTextTopicFilter(t *testing.T, rows int) (string, *sql.DB, string) {
	t.Helper()
	name := env.New(t)
	db := testdb.Open(t, env.Primary(name))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, stmt := range []string{`CREATE TABLE TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1,
  FULLTEXT KEY name (name)) ENGINE=InnoDB`,
		fmt.Sprintf(`INSERT INTO TopicFilter SELECT seq, CONCAT('topic ', seq), seq %% 3, NOW() - INTERVAL seq %% 1000 MINUTE, seq %% 10, 0, 1
 FROM seq_1_to_%d`, rows),
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	body := serversTOML(0, name) + `table = "TopicFilter"
mapped = true
[topics.columns]
id = "topicFilterId"
required = "influencerRecalcReqd"
due = "influencerRecalcDate"
priority = "influencerPriority"
running = "influencerRunning"
`
	path := filepath.Join(t.TempDir(), "nonqueue.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return name, db, path
}

func columnCount(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?", table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSchemaApplyRefusesBlocking: on a table where MariaDB has no online
// path, schema apply changes nothing, prints the plan with the table's
// size and exits non-zero; with --allow-blocking it makes the change, and
// a second apply is a quiet no-op.
func TestSchemaApplyRefusesBlocking(t *testing.T) {
	t.Parallel()
	_, db, path := fullTextTopicFilter(t, 20000)

	out, err := run(t, "schema", "apply", "--config", path)
	if err == nil {
		t.Fatalf("schema apply rebuilt a table with no online path without --allow-blocking:\n%s", out)
	}
	if !strings.Contains(err.Error(), "no online path") {
		t.Fatalf("schema apply: %v, want a refusal for want of an online path\n%s", err, out)
	}
	t.Logf("schema apply refused:\n%s", out)
	for _, want := range []string{"table `", "`.`TopicFilter`: InnoDB", "rows,", "MiB data", "ALGORITHM=INSTANT refused: ",
		"not tried: it needs the statement before it", "ADD INDEX IF NOT EXISTS nq_claim", "--allow-blocking", "pt-online-schema-change"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal does not say %q", want)
		}
	}
	if n := columnCount(t, db, "TopicFilter"); n != 7 {
		t.Fatalf("the refused apply changed TopicFilter: %d columns, want the 7 original", n)
	}

	out, err = run(t, "schema", "apply", "--config", path, "--allow-blocking")
	if err != nil {
		t.Fatalf("schema apply --allow-blocking: %v\n%s", err, out)
	}
	if !strings.Contains(out, "ran without an online path (--allow-blocking)") || !strings.Contains(out, "; ran in its plain form") {
		t.Errorf("schema apply --allow-blocking does not say what ran blocking:\n%s", out)
	}
	if n := columnCount(t, db, "TopicFilter"); n != 18 {
		t.Fatalf("TopicFilter has %d columns after apply --allow-blocking, want 18", n)
	}
	out, err = run(t, "schema", "apply", "--config", path)
	if err != nil || strings.Contains(out, "ran without") {
		t.Fatalf("second schema apply: %v\n%s", err, out)
	}
	if _, err := run(t, "schema", "apply", "--config", path, "--lock-wait", "10ms"); err == nil {
		t.Error("--lock-wait 10ms accepted")
	}
}

// TestSchemaPrintTools: the pt-online-schema-change command schema print
// gives makes the change on a table with no online path, after which
// schema apply has nothing left to do, and the printed script pipes into
// the mariadb client.
func TestSchemaPrintTools(t *testing.T) {
	t.Parallel()
	ptosc, err := exec.LookPath("pt-online-schema-change")
	if err != nil {
		t.Skipf("percona-toolkit not installed: %v", err)
	}
	name, db, path := fullTextTopicFilter(t, 2000)
	script, err := run(t, "schema", "print", "--config", path)
	if err != nil {
		t.Fatalf("schema print: %v\n%s", err, script)
	}
	var cmd []string
	inCmd := false
	for _, line := range strings.Split(script, "\n") {
		if strings.HasPrefix(line, "-- gh-ost ") {
			if !strings.Contains(script, "--alter='ADD COLUMN IF NOT EXISTS `claim_token`") {
				t.Errorf("gh-ost command has no alter")
			}
		}
		if strings.HasPrefix(line, "-- pt-online-schema-change ") {
			inCmd = true
		}
		if inCmd {
			cmd = append(cmd, strings.TrimPrefix(line, "-- "))
			if !strings.HasSuffix(line, "\\") {
				break
			}
		}
	}
	if len(cmd) == 0 || !strings.Contains(script, "-- gh-ost ") {
		t.Fatalf("schema print of a mapped table gives no gh-ost and pt-online-schema-change commands:\n%s", script)
	}
	sb := env.SB
	shell := strings.Join(cmd, "\n")
	shell = strings.NewReplacer("pt-online-schema-change --ask-pass", ptosc+" --recursion-method=none",
		"h=PRIMARY,P=3306,u=USER,", fmt.Sprintf("h=127.0.0.1,P=%d,u=%s,", sb.Primary.Port, sb.User)).Replace(shell)
	c := exec.Command("sh", "-c", shell)
	// The password travels in the environment, not on a command line.
	c.Env = append(os.Environ(), "MYSQL_PWD="+sb.Password)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("printed pt-online-schema-change command: %v\n%s", err, out)
	}
	if n := columnCount(t, db, "TopicFilter"); n != 18 {
		t.Fatalf("TopicFilter has %d columns after pt-online-schema-change, want 18", n)
	}
	if out, err := run(t, "schema", "apply", "--config", path); err != nil || strings.Contains(out, "ran without") {
		t.Fatalf("schema apply after pt-online-schema-change: %v\n%s", err, out)
	}

	// The whole script, comments and all, through the mariadb client.
	client := exec.Command("mariadb", "--no-defaults", "-h127.0.0.1", fmt.Sprintf("-P%d", sb.Primary.Port), "-u"+sb.User, name)
	client.Env = append(os.Environ(), "MYSQL_PWD="+sb.Password)
	client.Stdin = strings.NewReader(script)
	if out, err := client.CombinedOutput(); err != nil {
		t.Fatalf("schema print | mariadb: %v\n%s", err, out)
	}
}
