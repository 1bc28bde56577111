package transfer

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"

	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// Session SQL. The previous sql_log_bin is saved in a user variable and
// restored before the connection goes back to the caller's pool, so a pool
// that replicates (the primary's heartbeat, the topic table) never inherits
// a session that does not.
const (
	noBinlogSQL      = "SET /* nonqueue */ @nonqueue_log_bin := @@session.sql_log_bin, SESSION sql_log_bin = 0"
	restoreBinlogSQL = "SET /* nonqueue */ SESSION sql_log_bin = @nonqueue_log_bin, @nonqueue_log_bin := NULL"
)

// session is a connection pinned from a caller's pool with binary logging
// off: GET_LOCK, FLUSH TABLES … FOR EXPORT and sql_log_bin belong to one
// server session, so they must never go through the pool.
type session struct {
	conn *sql.Conn
	role string // "replica" or "primary", for messages
	// bad says the session may hold state we could not undo (a lock we
	// could not release, binary logging still off): close discards the
	// connection instead of returning it to the pool.
	bad bool
	// pooled: binary logging is off for the whole pool; nothing to restore.
	pooled bool
	// release names a GET_LOCK lock close releases, in the background
	// (swap leaves it after a published swap).
	release string
}

// openSession pins a connection and turns binary logging off for it;
// with noBinlogPool the pool's sessions have it off already (set when
// connecting) and nothing is sent.
func openSession(ctx context.Context, db *sql.DB, role string, noBinlogPool bool) (*session, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to the %s: %w", role, err)
	}
	if noBinlogPool {
		return &session{conn: conn, role: role, pooled: true}, nil
	}
	if _, err := conn.ExecContext(ctx, noBinlogSQL); err != nil {
		discard(conn)
		conn.Close()
		return nil, fmt.Errorf("turn off binary logging for a session on the %s (needs SUPER or BINLOG ADMIN): %w", role, err)
	}
	return &session{conn: conn, role: role}, nil
}

// close restores the session and returns it to the pool, or discards it
// when it is bad or cannot be restored. It runs on a cleanup context.
func (s *session) close(ctx context.Context) {
	if s.release != "" {
		name := s.release
		s.release = ""
		go func() {
			cctx, cancel := cleanup.Context(context.WithoutCancel(ctx))
			defer cancel()
			var rel sql.NullInt64
			if err := s.conn.QueryRowContext(cctx, releaseLockSQL, name).Scan(&rel); err != nil || rel.Int64 != 1 {
				s.bad = true // closing the session frees the lock
			}
			s.close(ctx)
		}()
		return
	}
	cctx, cancel := cleanup.Context(ctx)
	defer cancel()
	if !s.bad && !s.pooled {
		if _, err := s.conn.ExecContext(cctx, restoreBinlogSQL); err != nil {
			s.bad = true
		}
	}
	if s.bad {
		discard(s.conn)
	}
	s.conn.Close()
}

// discard makes database/sql close conn instead of pooling it: closing the
// server session is what releases its locks.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}
