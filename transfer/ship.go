package transfer

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/cleanup"
	"github.com/nonqueue/nonqueue/internal/ident"
)

// ShipParams describe one run's shipment. The databases are the caller's
// pools; Ship pins one connection of each for its session state and gives
// it back as it found it (sql_log_bin restored, locks released), or closes
// it when it cannot. Fence and Commit run on the caller's connections while
// Ship holds its own, so a primary pool they share needs two connections.
type ShipParams struct {
	// TopicID is the topic whose result tables (Config.TableNames) ship.
	TopicID int64
	// Token is the claim token. It goes into the staging names, so runs of
	// different claims never touch each other's files.
	Token uint64
	// Replica is the local replica (the worker runs on the replica host, so
	// the table files are read from the local disk).
	Replica *sql.DB
	// ReplicaDatadir is the replica's @@datadir on the local disk; empty
	// reads it from the server (one more round trip per Ship).
	ReplicaDatadir string
	// Primary receives the tables; every statement Ship runs there has
	// binary logging off.
	Primary *sql.DB
	// LockName is the per-topic GET_LOCK name, shared with the reaper (which
	// skips a topic whose lock it cannot get). At most 64 characters.
	LockName string
	// LockTimeout is how long to wait for the lock; default 10s.
	LockTimeout time.Duration
	// Fence is called under the lock right before the swap and must return
	// an error if the claim is no longer ours; then nothing is published,
	// the staging tables are removed, and Ship's error wraps ErrFenced and
	// Fence's error. Required.
	Fence func(ctx context.Context) error
	// FenceQuery, if set and Config.MultiStatementPools, replaces Fence at
	// the swap: a statement that returns a row if and only if the claim
	// is still ours (queue.Queue.HoldsQuery). It is sent in the same
	// request as the GET_LOCK, so the server runs it right after the lock
	// is granted, and costs no round trip of its own. Fence is still
	// required (the replica lock uses it).
	FenceQuery string
	// Commit, if set, is called under the lock right after the swap (the
	// worker marks the topic finished here). Its context is detached from
	// Ship's and bounded by 30s: the tables are live already.
	Commit func(ctx context.Context) error
	// DropReplica drops the result tables on the replica once their files
	// are shipped, while the primary verifies them (protocol 7): the drop,
	// a synced DDL, is then mostly off the run's critical path. Ship waits
	// for it right before Commit, so it is over before the finish can make
	// the topic claimable again; its failure is logged, not returned (the
	// next run's procedure replaces the tables anyway).
	DropReplica bool
	// Dropper, if set, drops the swapped-out live tables in the background
	// (batched, a failed DROP retried), and retries the DROP of staging
	// tables a failed Ship could not drop; nil drops them before Ship
	// returns, leaving a failure to CleanupPrimary.
	Dropper *Dropper
	// ReplicaSession, if set, is the run's session holding the topic's
	// replica lock (LockReplica): the export and the DropReplica drop run
	// on it, so a run whose session a newer claim's run killed cannot read
	// or drop that run's tables. After the drop Ship closes it, freeing the
	// lock before Commit can make the topic claimable again. Nil opens a
	// session of Replica for each step, unguarded.
	ReplicaSession *ReplicaSession
	// AdmitFunc, if set, is called on the primary session before anything
	// is written to the primary (before the export), and may wait there:
	// the worker takes a publish slot (a cap on concurrent publishes) on
	// this session. Its error fails Ship with nothing shipped. The release
	// it returns runs once the publish is over (swapped and committed, or
	// failed), before the swapped-out tables are dropped; a release error
	// closes the session instead of returning it to the pool.
	AdmitFunc func(ctx context.Context, conn *sql.Conn) (release func(context.Context) error, err error)
}

// Shipment describes a completed Ship.
type Shipment struct {
	// Tables are the live names published, in template order.
	Tables []string
	// Bytes is the size of all files shipped.
	Bytes int64
	// TransferTime runs from FLUSH TABLES … FOR EXPORT on the replica to
	// UNLOCK TABLES: export, stream, replica checksum, local backup.
	TransferTime time.Duration
	// PublishTime runs from the primary's check of the tables to the lock's
	// release: verify, lock, fence, swap, Commit.
	PublishTime time.Duration
	// Backup is the local backup directory, "" if none was kept.
	Backup string
}

// stagedTable is one result table on its way.
type stagedTable struct {
	live, tmp, old string
	files          []*stagedFile
	sum            string // CHECKSUM TABLE on the replica
}

type stagedFile struct {
	mode          os.FileMode // applied with chmod when not 0
	local, remote string
	size          int64
	frm           bool
	// readBack: verified by reading it back over its SFTP handle right
	// after the write (VerifyBytes, small files); otherwise by cksum.
	readBack bool
}

// stagingName is prefix + token + "_" + table, or, when that exceeds the 64
// characters of an identifier, prefix + token + "_" + 16 hex digits of the
// table name's SHA-256.
func stagingName(prefix string, token uint64, table string) string {
	head := prefix + strconv.FormatUint(token, 10) + "_"
	if len(head)+len(table) <= 64 {
		return head + table
	}
	sum := sha256.Sum256([]byte(table))
	return head + hex.EncodeToString(sum[:8])
}

// SQL of a shipment. %s are lists of identifiers quoted by ident; values go
// in as arguments.
const (
	// One equality per branch: MariaDB then opens only that table's
	// files; TABLE_NAME IN (…) reads every table of the schema, which
	// holds every topic's results on the primary (measured: 2.2 ms per
	// lookup with 2,000 tables, against 0.15 ms).
	replicaTablesSQL  = "SELECT /* nonqueue */ TABLE_NAME, TABLE_TYPE, ENGINE, CREATE_OPTIONS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?"
	datadirSQL        = "SELECT /* nonqueue */ @@datadir"
	flushExportSQL    = "FLUSH /* nonqueue */ TABLES %s FOR EXPORT"
	unlockSQL         = "UNLOCK /* nonqueue */ TABLES"
	checksumSQL       = "CHECKSUM /* nonqueue */ TABLE %s EXTENDED"
	dropSQL           = "DROP /* nonqueue */ TABLE IF EXISTS %s"
	getLockSQL        = "SELECT /* nonqueue */ GET_LOCK(?, ?)"
	releaseLockSQL    = "SELECT /* nonqueue */ RELEASE_LOCK(?)"
	existingTablesSQL = "SELECT /* nonqueue */ TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?"
	renameSQL         = "RENAME /* nonqueue */ TABLE %s"
	// boundedSQL runs a DDL statement (%s) with lock_wait_timeout = %d
	// seconds for that statement only.
	boundedSQL = "SET /* nonqueue */ STATEMENT lock_wait_timeout = %d FOR %s"
)

// Ship exports the topic's result tables from the local replica, streams
// their files into the primary's datadir under staging names, verifies
// them, and publishes them atomically under the topic's lock:
//
//  0. ShipParams.AdmitFunc, if set, runs first on the primary session (a
//     publish slot) and its release right after step 4's RELEASE_LOCK;
//  1. replica, binary logging off: each table must exist and be MyISAM;
//     FLUSH TABLES … FOR EXPORT makes the files consistent and holds a read
//     lock while the files stream;
//  2. files go to nqtmp_<token>_<table> over SFTP, sizes are checked, and
//     the bytes are verified while the lock is held. With verify = "bytes"
//     (the default) a file up to 64 KiB is read back over the handle that
//     wrote it and compared, and a bigger one is compared by cksum on both
//     hosts (read back too when cksum cannot run there); with verify =
//     "checksum", CHECKSUM TABLE … EXTENDED runs on the replica instead.
//     Then the replica is unlocked;
//  3. primary, binary logging off: the server must open every staging
//     table, and with verify = "checksum" its CHECKSUM TABLE must equal the
//     replica's (ErrChecksumMismatch either way);
//  4. GET_LOCK(LockName), Fence (ErrFenced), one RENAME TABLE moving every
//     live table aside and every staging table in, Commit (ErrCommit),
//     RELEASE_LOCK, then DROP of the swapped-out tables. The RENAME and the
//     DROP wait at most Config.LockWait for their metadata locks; a RENAME
//     that gives up releases the lock, pauses and tries again from
//     GET_LOCK, Config.SwapTries times in all, and then fails with
//     ErrTableBusy.
//
// Readers of a live table see the old or the new version, never an error
// or a mix, and wait for a publish at most Config.LockWait, however long
// another query holds the table. On any failure before the swap nothing is
// published and the staging tables and files are removed (on a detached
// context); the error says which step failed. After the swap, Ship
// returns its Shipment even with an error (ErrCommit, or a failed drop of
// an old table, which is only logged, and retried by the Dropper if there is one, else left for CleanupPrimary). A transfer that fails because the
// SSH connection dropped is retried once on a new connection.
func (s *Shipper) Ship(ctx context.Context, p *ShipParams) (*Shipment, error) {
	if err := s.checkParams(p); err != nil {
		return nil, err
	}
	log := s.logger.With("topic_id", p.TopicID, "claim_token", p.Token)
	names := s.cfg.TableNames(p.TopicID)
	tables := make([]*stagedTable, len(names))
	for i, n := range names {
		tables[i] = &stagedTable{live: n, tmp: stagingName(tmpPrefix, p.Token, n), old: stagingName(oldPrefix, p.Token, n)}
	}
	// Dial before locking anything on the replica.
	if _, err := s.link(ctx); err != nil {
		return nil, fmt.Errorf("ship topic %d: %w", p.TopicID, err)
	}
	prim, err := openSession(ctx, p.Primary, "primary", s.cfg.NoBinlogPools)
	if err != nil {
		return nil, fmt.Errorf("ship topic %d: %w", p.TopicID, err)
	}
	defer prim.close(ctx)

	// Staging names carry our claim token and topic, so no other run
	// writes them, and a claim ships once: nothing needs looking up or
	// dropping first. What a crashed run left under its own token is
	// CleanupPrimary's; an unexpected table under ours (a topic row
	// re-created with its tokens restarted) fails the checksum and is
	// dropped with the staging tables.
	published := false
	backup := ""
	defer func() {
		if !published {
			s.removeStaging(ctx, prim, p.Primary, p.Dropper, tables, log)
			if backup != "" {
				os.RemoveAll(backup)
			}
		}
	}()

	ship := &Shipment{Tables: names}
	// endAdmission ends the AdmitFunc's admission once; deferred too, so
	// a failure on the way ends it as well.
	endAdmission := func() {}
	if p.AdmitFunc != nil {
		release, err := p.AdmitFunc(ctx, prim.conn)
		if err != nil {
			prim.bad = true // an admission cut short may hold a lock; closing the session frees it
			return nil, fmt.Errorf("ship topic %d: admission to publish: %w", p.TopicID, err)
		}
		done := false
		endAdmission = func() {
			if done || release == nil {
				return
			}
			done = true
			if err := release(ctx); err != nil {
				prim.bad = true
				log.WarnContext(ctx, "end the publish admission; closing the session instead", "err", err)
			}
		}
		defer endAdmission()
	}
	t0 := time.Now()
	if backup, err = s.export(ctx, p, tables, ship, log); err != nil {
		return nil, fmt.Errorf("ship topic %d: %w", p.TopicID, err)
	}
	ship.TransferTime = time.Since(t0)

	dropped := make(chan struct{})
	if p.DropReplica {
		go func() {
			defer close(dropped)
			dctx, cancel := cleanup.Context(ctx)
			defer cancel()
			var derr error
			if rs := p.ReplicaSession; rs != nil {
				derr = rs.Drop(dctx)
				rs.Close()
			} else {
				derr = s.DropReplicaTables(dctx, p.Replica, p.TopicID)
			}
			if derr != nil {
				log.WarnContext(dctx, "drop result tables on the replica", "err", derr)
			}
		}()
	} else {
		close(dropped)
	}
	defer func() { <-dropped }()

	t0 = time.Now()
	var old []string
	published, old, err = s.publish(ctx, prim, p, tables, dropped, log)
	ship.PublishTime = time.Since(t0)
	endAdmission()
	if !published {
		return nil, fmt.Errorf("publish topic %d: %w", p.TopicID, err)
	}
	switch {
	case len(old) == 0:
	case p.Dropper != nil:
		p.Dropper.b.Add(old...)
	default:
		// After the lock's release: the swapped-out tables carry our token,
		// nothing else reaches them, and the DROP (a synced DDL) need not
		// delay the reaper or the next publish.
		dctx, cancel := cleanup.Context(ctx)
		_ = s.dropSwappedOut(dctx, prim.conn, old, log) // logged there; CleanupPrimary drops what is left
		cancel()
	}
	if backup != "" {
		var berr error
		if ship.Backup, berr = s.keepBackup(p.TopicID, backup); berr != nil {
			log.WarnContext(ctx, "keep local backup", "err", berr)
		}
	}
	log.DebugContext(ctx, "published result tables", "tables", names, "bytes", ship.Bytes,
		"transfer", ship.TransferTime, "publish", ship.PublishTime)
	if err != nil {
		return ship, fmt.Errorf("publish topic %d: %w", p.TopicID, err)
	}
	return ship, nil
}

func (s *Shipper) checkParams(p *ShipParams) error {
	switch {
	case p == nil:
		return fmt.Errorf("%w: nil", ErrParams)
	case p.TopicID <= 0:
		return fmt.Errorf("%w: topic id %d is not positive", ErrParams, p.TopicID)
	case p.Replica == nil || p.Primary == nil:
		return fmt.Errorf("%w: Replica and Primary are required", ErrParams)
	case p.ReplicaDatadir != "" && !filepath.IsAbs(p.ReplicaDatadir):
		return fmt.Errorf("%w: replica datadir %q is not absolute", ErrParams, p.ReplicaDatadir)
	case p.LockName == "" || len(p.LockName) > 64:
		return fmt.Errorf("%w: lock name %q must be 1 to 64 characters", ErrParams, p.LockName)
	case p.LockTimeout < 0:
		return fmt.Errorf("%w: lock timeout %v is negative", ErrParams, p.LockTimeout)
	case p.Fence == nil:
		return fmt.Errorf("%w: Fence is required: an unfenced publish could overwrite a newer result", ErrParams)
	}
	return nil
}

// displayList names the live tables for messages: schema.table, ….
func (s *Shipper) displayList(tables []*stagedTable) string {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = s.cfg.Schema + "." + t.live
	}
	return strings.Join(names, ", ")
}

// sleepCtx waits d, or returns ctx's error if it ends first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// isNoSuchTable reports MySQL error 1146 (ER_NO_SUCH_TABLE).
func isNoSuchTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}

// removeStaging drops the staging tables on the primary and removes any
// file left under their names, on a detached context. It uses the pinned
// session while that still works (a pool of one connection must not wait
// for itself) and a new one otherwise. Tables whose DROP failed go to the
// dropper's retries when there is one (their names carry the claim token:
// nothing else uses them); other failures are logged, and CleanupPrimary
// catches what is left.
func (s *Shipper) removeStaging(ctx context.Context, prim *session, primary *sql.DB, d *Dropper, tables []*stagedTable, log *slog.Logger) {
	cctx, cancel := cleanup.Context(ctx)
	defer cancel()
	tmp := make([]string, len(tables))
	for i, t := range tables {
		tmp[i] = t.tmp
	}
	var err error
	if !prim.bad {
		if err = s.dropBounded(cctx, prim.conn, tmp, s.cfg.SwapTries); err != nil {
			prim.bad = true
		}
	}
	if prim.bad {
		var sess *session
		if sess, err = openSession(cctx, primary, "primary", s.cfg.NoBinlogPools); err == nil {
			err = s.dropBounded(cctx, sess.conn, tmp, s.cfg.SwapTries)
			sess.close(cctx)
		}
	}
	switch {
	case err == nil:
	case d != nil:
		d.retry(cctx, tmp, err)
	default:
		log.WarnContext(cctx, "drop staging tables on the primary", "tables", tmp, "err", err)
	}
	l, err := s.cleanupLink(cctx)
	if err != nil {
		log.WarnContext(cctx, "remove staging files; CleanupPrimary will", "err", err)
		return
	}
	dir := path.Join(s.cfg.PrimaryDatadir, s.cfg.Schema)
	for _, n := range tmp {
		for _, ext := range myisamExts {
			f := path.Join(dir, n+ext)
			if err := l.step("remove "+f, s.cfg.SSH.StallTimeout, func() error { return l.sftp.Remove(f) }); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.WarnContext(cctx, "remove staging file over sftp", "file", f, "err", err)
			}
		}
	}
}

func (s *Shipper) qualified(name string) string { return ident.Qualified(s.cfg.Schema, name) }

func (s *Shipper) qualifiedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = s.qualified(n)
	}
	return strings.Join(q, ", ")
}

// unionAll repeats a one-table lookup n times in one statement.
func unionAll(branch string, n int) string {
	return strings.Repeat(branch+" UNION ALL ", n-1) + branch
}

// cleanupLink is link for removing a failed run's staging files, except
// that it does not dial again right after the link was abandoned: the
// release of the claim must not wait a dial timeout on a server that just
// stopped answering. The files are left to CleanupPrimary then.
func (s *Shipper) cleanupLink(ctx context.Context) (*link, error) {
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur != nil {
		if why := cur.abandoned(); why != nil {
			return nil, fmt.Errorf("not dialling again at once: %w", why)
		}
	}
	return s.link(ctx)
}
