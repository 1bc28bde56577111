package flavor

import (
	"strings"
	"testing"
)

// TestSQL pins each flavor's SQL: MariaDB is exercised live by the monitor
// tests; MySQL 8 only here, as golden strings.
func TestSQL(t *testing.T) {
	t.Parallel()
	cases := []struct {
		f                            Flavor
		name, pos, wait, status, iso string
		reached, timedOut            int64
	}{
		{MariaDB{}, "mariadb", "SELECT @@GLOBAL.gtid_binlog_pos", "SELECT MASTER_GTID_WAIT(?, ?)", "SHOW SLAVE STATUS", "tx_isolation", 0, -1},
		{MySQL{}, "mysql", "SELECT @@GLOBAL.gtid_executed", "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)", "SHOW REPLICA STATUS", "transaction_isolation", 0, 1},
	}
	for _, c := range cases {
		if c.f.Name() != c.name || c.f.PrimaryPosQuery() != c.pos || c.f.WaitQuery() != c.wait ||
			c.f.ReplicaStatusQuery() != c.status || c.f.IsolationParam() != c.iso {
			t.Errorf("%s: unexpected SQL", c.name)
		}
		if c.f.PrimaryPosQuery() != "SELECT "+c.f.PrimaryPosExpr() {
			t.Errorf("%s: position query and expression disagree", c.name)
		}
		if ok, err := c.f.WaitReached(c.reached); !ok || err != nil {
			t.Errorf("%s: %d should mean reached", c.name, c.reached)
		}
		if ok, err := c.f.WaitReached(c.timedOut); ok || err != nil {
			t.Errorf("%s: %d should mean timed out", c.name, c.timedOut)
		}
		if _, err := c.f.WaitReached(7); err == nil {
			t.Errorf("%s: 7 accepted", c.name)
		}
	}
	if !strings.Contains(MariaDB{}.ThreadsRunningExpr(), "information_schema.GLOBAL_STATUS") ||
		!strings.Contains(MySQL{}.ThreadsRunningExpr(), "performance_schema.global_status") {
		t.Error("ThreadsRunningExpr: MySQL 8 keeps status variables in performance_schema only")
	}
	if FromVersion("10.11.19-MariaDB-0+deb12u1").Name() != "mariadb" || FromVersion("8.0.36").Name() != "mysql" {
		t.Error("FromVersion")
	}
}

// TestContains: GTID sets compare per domain (MariaDB) or per server uuid
// interval (MySQL) through go-mysql.
func TestContains(t *testing.T) {
	t.Parallel()
	cases := []struct {
		f          Flavor
		have, want string
		ok         bool
	}{
		{MariaDB{}, "0-1000-20", "0-1000-19", true},          // behind position reached
		{MariaDB{}, "0-1000-19", "0-1000-20", false},         // one transaction short
		{MariaDB{}, "0-1000-20,1-1000-5", "1-1000-6", false}, // other domain short
		{MariaDB{}, "0-1000-20", "", true},                   // empty is always reached
		{MySQL{}, "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-20", "3E11FA47-71CA-11E1-9E33-C80AA9429562:5-19", true},
		{MySQL{}, "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-20", "3E11FA47-71CA-11E1-9E33-C80AA9429562:21", false},
	}
	for _, c := range cases {
		ok, err := Contains(c.f, c.have, c.want)
		if err != nil || ok != c.ok {
			t.Errorf("%s: %q contains %q = %v, %v; want %v", c.f.Name(), c.have, c.want, ok, err, c.ok)
		}
	}
	if _, err := Contains(MariaDB{}, "garbage", "0-1-1"); err == nil {
		t.Error("garbage parsed")
	}
}
