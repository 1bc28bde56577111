package queue_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/queue"
)

// TestRequestTriggerUpgrade: an outdated version of the request trigger
// (as an older nonqueue would have left it) is reported by the schema
// check and replaced by the next schema apply, after the application's.
func TestRequestTriggerUpgrade(t *testing.T) {
	t.Parallel()
	a := newAppTable(t, "mapped", nil, func(b *bundle) {
		if _, err := b.db.ExecContext(b.ctx, "CREATE TRIGGER app_topicfilter_bu BEFORE UPDATE ON TopicFilter FOR EACH ROW SET NEW.name = NEW.name"); err != nil {
			t.Fatal(err)
		}
	})
	tr := a.cfg.RequestTrigger()
	if err := a.q.CheckSchema(a.ctx); err != nil {
		t.Fatalf("schema check: %v", err)
	}
	// An outdated version of ours (as an older nonqueue would have left it)
	// is reported and replaced.
	a.exec(t, "CREATE OR REPLACE TRIGGER `"+tr.Name+"` BEFORE UPDATE ON TopicFilter FOR EACH ROW SET NEW.request_version = NEW.request_version")
	if err := a.q.CheckSchema(a.ctx); !errors.Is(err, queue.ErrTriggerMissing) {
		t.Fatalf("schema check with an outdated trigger: %v, want ErrTriggerMissing", err)
	}
	if err := a.q.ApplySchema(a.ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.q.CheckSchema(a.ctx); err != nil {
		t.Fatalf("schema check after the upgrade: %v", err)
	}
	var names string
	if err := a.db.QueryRowContext(a.ctx, `SELECT GROUP_CONCAT(TRIGGER_NAME ORDER BY ACTION_ORDER) FROM information_schema.TRIGGERS
 WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = 'TopicFilter'`).Scan(&names); err != nil {
		t.Fatal(err)
	}
	if names != "app_topicfilter_bu,"+tr.Name {
		t.Fatalf("triggers after the upgrade: %s", names)
	}
}

// TestRequestTriggerPrivileges: creating the trigger with binary logging on
// needs SUPER (or log_bin_trust_function_creators) and TRIGGER; an
// account without them gets an error that says so, and the schema check
// reports the missing trigger.
func TestRequestTriggerPrivileges(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	var logBin, trust int
	if err := b.db.QueryRowContext(b.ctx, "SELECT @@log_bin, @@log_bin_trust_function_creators").Scan(&logBin, &trust); err != nil {
		t.Fatal(err)
	}
	if logBin != 1 || trust != 0 {
		t.Fatalf("sandbox primary: log_bin %d, log_bin_trust_function_creators %d; the test needs 1 and 0", logBin, trust)
	}
	for _, tc := range []struct {
		name         string
		grants, more string
		code         uint16
	}{
		// Everything on the schema but SUPER: the binary log refuses
		// (checked first).
		{"no SUPER", "ALL PRIVILEGES", "USAGE", 1419},
		// SUPER and what a worker needs, but TRIGGER.
		{"no TRIGGER", "SELECT, INSERT, UPDATE, CREATE, DROP, ALTER, INDEX", "SUPER", 1142},
	} {
		t.Run(tc.name, func(t *testing.T) {
			user := fmt.Sprintf("%s_%d", b.cfg.Schema, tc.code)
			acct := "'" + user + "'@'127.0.0.1'"
			for _, s := range []string{
				"CREATE USER " + acct + " IDENTIFIED BY 'pw'",
				"GRANT " + tc.grants + " ON `" + b.cfg.Schema + "`.* TO " + acct,
				"GRANT " + tc.more + " ON *.* TO " + acct,
			} {
				if _, err := b.db.ExecContext(b.ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() { b.db.ExecContext(context.Background(), "DROP USER IF EXISTS "+acct) })
			mc := env.Primary("")
			mc.User, mc.Passwd = user, "pw"
			cfg := b.cfg
			cfg.Table = "topic_" + strings.ReplaceAll(tc.name, " ", "_")
			q, err := queue.Open(b.ctx, mc, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			err = q.ApplySchema(b.ctx)
			var me *mysql.MySQLError
			if !errors.As(err, &me) || me.Number != tc.code || !strings.Contains(err.Error(), "log_bin_trust_function_creators") || !strings.Contains(err.Error(), "TRIGGER privilege") {
				t.Fatalf("apply schema: %v; want error %d naming the privileges", err, tc.code)
			}
			if err := q.CheckSchema(b.ctx); !errors.Is(err, queue.ErrTriggerMissing) {
				t.Fatalf("schema check without the trigger: %v, want ErrTriggerMissing", err)
			}
		})
	}
}
