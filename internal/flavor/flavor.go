// Package flavor holds every SQL difference between MariaDB and MySQL 8
// that nonqueue depends on, behind one interface picked once from
// VERSION(). Nothing else in nonqueue tests a version string.
//
// MariaDB is the tested target; MySQL 8 is kept as golden strings in the
// tests, since it cannot be installed on the project's machines.
package flavor

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
)

// Flavor returns the flavor-specific SQL nonqueue runs.
type Flavor interface {
	// Name is the go-mysql flavor name ("mariadb" or "mysql"), for
	// gomysql.ParseGTIDSet.
	Name() string
	// PrimaryPosQuery reads the primary's GTID position as one string;
	// PrimaryPosExpr is the same as an expression, to add to a SELECT.
	PrimaryPosQuery() string
	PrimaryPosExpr() string
	// WaitQuery takes (position, timeout seconds) and blocks on the replica
	// until it has applied position or the timeout passes.
	WaitQuery() string
	// WaitReached interprets WaitQuery's result.
	WaitReached(code int64) (bool, error)
	// ReplicaPosQuery reads the GTID position a replica has applied.
	ReplicaPosQuery() string
	// ReplicaStatusQuery shows replication thread state.
	ReplicaStatusQuery() string
	// IORunningColumn and SQLRunningColumn name the thread-state columns
	// of ReplicaStatusQuery's result; SecondsBehindColumn its lag column.
	IORunningColumn() string
	SQLRunningColumn() string
	SecondsBehindColumn() string
	// IsolationParam is the session variable that sets the isolation
	// level in a DSN.
	IsolationParam() string
	// ThreadsRunningExpr reads the server's Threads_running as a scalar
	// expression, to add to a SELECT (what SHOW GLOBAL STATUS reports,
	// with no privilege needed).
	ThreadsRunningExpr() string
}

// MariaDB is MariaDB 10.5 and later.
type MariaDB struct{}

func (MariaDB) Name() string            { return gomysql.MariaDBFlavor }
func (MariaDB) PrimaryPosQuery() string { return "SELECT @@GLOBAL.gtid_binlog_pos" }
func (MariaDB) PrimaryPosExpr() string  { return "@@GLOBAL.gtid_binlog_pos" }
func (MariaDB) WaitQuery() string       { return "SELECT MASTER_GTID_WAIT(?, ?)" }
func (MariaDB) WaitReached(code int64) (bool, error) {
	switch code {
	case 0:
		return true, nil
	case -1:
		return false, nil
	}
	return false, fmt.Errorf("MASTER_GTID_WAIT returned %d", code)
}
func (MariaDB) ReplicaPosQuery() string     { return "SELECT @@GLOBAL.gtid_slave_pos" }
func (MariaDB) ReplicaStatusQuery() string  { return "SHOW SLAVE STATUS" }
func (MariaDB) IORunningColumn() string     { return "Slave_IO_Running" }
func (MariaDB) SQLRunningColumn() string    { return "Slave_SQL_Running" }
func (MariaDB) SecondsBehindColumn() string { return "Seconds_Behind_Master" }
func (MariaDB) IsolationParam() string      { return "tx_isolation" }
func (MariaDB) ThreadsRunningExpr() string {
	return "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'THREADS_RUNNING')"
}

// MySQL is MySQL 8.0.22 and later (SHOW REPLICA STATUS).
type MySQL struct{}

func (MySQL) Name() string            { return gomysql.MySQLFlavor }
func (MySQL) PrimaryPosQuery() string { return "SELECT @@GLOBAL.gtid_executed" }
func (MySQL) PrimaryPosExpr() string  { return "@@GLOBAL.gtid_executed" }
func (MySQL) WaitQuery() string       { return "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)" }
func (MySQL) WaitReached(code int64) (bool, error) {
	switch code {
	case 0:
		return true, nil
	case 1:
		return false, nil
	}
	return false, fmt.Errorf("WAIT_FOR_EXECUTED_GTID_SET returned %d", code)
}
func (MySQL) ReplicaPosQuery() string     { return "SELECT @@GLOBAL.gtid_executed" }
func (MySQL) ReplicaStatusQuery() string  { return "SHOW REPLICA STATUS" }
func (MySQL) IORunningColumn() string     { return "Replica_IO_Running" }
func (MySQL) SQLRunningColumn() string    { return "Replica_SQL_Running" }
func (MySQL) SecondsBehindColumn() string { return "Seconds_Behind_Source" }
func (MySQL) IsolationParam() string      { return "transaction_isolation" }
func (MySQL) ThreadsRunningExpr() string {
	return "(SELECT VARIABLE_VALUE FROM performance_schema.global_status WHERE VARIABLE_NAME = 'Threads_running')"
}

// FromVersion picks the flavor for a VERSION() string.
func FromVersion(v string) Flavor {
	if strings.Contains(strings.ToLower(v), "mariadb") {
		return MariaDB{}
	}
	return MySQL{}
}

// Detect asks the server for VERSION() and picks the flavor.
func Detect(ctx context.Context, db *sql.DB) (Flavor, error) {
	var v string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&v); err != nil {
		return nil, fmt.Errorf("detect server flavor: %w", err)
	}
	return FromVersion(v), nil
}

// Contains reports whether the GTID set have includes want, both in f's
// syntax. On MariaDB the comparison is per domain on sequence numbers only,
// so after a failover a position is not proof that a given transaction ran.
func Contains(f Flavor, have, want string) (bool, error) {
	h, err := gomysql.ParseGTIDSet(f.Name(), have)
	if err != nil {
		return false, fmt.Errorf("parse GTID set %q: %w", have, err)
	}
	w, err := gomysql.ParseGTIDSet(f.Name(), want)
	if err != nil {
		return false, fmt.Errorf("parse GTID set %q: %w", want, err)
	}
	return h.Contain(w), nil
}
