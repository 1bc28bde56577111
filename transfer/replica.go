package transfer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// One run per topic per replica (docs/design.md). Result tables on a replica
// are named per topic, not per claim, so a run whose claim is gone (its
// process paused past the lease, an operator's release) could still drop,
// overwrite or export the tables of a newer claim of the topic on the same
// replica. The guard: every replica-side step of a run (the procedure
// call, FLUSH TABLES … FOR EXPORT and the file reads under it, the DROP)
// happens on one session that holds the topic's replica lock (GET_LOCK)
// from before the call to after the drop. Once that session is gone, the
// run can do nothing more to the topic's tables on that replica: a statement
// on a killed session fails, and the lock is free only once the server has
// ended the session and whatever statement it was running.
//
// A newer claim that finds the lock held knows the holder belongs to an
// older run: only one claim of a topic exists at a time. It waits a moment
// (a holder in its last step lets go by itself), then proves its own claim
// under the topic's primary lock, which every path that takes a claim away
// (the reaper, an operator's release) takes too, and kills the holder's
// connection while it still holds that lock. The proof and the kill under
// one lock close the check-then-act race the other way round: a paused
// older run that resumes cannot kill a newer run's session, because its
// own proof fails.

// SQL of the replica guard.
const (
	connIDSQL     = "SELECT /* nonqueue */ CONNECTION_ID()"
	lockHolderSQL = "SELECT /* nonqueue */ IS_USED_LOCK(?)"
	killConnSQL   = "KILL /* nonqueue */ CONNECTION %d"
	releaseDoSQL  = "DO /* nonqueue */ RELEASE_LOCK(?)"
)

// Waits of LockReplica. Together they bound how long a run can wait for a
// topic's replica lock: about replicaLockWait + evictTries × (evictWait +
// the primary lock's wait).
const (
	// replicaLockWait is the first wait for the lock: a finished run lets
	// it go right after its drop, and the replica sweep holds it for one
	// DROP, so only a lost run's session is still there after it.
	replicaLockWait = time.Second
	// evictWait is the wait for the lock after the holder was killed: the
	// server ends a killed session at its next check, seconds at most for a
	// statement in a procedure (the procedure runner grants KILL QUERY 3s).
	evictWait = 5 * time.Second
	// evictTries bounds the kill-and-wait rounds: a round can lose the
	// freed lock to another stale session, which the next round kills.
	evictTries = 2
)

// errUnknownThread is the server's answer to KILL for a session that
// ended already.
const errUnknownThread = 1094

// ReplicaLockName is the name of the topic's lock on the replica (a
// GET_LOCK name, at most 64 characters; longer ones are hashed). It is per
// result schema and topic, as the result tables are.
func (s *Shipper) ReplicaLockName(topicID int64) string {
	id := strconv.FormatInt(topicID, 10)
	name := "nonqueue:results:" + s.cfg.Schema + ":" + id
	if len(name) <= 64 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "nonqueue:results:" + hex.EncodeToString(sum[:12]) + ":" + id
}

// ReplicaLockParams say whose run takes a topic's replica lock.
type ReplicaLockParams struct {
	// TopicID is the topic whose result tables the run will write.
	TopicID int64
	// Replica is the local replica's pool; the session is pinned from it
	// and never returned to it.
	Replica *sql.DB
	// Primary, LockName and Fence prove the run's claim before another
	// session is killed: Fence runs while LockName (the topic's publish
	// lock, which the reaper and an operator's release take too) is held
	// on a session of Primary, and must fail if the claim is no longer the
	// caller's (queue.Queue.Holds).
	Primary  *sql.DB
	LockName string
	Fence    func(ctx context.Context) error
	// LockTimeout bounds the wait for LockName; default DefaultLockTimeout.
	LockTimeout time.Duration
}

// ReplicaSession is a run's one session on the replica: it holds the
// topic's replica lock, has binary logging off, and is where the procedure
// is called (procs.RunParams.Conn), the tables are exported
// (ShipParams.ReplicaSession) and dropped (Drop). Close ends it, which frees
// the lock. Methods are safe for concurrent use, but statements must not
// overlap on the connection.
type ReplicaSession struct {
	s       *Shipper
	topicID int64
	lock    string
	id      uint64

	mu      sync.Mutex
	sess    *session // nil once closed
	dropped bool     // Drop succeeded
}

// Conn is the session's connection, for the procedure call; nil once
// closed.
func (r *ReplicaSession) Conn() *sql.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sess == nil {
		return nil
	}
	return r.sess.conn
}

// ConnectionID is the server's CONNECTION_ID() of the session.
func (r *ReplicaSession) ConnectionID() uint64 { return r.id }

// session returns the live session, or an error once closed.
func (r *ReplicaSession) session() (*session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sess == nil {
		return nil, fmt.Errorf("topic %d: %w", r.topicID, ErrReplicaSessionClosed)
	}
	return r.sess, nil
}

// Drop drops the topic's result tables on the replica through the session
// (binary logging off; missing tables are no error). It fails, dropping
// nothing, when the session is gone (killed by a newer claim's run, which
// owns the tables now) or closed before any Drop; after a successful Drop
// and Close it returns nil.
func (r *ReplicaSession) Drop(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sess == nil {
		if r.dropped {
			return nil
		}
		return fmt.Errorf("drop result tables of topic %d: %w", r.topicID, ErrReplicaSessionClosed)
	}
	if _, err := r.sess.conn.ExecContext(ctx, fmt.Sprintf(dropSQL, r.s.qualifiedList(r.s.cfg.TableNames(r.topicID)))); err != nil {
		r.sess.bad = true
		return fmt.Errorf("drop result tables of topic %d on the replica: %w", r.topicID, err)
	}
	r.dropped = true
	return nil
}

// Close ends the session: its connection is discarded, never pooled (it
// holds the lock, and whatever the procedure left in the session), and the
// server frees the lock. Idempotent.
func (r *ReplicaSession) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sess == nil {
		return
	}
	discard(r.sess.conn)
	r.sess.conn.Close()
	r.sess = nil
}

// LockReplica opens the run's session on the replica and takes the topic's
// replica lock on it. When another session holds the lock past a moment's
// wait, that session is an older, lost run's: LockReplica takes LockName
// on the primary, checks Fence, kills the holder's connection (KILL
// CONNECTION: its statement stops and the server frees the lock), lets go
// of LockName and waits for the lock; two such rounds at most.
//
// Errors: ErrFenced when Fence failed (the caller's claim is gone; nothing
// was killed); ErrResultsBusy when the lock stayed held (the holder could
// not be killed, e.g. it runs as another user without CONNECTION ADMIN, or
// LockName stayed taken); otherwise what failed, wrapped. On error nothing
// is held.
func (s *Shipper) LockReplica(ctx context.Context, p *ReplicaLockParams) (_ *ReplicaSession, err error) {
	switch {
	case p == nil || p.TopicID <= 0:
		return nil, fmt.Errorf("%w: lock replica: a positive topic id is required", ErrParams)
	case p.Replica == nil || p.Primary == nil:
		return nil, fmt.Errorf("%w: lock replica: Replica and Primary are required", ErrParams)
	case p.LockName == "" || len(p.LockName) > 64:
		return nil, fmt.Errorf("%w: lock name %q must be 1 to 64 characters", ErrParams, p.LockName)
	case p.Fence == nil:
		return nil, fmt.Errorf("%w: lock replica: Fence is required: killing an unproven holder could kill a newer run", ErrParams)
	}
	sess, err := openSession(ctx, p.Replica, "replica", s.cfg.NoBinlogPools)
	if err != nil {
		return nil, fmt.Errorf("lock result tables of topic %d: %w", p.TopicID, err)
	}
	r := &ReplicaSession{s: s, topicID: p.TopicID, lock: s.ReplicaLockName(p.TopicID), sess: sess}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if err := sess.conn.QueryRowContext(ctx, connIDSQL).Scan(&r.id); err != nil {
		return nil, fmt.Errorf("lock result tables of topic %d: read connection id: %w", p.TopicID, err)
	}
	got, err := r.getLock(ctx, replicaLockWait)
	var stuck error
	for try := 0; err == nil && !got && try < evictTries; try++ {
		var holder sql.NullInt64
		if err := sess.conn.QueryRowContext(ctx, lockHolderSQL, r.lock).Scan(&holder); err != nil {
			return nil, fmt.Errorf("lock result tables of topic %d: find the lock's holder: %w", p.TopicID, err)
		}
		if holder.Valid && uint64(holder.Int64) != r.id {
			kerr := s.evict(ctx, p, sess.conn, holder.Int64)
			if errors.Is(kerr, ErrFenced) {
				return nil, kerr
			}
			if kerr != nil {
				stuck = kerr
				s.logger.WarnContext(ctx, "could not end an older run's session on the replica", "topic_id", p.TopicID, "connection_id", holder.Int64, "err", kerr)
			} else {
				s.logger.WarnContext(ctx, "killed an older, lost run's session on the replica: it held the topic's result tables",
					"topic_id", p.TopicID, "connection_id", holder.Int64, "lock", r.lock)
			}
		}
		got, err = r.getLock(ctx, evictWait)
	}
	if err != nil {
		return nil, fmt.Errorf("lock result tables of topic %d on the replica: %w", p.TopicID, err)
	}
	if !got {
		if stuck == nil {
			stuck = errors.New("it did not end in time")
		}
		return nil, fmt.Errorf("%w: topic %d: lock %q on the replica still held by an older run's session: %w", ErrResultsBusy, p.TopicID, r.lock, stuck)
	}
	return r, nil
}

// getLock waits up to d for the replica lock.
func (r *ReplicaSession) getLock(ctx context.Context, d time.Duration) (bool, error) {
	var got sql.NullInt64
	if err := r.sess.conn.QueryRowContext(ctx, getLockSQL, r.lock, d.Seconds()).Scan(&got); err != nil {
		r.sess.bad = true
		return false, err
	}
	return got.Valid && got.Int64 == 1, nil
}

// evict kills connection holder on the replica (from conn) while the
// caller's claim is proven: under LockName on the primary, after Fence.
func (s *Shipper) evict(ctx context.Context, p *ReplicaLockParams, conn *sql.Conn, holder int64) error {
	prim, err := p.Primary.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connect to the primary: %w", err)
	}
	bad := false
	defer func() {
		if bad {
			discard(prim)
		}
		prim.Close()
	}()
	timeout := cmp.Or(p.LockTimeout, DefaultLockTimeout)
	var got sql.NullInt64
	if err := prim.QueryRowContext(ctx, getLockSQL, p.LockName, timeout.Seconds()).Scan(&got); err != nil {
		bad = true // the lock may have been granted; closing the session frees it
		return fmt.Errorf("take topic lock %q on the primary: %w", p.LockName, err)
	}
	if !got.Valid || got.Int64 != 1 {
		return fmt.Errorf("%w: %q after %v", ErrLockTimeout, p.LockName, timeout)
	}
	defer func() {
		cctx, cancel := cleanup.Context(ctx)
		defer cancel()
		if _, err := prim.ExecContext(cctx, releaseDoSQL, p.LockName); err != nil {
			bad = true
		}
	}()
	if err := p.Fence(ctx); err != nil {
		return fmt.Errorf("%w: topic %d: %w", ErrFenced, p.TopicID, err)
	}
	_, err = conn.ExecContext(ctx, fmt.Sprintf(killConnSQL, holder))
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == errUnknownThread {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kill connection %d on the replica: %w", holder, err)
	}
	return nil
}
