package monitor_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/monitor"
)

// TestCheckLocalDomain: a replica with its own GTID domain is safe; one in
// the primary's domain is reported, with what a crash would do under each
// gtid_strict_mode; MySQL is not concerned.
func TestCheckLocalDomain(t *testing.T) {
	b := setup(t, true) // changes the replica's global settings
	msg, err := monitor.CheckLocalDomain(b.ctx, b.flavor, b.primary, b.replica)
	if err != nil || !strings.Contains(msg, "GTID domain 1001, the primary's stream is domain 0") {
		t.Fatalf("own domain: %q, %v", msg, err)
	}
	root := rootReplica(t)
	set := func(q string) {
		t.Helper()
		if _, err := root.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	set("SET GLOBAL gtid_domain_id = 0")
	t.Cleanup(func() {
		for _, q := range []string{"SET GLOBAL gtid_domain_id = 1001", "SET GLOBAL gtid_strict_mode = ON"} {
			if _, err := root.ExecContext(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	for _, c := range []struct{ strict, want string }{
		{"ON", "its replication would stop (error 1950)"},
		{"OFF", "would hold an errant transaction in the primary's domain"},
	} {
		set("SET GLOBAL gtid_strict_mode = " + c.strict)
		_, err := monitor.CheckLocalDomain(b.ctx, b.flavor, b.primary, b.replica)
		if !errors.Is(err, monitor.ErrSharedDomain) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "GTID domain 0") {
			t.Errorf("shared domain, strict mode %s: %v", c.strict, err)
		}
	}
	if msg, err := monitor.CheckLocalDomain(b.ctx, flavor.MySQL{}, b.primary, b.replica); err != nil || !strings.Contains(msg, "not MariaDB") {
		t.Errorf("MySQL: %q, %v", msg, err)
	}
}
