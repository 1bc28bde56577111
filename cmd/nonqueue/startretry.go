package main

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

// The wait between start-up tries doubles from startBackoffMin to
// startBackoffMax; each wait is drawn from its upper half, so hosts that
// booted together do not knock on the primary together.
const (
	startBackoffMin = time.Second
	startBackoffMax = 30 * time.Second
	// startTryTimeout bounds one try: a host that drops packets would
	// otherwise hold a dial for the kernel's two minutes.
	startTryTimeout = 30 * time.Second
)

// errStartTimeout is returned when the servers stayed unreachable for the
// whole [worker] start_timeout.
var errStartTimeout = errors.New("servers still unreachable at the end of the start timeout")

// openWithRetry calls open until it succeeds, fails with an error that
// retrying cannot cure (transientStartErr), ctx ends, or timeout passes
// (0: never). Each failed try is logged at WARN with its error, which names
// the server it tried to reach (no password is in it), and the wait before
// the next. open must close whatever it opened when it fails. When ctx ends,
// it returns ctx's error: the caller is stopping, not failing.
func openWithRetry[T any](ctx context.Context, log *slog.Logger, what string, timeout time.Duration, open func(context.Context) (T, error)) (T, error) {
	var zero T
	start := time.Now()
	wait := startBackoffMin
	for try := 1; ; try++ {
		tctx, cancel := context.WithTimeout(ctx, startTryTimeout)
		v, err := open(tctx)
		cancel()
		if err == nil {
			if try > 1 {
				log.InfoContext(ctx, what+": servers reachable", "tries", try, "waited", time.Since(start).Round(time.Millisecond))
			}
			return v, nil
		}
		if ctx.Err() != nil {
			return zero, ctx.Err()
		}
		if !transientStartErr(err) {
			return zero, err
		}
		d := wait/2 + rand.N(wait/2+1)
		if timeout > 0 {
			left := timeout - time.Since(start)
			if left <= 0 {
				return zero, fmt.Errorf("%w (%v): %w", errStartTimeout, timeout, err)
			}
			d = min(d, left) // the last try at the timeout
		}
		log.WarnContext(ctx, what+": cannot reach the servers; retrying", "err", err, "try", try, "retry_in", d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return zero, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, startBackoffMax)
	}
}

// transientMySQL are the server error numbers that mean "not ready now,
// try later": the server is busy, shutting down or restarting, or the
// connection broke. Access denied (1045), an unknown database (1049) or
// table (1146) and the like are not here: retrying cannot cure them.
var transientMySQL = map[uint16]bool{
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

// transientErrno are the socket errors of a server or network that is not
// there yet.
var transientErrno = []syscall.Errno{
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.ETIMEDOUT,
	syscall.EHOSTUNREACH, syscall.EHOSTDOWN, syscall.ENETUNREACH, syscall.ENETDOWN, syscall.EPIPE,
}

// transientStartErr reports whether a failure to open a worker's or a
// follower's connections may cure itself: a server or sshd not up yet,
// restarting or busy, a network not up yet, a timeout. Everything else is
// permanent and reported at once: a bad configuration, access denied, an
// unknown database or table, an SSH host key that is wrong or unknown, an
// SSH login refused, a key file missing, or an error this does not know.
func transientStartErr(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	// Permanent whatever they wrap.
	if errors.Is(err, transfer.ErrHostKey) || errors.Is(err, transfer.ErrConfig) || errors.Is(err, worker.ErrConfig) {
		return false
	}
	if _, ok := errors.AsType[*ConfigError](err); ok {
		return false
	}
	if me, ok := errors.AsType[*mysql.MySQLError](err); ok {
		return transientMySQL[me.Number]
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
	for _, e := range transientErrno {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
