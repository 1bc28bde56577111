// Package transient tells failures that may cure themselves (a server or
// network not up yet, restarting or busy, a connection cut) from those that
// retrying cannot cure (access denied, an unknown table, a missing file, an
// error it does not know). Start-up waits and the worker's own start steps
// share it, so they agree on what to wait out.
package transient

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"io/fs"
	"net"
	"syscall"

	"github.com/go-sql-driver/mysql"
)

// mysqlCodes are the server error numbers that mean "not ready now,
// try later": the server is busy, shutting down or restarting, or the
// connection broke. Access denied (1045), an unknown database (1049) or
// table (1146) and the like are not here: retrying cannot cure them.
var mysqlCodes = map[uint16]bool{
	1040: true, // ER_CON_COUNT_ERROR: too many connections
	1053: true, // ER_SERVER_SHUTDOWN: server shutdown in progress
	1152: true, // ER_ABORTING_CONNECTION
	1158: true, // ER_NET_READ_ERROR
	1159: true, // ER_NET_READ_INTERRUPTED
	1160: true, // ER_NET_ERROR_ON_WRITE
	1161: true, // ER_NET_WRITE_INTERRUPTED
	1203: true, // ER_TOO_MANY_USER_CONNECTIONS: max_user_connections
	1205: true, // ER_LOCK_WAIT_TIMEOUT
	1213: true, // ER_LOCK_DEADLOCK
	1226: true, // ER_USER_LIMIT_REACHED: an hourly limit, reset within the hour
	1317: true, // ER_QUERY_INTERRUPTED: killed, as at shutdown
	1927: true, // ER_CONNECTION_KILLED (MariaDB)
	2006: true, // CR_SERVER_GONE_ERROR, should a proxy pass it on
	2013: true, // CR_SERVER_LOST
	3032: true, // ER_SERVER_OFFLINE_MODE (MySQL)
	4031: true, // ER_CLIENT_INTERACTION_TIMEOUT (MySQL)
}

// socketErrnos are the socket errors of a server or network that is not
// there yet.
var socketErrnos = []syscall.Errno{
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.ETIMEDOUT,
	syscall.EHOSTUNREACH, syscall.EHOSTDOWN, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EPIPE,
}

// Is reports whether err may cure itself if tried again later. Unknown
// errors are permanent: a retry loop must not hide a mistake.
func Is(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if me, ok := errors.AsType[*mysql.MySQLError](err); ok {
		return mysqlCodes[me.Number]
	}
	if de, ok := errors.AsType[*net.DNSError](err); ok {
		// A name that does not exist is a typo in the configuration;
		// a resolver that does not answer yet is a network not up yet.
		return !de.IsNotFound
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		// A dial, read or write on a socket: refused, reset,
		// unreachable, timed out, or a Unix socket not created yet.
		return true
	}
	if _, ok := errors.AsType[*fs.PathError](err); ok {
		// A file (the SSH key, known_hosts) missing or unreadable. Its
		// syscall.Errno would pass for a net.Error below.
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		// A connection the server closed: mid-handshake (a MySQL server
		// or an sshd starting or stopping) or mid-query.
		return true
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true // a deadline: a try's timeout or an SSH handshake's
	}
	for _, e := range socketErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
