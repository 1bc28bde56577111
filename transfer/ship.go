package transfer

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/nonqueue/nonqueue/internal/cleanup"
	"github.com/nonqueue/nonqueue/internal/ident"
)

// swapTimeout bounds the critical section after a successful fence (swap,
// Commit). It runs detached from the caller's
// context: once the claim is confirmed under the lock, a cancellation must
// not leave it unknown whether the tables went live.
const swapTimeout = 30 * time.Second

// fileParallelism is how many files are streamed at once over the shared
// SFTP session. Each stream keeps about 2 MiB of writes in flight (64 of
// 32 KiB, or 8 of 255 KiB with OpenSSH), so memory stays around 8 MiB
// whatever the table size.
const fileParallelism = 4

// myisamExts are a MyISAM table's files; the .frm goes last, so an
// interrupted copy never leaves a .frm next to incomplete data.
var myisamExts = []string{".MYD", ".MYI", ".frm"}

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
	// (batched); nil drops them before Ship returns.
	Dropper *Dropper
	// ReplicaSession, if set, is the run's session holding the topic's
	// replica lock (LockReplica): the export and the DropReplica drop run
	// on it, so a run whose session a newer claim's run killed cannot read
	// or drop that run's tables. After the drop Ship closes it, freeing the
	// lock before Commit can make the topic claimable again. Nil opens a
	// session of Replica for each step, unguarded.
	ReplicaSession *ReplicaSession
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
// an old table, which is only logged and left for CleanupPrimary). A transfer that fails because the
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
			s.removeStaging(ctx, prim, p.Primary, tables, log)
			if backup != "" {
				os.RemoveAll(backup)
			}
		}
	}()

	ship := &Shipment{Tables: names}
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

// export runs steps 1 and 2 on the replica: check, lock, checksum, stream,
// back up, unlock. It returns the partial backup directory, if any.
func (s *Shipper) export(ctx context.Context, p *ShipParams, tables []*stagedTable, ship *Shipment, log *slog.Logger) (backup string, err error) {
	var rep *session
	if p.ReplicaSession != nil {
		// The run's locked session: if a newer claim's run killed it, the
		// FLUSH, the checksum or the UNLOCK after the file reads fails, so
		// files read here are only ever this run's own tables.
		if rep, err = p.ReplicaSession.session(); err != nil {
			return "", err
		}
	} else {
		if rep, err = openSession(ctx, p.Replica, "replica", s.cfg.NoBinlogPools); err != nil {
			return "", err
		}
		defer rep.close(ctx)
	}
	datadir := p.ReplicaDatadir
	if datadir == "" {
		if err := rep.conn.QueryRowContext(ctx, datadirSQL).Scan(&datadir); err != nil {
			return "", fmt.Errorf("read the replica's datadir: %w", err)
		}
	}
	live := make([]string, len(tables))
	for i, t := range tables {
		live[i] = t.live
	}
	// The table files themselves show a plain MyISAM table (.frm, .MYD,
	// .MYI under its name): the catalogue is asked only to explain a
	// failure, which saves a round trip and an information_schema read on
	// every run.
	explain := func(err error) error {
		if cerr := s.checkReplicaTables(ctx, rep.conn, tables); cerr != nil {
			return cerr
		}
		return err
	}
	if _, err := rep.conn.ExecContext(ctx, fmt.Sprintf(flushExportSQL, s.qualifiedList(live))); err != nil {
		return "", explain(fmt.Errorf("flush result tables for export on the replica: %w", err))
	}
	locked := true
	defer func() {
		if !locked {
			return
		}
		cctx, cancel := cleanup.Context(ctx)
		defer cancel()
		if _, uerr := rep.conn.ExecContext(cctx, unlockSQL); uerr != nil {
			rep.bad = true // closing the session releases the lock
		}
	}()

	// The files are consistent and stay so while the lock is held.
	var files []*stagedFile
	byteSums := s.cfg.Verify == VerifyBytes
	var cksummed []*stagedFile // with byteSums: files too big to read back in one go
	remoteDir := path.Join(s.cfg.PrimaryDatadir, s.cfg.Schema)
	for _, t := range tables {
		for _, ext := range myisamExts {
			f := &stagedFile{
				local:  filepath.Join(datadir, s.cfg.Schema, t.live+ext),
				remote: path.Join(remoteDir, t.tmp+ext),
				frm:    ext == ".frm",
				mode:   s.cfg.FileMode,
			}
			st, err := os.Stat(f.local)
			if err != nil {
				return "", explain(fmt.Errorf("stat table file on the replica host (is ReplicaDatadir %q this replica's?): %w", datadir, err))
			}
			f.size = st.Size()
			f.readBack = byteSums && f.size <= smallFile
			if byteSums && !f.readBack {
				cksummed = append(cksummed, f)
			}
			ship.Bytes += f.size
			t.files = append(t.files, f)
			files = append(files, f)
		}
	}

	if len(cksummed) > 0 && !s.cksumUsable(ctx) {
		for _, f := range cksummed {
			f.readBack = true
		}
		cksummed = nil
	}

	// The replica's checksum runs in the locked session while the files
	// stream: both only read.
	sumCtx, cancelSum := context.WithCancel(ctx)
	defer cancelSum()
	type sumResult struct {
		sums map[string]string
		err  error
	}
	sumDone := make(chan sumResult, 1)
	go func() {
		if byteSums {
			// The files do not change under the export lock: cksum on
			// this host reads them (from the page cache, at memory speed)
			// while they stream, and verifyRemote compares with cksum on
			// the primary's host. Small files are read back as they are
			// written (putSmall).
			if len(cksummed) == 0 {
				sumDone <- sumResult{}
				return
			}
			sums, err := localCksums(sumCtx, cksummed)
			sumDone <- sumResult{sums, err}
			return
		}
		sums, err := checksums(sumCtx, rep.conn, s.cfg.Schema, live)
		sumDone <- sumResult{sums, err}
	}()
	streamErr := s.stream(ctx, files, log)
	if streamErr == nil && s.testHookShipped != nil {
		s.testHookShipped()
	}
	if streamErr != nil {
		cancelSum()
	}
	res := <-sumDone
	if streamErr != nil {
		if res.err != nil && !byteSums {
			rep.bad = true // cancelled mid-query
		}
		return "", streamErr
	}
	if res.err != nil {
		return "", fmt.Errorf("checksum result tables on the replica: %w", res.err)
	}
	if byteSums {
		if len(cksummed) > 0 {
			if err := s.verifyRemote(ctx, cksummed, res.sums); err != nil {
				return "", err
			}
		}
	} else {
		for _, t := range tables {
			sum, ok := res.sums[t.live]
			if !ok {
				return "", fmt.Errorf("checksum of %s on the replica: %w", t.live, ErrTableMissing)
			}
			t.sum = sum
		}
	}

	if s.cfg.BackupDir != "" {
		if backup, err = s.backupFiles(ctx, p.TopicID, p.Token, tables); err != nil {
			// A backup is a convenience; the publish does not depend on it.
			log.WarnContext(ctx, "local backup failed; shipping without it", "err", err)
			backup = ""
		}
	}

	locked = false
	if _, err := rep.conn.ExecContext(ctx, unlockSQL); err != nil {
		rep.bad = true
		return backup, fmt.Errorf("unlock result tables on the replica: %w", err)
	}
	return backup, nil
}

// checkReplicaTables fails unless every table exists on the replica as a
// plain MyISAM base table; export asks it why a table could not be
// exported.
func (s *Shipper) checkReplicaTables(ctx context.Context, conn *sql.Conn, tables []*stagedTable) error {
	var args []any
	for _, t := range tables {
		args = append(args, s.cfg.Schema, t.live)
	}
	rows, err := conn.QueryContext(ctx, unionAll(replicaTablesSQL, len(tables)), args...)
	if err != nil {
		return fmt.Errorf("look up result tables on the replica: %w", err)
	}
	defer rows.Close()
	type info struct{ typ, engine, options sql.NullString }
	found := map[string]info{}
	for rows.Next() {
		var name string
		var i info
		if err := rows.Scan(&name, &i.typ, &i.engine, &i.options); err != nil {
			return fmt.Errorf("look up result tables on the replica: %w", err)
		}
		found[name] = i
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("look up result tables on the replica: %w", err)
	}
	for _, t := range tables {
		i, ok := found[t.live]
		switch {
		case !ok:
			return fmt.Errorf("%w: %s.%s does not exist (did the procedure create it?)", ErrTableMissing, s.cfg.Schema, t.live)
		case i.typ.String != "BASE TABLE":
			return fmt.Errorf("%w: %s.%s is a %s", ErrNotMyISAM, s.cfg.Schema, t.live, strings.ToLower(i.typ.String))
		case !strings.EqualFold(i.engine.String, "MyISAM"):
			return fmt.Errorf("%w: %s.%s uses ENGINE=%s; result tables must be ENGINE=MyISAM so their files can be shipped", ErrNotMyISAM, s.cfg.Schema, t.live, i.engine.String)
		case strings.Contains(strings.ToLower(i.options.String), "partitioned"):
			return fmt.Errorf("%w: %s.%s is partitioned; result tables must not be", ErrNotMyISAM, s.cfg.Schema, t.live)
		}
	}
	return nil
}

// checksums runs CHECKSUM TABLE … EXTENDED (always reading the rows, never
// a stored live checksum, which would only compare a header that was
// copied byte for byte) and maps table name to checksum. A table the server
// cannot open has no entry.
func checksums(ctx context.Context, conn *sql.Conn, schema string, names []string) (map[string]string, error) {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = ident.Qualified(schema, n)
	}
	rows, err := conn.QueryContext(ctx, fmt.Sprintf(checksumSQL, strings.Join(q, ", ")))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var table string
		var sum sql.NullString
		if err := rows.Scan(&table, &sum); err != nil {
			return nil, err
		}
		if !sum.Valid {
			continue
		}
		out[table[strings.IndexByte(table, '.')+1:]] = sum.String
	}
	return out, rows.Err()
}

// stream copies the files, data files first and .frm files last, and
// retries once on a new connection when the connection dropped. A stall
// (ErrStalled: the link was abandoned) is not retried: the server stopped
// answering, and dialling it again now would only add the dial's timeout
// before the claim is released; the next run dials.
func (s *Shipper) stream(ctx context.Context, files []*stagedFile, log *slog.Logger) error {
	l, err := s.link(ctx)
	if err != nil {
		return err
	}
	if s.testHookStream != nil {
		s.testHookStream(0)
	}
	err = putAll(ctx, s.putter(l), files)
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrStalled) && connLost(l, err) {
		log.WarnContext(ctx, "ssh connection lost during the transfer; dialling again and retrying once", "err", err)
		l2, derr := s.redial(ctx, l)
		if derr != nil {
			return fmt.Errorf("%w (dialling again failed: %w)", err, derr)
		}
		if s.testHookStream != nil {
			s.testHookStream(1)
		}
		err = putAll(ctx, s.putter(l2), files)
	}
	return err
}

// putter is what the copy of a file needs from the Shipper: the link, the
// step bounds, whether to fsync, and the tests' hook.
type putter struct {
	l     *link
	stall time.Duration
	bulk  func(size int64) time.Duration
	sync  bool
	// written, if set, hears each file once its bytes are written and
	// before it is read back or synced (tests).
	written func(remote string)
}

func (s *Shipper) putter(l *link) *putter {
	return &putter{
		l: l, stall: s.cfg.SSH.StallTimeout, bulk: s.bulkTimeout,
		sync: !s.cfg.NoSync && l.fsync, written: s.testHookWritten,
	}
}

// putAll copies files, the data and index files first and the .frm
// files last, then syncs them all.
func putAll(ctx context.Context, p *putter, files []*stagedFile) error {
	var data, frm []*stagedFile
	for _, f := range files {
		if f.frm {
			frm = append(frm, f)
		} else {
			data = append(data, f)
		}
	}
	if err := putParallel(ctx, p, data); err != nil {
		return err
	}
	if err := putParallel(ctx, p, frm); err != nil {
		return err
	}
	if !p.sync {
		return nil
	}
	return syncAll(ctx, p, files)
}

// putParallel copies files, fileParallelism at a time; the first failure
// stops the others.
func putParallel(ctx context.Context, p *putter, files []*stagedFile) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, fileParallelism)
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := putFile(ctx, p, f); err != nil {
				errs[i] = err
				cancel()
			}
		}()
	}
	wg.Wait()
	// Report the cause, not the cancellations it triggered.
	var first error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// putFile streams one local file to its remote path (never buffering it
// whole) and checks that every byte was written and acknowledged and that
// Close succeeded: with the SSH transport's integrity that is the copy
// (putAll syncs it afterwards). A readBack file is then read back over the
// same handle and compared; the others are verified after the transfer
// (cksum or CHECKSUM TABLE). A chmod, when configured, runs concurrently
// with the writes. Every SFTP call runs under a watchdog (putter.stall
// without progress; a stream makes progress with every chunk) that
// abandons the link when it expires.
func putFile(ctx context.Context, p *putter, f *stagedFile) error {
	c := p.l.sftp
	src, err := os.Open(f.local)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.local, err)
	}
	defer src.Close()
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if f.readBack {
		flags = os.O_RDWR | os.O_CREATE | os.O_TRUNC
	}
	var dst *sftp.File
	err = p.l.step("create "+f.remote, p.stall, func() (err error) { dst, err = c.OpenFile(f.remote, flags); return err })
	if err != nil {
		return fmt.Errorf("create %s over sftp: %w", f.remote, err)
	}
	chmod := make(chan error, 1)
	if f.mode != 0 {
		go func() {
			chmod <- p.l.step("chmod "+f.remote, p.stall, func() error { return c.Chmod(f.remote, f.mode) })
		}()
	} else {
		chmod <- nil
	}
	var n int64
	if f.size <= smallFile {
		n, err = putSmall(ctx, p, dst, src, f)
	} else {
		w := p.l.watch("write "+f.remote, p.stall)
		n, err = dst.ReadFrom(&ctxReader{err: ctx.Err, r: src, size: f.size, progress: w.kick})
		err = w.done(err)
		if err == nil && p.written != nil {
			p.written(f.remote)
		}
		if err == nil && f.readBack {
			err = compareStreams(ctx, p, dst, src, f.size)
		}
	}
	if cerr := p.l.step("close "+f.remote, p.stall, dst.Close); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if cerr := <-chmod; err == nil && cerr != nil {
		err = fmt.Errorf("chmod %o: %w", f.mode, cerr)
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s over sftp: %w", f.local, f.remote, err)
	}
	if n != f.size {
		return fmt.Errorf("copy %s to %s: wrote %d bytes, the file has %d", f.local, f.remote, n, f.size)
	}
	return nil
}

// syncAll syncs the written files on the primary's host
// (fsync@openssh.com), all at once: a journalling filesystem commits
// concurrent fsyncs together, so a topic's files cost about one commit
// instead of one per round of putParallel (measured with BenchmarkShip:
// see Config.NoSync). Each file is opened again read-only for it: fsync
// flushes the file, whichever descriptor asks. Every call has the bulk
// bound of the file's size.
func syncAll(ctx context.Context, p *putter, files []*stagedFile) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Go(func() {
			var h *sftp.File
			err := p.l.step("open "+f.remote+" to fsync it", p.stall, func() (err error) { h, err = p.l.sftp.Open(f.remote); return err })
			if err == nil {
				err = p.l.step("fsync "+f.remote, p.bulk(f.size), h.Sync)
				if cerr := p.l.step("close "+f.remote, p.stall, h.Close); err == nil {
					err = cerr
				}
			}
			if err != nil {
				errs[i] = fmt.Errorf("fsync %s on the primary's host: %w", f.remote, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// smallFile is the size up to which a file goes in one write from a pooled
// buffer (and, with VerifyBytes, is read back in one read): sftp's
// ReadFrom allocates a whole packet (255 KiB with OpenSSH) per file, which
// for the small tables of a typical topic made the garbage collector a
// tenth of the worker's CPU.
const smallFile = 64 << 10

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallFile+1); return &b }}

// putSmall copies a file of f.size bytes (at most smallFile) with one
// write and, for a readBack file, reads it back and compares.
func putSmall(ctx context.Context, p *putter, dst *sftp.File, src io.Reader, f *stagedFile) (int64, error) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	// One byte more than expected tells a file that grew from one that
	// did not (neither can happen under the export lock).
	n, err := io.ReadFull(src, (*bp)[:f.size+1])
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		if err == nil {
			return 0, fmt.Errorf("the file has more than the %d bytes it had", f.size)
		}
		return 0, err
	}
	sent := (*bp)[:n]
	var m int
	err = p.l.step("write "+f.remote, p.stall, func() (err error) { m, err = dst.Write(sent); return err })
	if err != nil {
		return int64(m), err
	}
	if p.written != nil {
		p.written(f.remote)
	}
	if !f.readBack {
		return int64(m), nil
	}
	return int64(m), compareStreams(ctx, p, dst, bytes.NewReader(sent), int64(len(sent)))
}

// compareStreams reads a file back through its SFTP handle, a chunk at a
// time (never the whole file in memory, each read under the stall bound),
// and compares it with want, the bytes sent: the local file read again for
// a big file, the sent buffer for a small one.
func compareStreams(ctx context.Context, p *putter, dst *sftp.File, want io.ReaderAt, size int64) error {
	a, b := smallBufs.Get().(*[]byte), smallBufs.Get().(*[]byte)
	defer smallBufs.Put(a)
	defer smallBufs.Put(b)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(smallFile), size-off))
		got, sent := (*a)[:n], (*b)[:n]
		var k int
		err := p.l.step("read back "+dst.Name(), p.stall, func() (err error) { k, err = dst.ReadAt(got, off); return err })
		if k != n {
			return fmt.Errorf("read back at %d: %d of %d bytes: %w", off, k, n, err)
		}
		if k, err := want.ReadAt(sent, off); k != n {
			return fmt.Errorf("read the sent bytes again at %d: %d of %d bytes: %w", off, k, n, err)
		}
		if !bytes.Equal(got, sent) {
			return fmt.Errorf("%w: %s: the bytes read back from the primary's host at %d differ from those sent", ErrChecksumMismatch, dst.Name(), off)
		}
		off += int64(n)
	}
	return nil
}

// ctxReader stops a copy when its context ends, and reports progress (each
// read means earlier writes were acknowledged: pkg/sftp keeps a bounded
// number in flight). Size lets sftp's ReadFrom pipeline the writes.
type ctxReader struct {
	err      func() error
	r        io.Reader
	size     int64
	progress func()
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.err(); err != nil {
		return 0, err
	}
	c.progress()
	return c.r.Read(p)
}

func (c *ctxReader) Size() int64 { return c.size }

// publish runs steps 3 and 4 on the primary. It reports whether the swap
// happened, and the swapped-out tables the caller drops once the lock is
// released; after the swap, err can only be a Commit failure. A swap whose
// RENAME waits Config.LockWait for its metadata locks in vain (a long query
// or an open transaction holds a live table) is tried again after a pause,
// Config.SwapTries times in all, and then fails with ErrTableBusy.
func (s *Shipper) publish(ctx context.Context, prim *session, p *ShipParams, tables []*stagedTable, dropped <-chan struct{}, log *slog.Logger) (published bool, old []string, err error) {
	tmp := make([]string, len(tables))
	for i, t := range tables {
		tmp[i] = t.tmp
	}
	if err := s.verifyPrimary(ctx, prim, tables, tmp); err != nil {
		return false, nil, err
	}
	start := time.Now()
	for try := 1; ; try++ {
		var busy bool
		published, old, busy, err = s.swap(ctx, prim, p, tables, dropped, log)
		if !busy {
			return published, old, err
		}
		if try >= s.cfg.SwapTries {
			return false, nil, fmt.Errorf("%w: %s: a long query, an open transaction or a backup on the primary held them through %d tries of the swap over %v, each waiting %v for their metadata locks; nothing published, readers kept the old tables: %w",
				ErrTableBusy, s.displayList(tables), try, time.Since(start).Round(100*time.Millisecond), s.cfg.LockWait, err)
		}
		pause := s.cfg.swapPause(try)
		log.InfoContext(ctx, "result table busy: a query holds it; the swap gave way and tries again",
			"tables", s.displayList(tables), "try", try, "tries", s.cfg.SwapTries, "retry_in", pause)
		if err := sleepCtx(ctx, pause); err != nil {
			return false, nil, fmt.Errorf("wait to retry the swap of a busy result table: %w", err)
		}
	}
}

// swap makes one try of the fenced swap: GET_LOCK, Fence, one RENAME TABLE
// that waits at most Config.LockWait for its metadata locks, the replica's
// drop, Commit, RELEASE_LOCK. busy reports a RENAME that gave up waiting:
// then nothing was renamed, the readers queued behind it go on with the old
// tables, and the lock is released before the caller's pause, so the
// reaper and an operator's release are kept out for one try at most, never
// for the whole series (the fence is taken again with the lock next time).
func (s *Shipper) swap(ctx context.Context, prim *session, p *ShipParams, tables []*stagedTable, dropped <-chan struct{}, log *slog.Logger) (published bool, old []string, busy bool, err error) {
	timeout := cmp.Or(p.LockTimeout, DefaultLockTimeout)
	var got sql.NullInt64
	if err := prim.conn.QueryRowContext(ctx, getLockSQL, p.LockName, timeout.Seconds()).Scan(&got); err != nil {
		prim.bad = true // the lock may have been granted; closing the session frees it
		return false, nil, false, fmt.Errorf("take publish lock %q on the primary: %w", p.LockName, err)
	}
	if !got.Valid || got.Int64 != 1 {
		return false, nil, false, fmt.Errorf("%w: %q is held by another session (the reaper or another publisher) after %v", ErrLockTimeout, p.LockName, timeout)
	}
	defer func() {
		cctx, cancel := cleanup.Context(ctx)
		defer cancel()
		var rel sql.NullInt64
		if rerr := prim.conn.QueryRowContext(cctx, releaseLockSQL, p.LockName).Scan(&rel); rerr != nil || rel.Int64 != 1 {
			prim.bad = true
			log.WarnContext(cctx, "release publish lock; dropping the session instead", "lock", p.LockName, "err", rerr)
		}
	}()

	if err := p.Fence(ctx); err != nil {
		return false, nil, false, fmt.Errorf("%w: topic %d, claim token %d: %w", ErrFenced, p.TopicID, p.Token, err)
	}

	// The server gives up each RENAME after LockWait (twice for a first
	// publish), well before this context ends: a client that gave up
	// first would leave the statement waiting, and stalling readers, in
	// the server, and maybe renaming after all.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), swapTimeout+2*s.cfg.LockWait)
	defer cancel()
	live := make([]string, len(tables))
	for i, t := range tables {
		live[i] = t.live
	}
	// Almost every publish replaces tables that are live already (a
	// recompute): swap all of them in one statement and look up which
	// exist only when one does not (the topic's first publish). RENAME
	// TABLE is atomic: when it fails, nothing was renamed.
	pairs, old := s.swapPairs(tables, live)
	err = s.execBounded(sctx, prim.conn, fmt.Sprintf(renameSQL, strings.Join(pairs, ", ")))
	if isNoSuchTable(err) {
		var existing []string
		if existing, err = s.existingTables(sctx, prim.conn, live); err != nil {
			return false, nil, false, err
		}
		pairs, old = s.swapPairs(tables, existing)
		err = s.execBounded(sctx, prim.conn, fmt.Sprintf(renameSQL, strings.Join(pairs, ", ")))
	}
	if isLockWaitTimeout(err) {
		return false, nil, true, fmt.Errorf("swap result tables in on the primary: %w", err)
	}
	if err != nil {
		return false, nil, false, fmt.Errorf("swap result tables in on the primary: %w", err)
	}
	// The replica's drop, started before the checksum and bounded by its
	// own cleanup timeout, must be over before Commit can make the topic
	// claimable again: a run of the same topic on this replica,
	// re-requested meanwhile, would otherwise have its fresh tables
	// dropped under it. Waiting here, after the swap, keeps the drop in
	// the shadow of the primary's checksum, lock and RENAME.
	<-dropped
	if p.Commit != nil {
		if err := p.Commit(sctx); err != nil {
			return true, old, false, fmt.Errorf("%w: %w", ErrCommit, err)
		}
	}
	return true, old, false, nil
}

// execBounded runs a DDL statement on the primary that waits at most
// Config.LockWait for its metadata locks (SET STATEMENT lock_wait_timeout
// … FOR: nothing is left in the session for the pool). A RENAME or DROP
// queued for a table's metadata lock makes every later query of that table
// queue behind it; the bound is what keeps a long reader from stalling all
// the others.
func (s *Shipper) execBounded(ctx context.Context, conn *sql.Conn, stmt string) error {
	_, err := conn.ExecContext(ctx, fmt.Sprintf(boundedSQL, int64(s.cfg.LockWait/time.Second), stmt))
	return err
}

// dropBounded drops names on the primary, each try waiting at most
// Config.LockWait for the metadata locks, again after the swap's pauses, at
// most tries times and while ctx leaves time for a whole try. Nothing
// queries a swapped-out or staging table, but a backup (FLUSH TABLES WITH
// READ LOCK, BACKUP STAGE) or a LOCK TABLES of the schema can hold it;
// unbounded, the DROP would hold up the dropper, and would go on waiting in
// the server after its client gave up.
func (s *Shipper) dropBounded(ctx context.Context, conn *sql.Conn, names []string, tries int) error {
	stmt := fmt.Sprintf(dropSQL, s.qualifiedList(names))
	for try := 1; ; try++ {
		err := s.execBounded(ctx, conn, stmt)
		if err == nil || !isLockWaitTimeout(err) || try >= tries {
			return err
		}
		pause := s.cfg.swapPause(try)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < pause+s.cfg.LockWait {
			return err
		}
		if sleepCtx(ctx, pause) != nil {
			return err
		}
	}
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

// verifyPrimary checks the staged tables on the primary before the swap:
// with VerifyBytes (the bytes are verified already) that the server opens
// them; otherwise that CHECKSUM TABLE matches the replica's.
func (s *Shipper) verifyPrimary(ctx context.Context, prim *session, tables []*stagedTable, tmp []string) error {
	if s.cfg.Verify == VerifyBytes {
		var probes []string
		for _, n := range tmp {
			probes = append(probes, "(SELECT 1 FROM "+s.qualified(n)+" LIMIT 0)")
		}
		if _, err := prim.conn.ExecContext(ctx, "DO /* nonqueue */ "+strings.Join(probes, ", ")); err != nil {
			return fmt.Errorf("%w: the primary cannot open the shipped tables: %w", ErrChecksumMismatch, err)
		}
		return nil
	}
	sums, err := checksums(ctx, prim.conn, s.cfg.Schema, tmp)
	if err != nil {
		return fmt.Errorf("checksum shipped tables on the primary: %w", err)
	}
	for _, t := range tables {
		got, ok := sums[t.tmp]
		if !ok {
			return fmt.Errorf("%w: %s (shipped as %s) cannot be opened on the primary", ErrChecksumMismatch, t.live, t.tmp)
		}
		if got != t.sum {
			return fmt.Errorf("%w: %s: replica %s, primary %s (shipped as %s)", ErrChecksumMismatch, t.live, t.sum, got, t.tmp)
		}
	}
	return nil
}

// dropSwappedOut drops tables a publish swapped out, bounded as
// dropBounded (ctx, a cleanup context, allows about three tries). A failure
// is logged, not returned: CleanupPrimary drops what is left.
func (s *Shipper) dropSwappedOut(ctx context.Context, conn *sql.Conn, names []string, log *slog.Logger) error {
	err := s.dropBounded(ctx, conn, names, s.cfg.SwapTries)
	if err != nil {
		log.WarnContext(ctx, "drop swapped-out tables on the primary; CleanupPrimary will", "tables", names, "err", err)
	}
	return err
}

// swapPairs is the RENAME TABLE list that moves every table of existing
// aside (the swapped-out names it also returns) and every staging table in.
func (s *Shipper) swapPairs(tables []*stagedTable, existing []string) (pairs, old []string) {
	for _, t := range tables {
		if slices.Contains(existing, t.live) {
			pairs = append(pairs, s.qualified(t.live)+" TO "+s.qualified(t.old))
			old = append(old, t.old)
		}
		pairs = append(pairs, s.qualified(t.tmp)+" TO "+s.qualified(t.live))
	}
	return pairs, old
}

// isLockWaitTimeout reports MySQL error 1205 (ER_LOCK_WAIT_TIMEOUT): for
// a RENAME or DROP of MyISAM tables, lock_wait_timeout ran out waiting for
// a metadata lock, and the statement did nothing.
func isLockWaitTimeout(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1205
}

// isNoSuchTable reports MySQL error 1146 (ER_NO_SUCH_TABLE).
func isNoSuchTable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}

// existingTables returns which of names exist in the result schema on the
// server of conn, in the order of names (exact case).
func (s *Shipper) existingTables(ctx context.Context, conn *sql.Conn, names []string) ([]string, error) {
	var args []any
	for _, n := range names {
		args = append(args, s.cfg.Schema, n)
	}
	rows, err := conn.QueryContext(ctx, unionAll(existingTablesSQL, len(names)), args...)
	if err != nil {
		return nil, fmt.Errorf("look up tables on the primary: %w", err)
	}
	defer rows.Close()
	found := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, fmt.Errorf("look up tables on the primary: %w", err)
		}
		found[n] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up tables on the primary: %w", err)
	}
	var out []string
	for _, n := range names {
		if found[n] {
			out = append(out, n)
		}
	}
	return out, nil
}

// removeStaging drops the staging tables on the primary and removes any
// file left under their names, on a detached context. It uses the pinned
// session while that still works (a pool of one connection must not wait
// for itself) and a new one otherwise. Failures are logged: CleanupPrimary
// catches what is left.
func (s *Shipper) removeStaging(ctx context.Context, prim *session, primary *sql.DB, tables []*stagedTable, log *slog.Logger) {
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
	if err != nil {
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

// cksumCmd is the command line that prints "CRC SIZE NAME" per file, the
// same program on both hosts so the two outputs compare as text.
func cksumCmd(paths []string) string {
	cmd := "cksum --"
	for _, p := range paths {
		cmd += " " + shellQuote(p)
	}
	return cmd
}

// parseCksum maps each file named in cksum's output to "CRC SIZE".
func parseCksum(out []byte) map[string]string {
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.SplitN(line, " ", 3); len(f) == 3 {
			got[f[2]] = f[0] + " " + f[1]
		}
	}
	return got
}

// localCksums runs cksum on this host over the files' local paths.
func localCksums(ctx context.Context, files []*stagedFile) (map[string]string, error) {
	args := []string{"--"}
	for _, f := range files {
		args = append(args, f.local)
	}
	out, err := exec.CommandContext(ctx, "cksum", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("cksum on this host (verify = %q needs coreutils here too): %w", VerifyBytes, err)
	}
	return parseCksum(out), nil
}

// verifyRemote runs cksum on the primary's host over an SSH exec session
// and compares every shipped file's CRC and size with local's (the files
// as read on the replica host).
func (s *Shipper) verifyRemote(ctx context.Context, files []*stagedFile, local map[string]string) error {
	remote := make([]string, len(files))
	for i, f := range files {
		remote[i] = f.remote
	}
	var size int64
	for _, f := range files {
		size += f.size
	}
	out, err := s.primaryExec(ctx, cksumCmd(remote), size)
	if err != nil {
		return fmt.Errorf("verify shipped files: cksum on the primary's host (needs a shell there; or set verify = %q): %w", VerifyChecksum, err)
	}
	got := parseCksum(out)
	for _, f := range files {
		want, ok := local[f.local]
		if !ok || !strings.HasSuffix(want, " "+strconv.FormatInt(f.size, 10)) {
			return fmt.Errorf("%w: %s: cksum on this host gave %q, %d bytes were sent", ErrChecksumMismatch, f.local, want, f.size)
		}
		if got[f.remote] != want {
			return fmt.Errorf("%w: %s: %s here, the primary's host has %q", ErrChecksumMismatch, f.remote, want, got[f.remote])
		}
	}
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// CheckVerify says how shipped files will be verified, for `nonqueue
// check`. With VerifyBytes it probes cksum on both hosts (one SSH exec):
// without it big files are read back over SFTP instead, which works but
// sends each of them twice; that is said, not returned as an error.
func (s *Shipper) CheckVerify(ctx context.Context) (string, error) {
	if s.cfg.Verify != VerifyBytes {
		return "verify = " + s.cfg.Verify + ": CHECKSUM TABLE on both servers", nil
	}
	if err := s.probeCksum(ctx); err != nil {
		if ctx.Err() != nil {
			return "", err
		}
		return fmt.Sprintf("verify = %s: files read back over SFTP; files over %d KiB too, since %v", VerifyBytes, smallFile>>10, err), nil
	}
	return fmt.Sprintf("verify = %s: files up to %d KiB read back over SFTP, bigger ones compared by cksum on both hosts", VerifyBytes, smallFile>>10), nil
}

// probeCksum runs cksum here and, over an SSH exec session, on the
// primary's host.
func (s *Shipper) probeCksum(ctx context.Context) error {
	if _, err := exec.LookPath("cksum"); err != nil {
		return fmt.Errorf("cksum cannot run on this host: %w", err)
	}
	if _, err := s.primaryExec(ctx, "cksum -- /dev/null", 0); err != nil {
		return fmt.Errorf("cksum cannot run on the primary's host (it needs a shell and coreutils there): %w", err)
	}
	return nil
}

// primaryExec runs cmd on the primary's host over one SSH exec session of
// the shared connection, closed when ctx ends, and returns its standard
// output; a failure carries what it wrote to standard error. The command
// reads size bytes there: it has the bulk bound of that size, after which
// the link is abandoned (the keepalive catches a dead server sooner).
func (s *Shipper) primaryExec(ctx context.Context, cmd string, size int64) ([]byte, error) {
	l, err := s.link(ctx)
	if err != nil {
		return nil, err
	}
	var sess *ssh.Session
	err = l.step("open an ssh session", s.cfg.SSH.StallTimeout, func() (err error) { sess, err = l.ssh.NewSession(); return err })
	if err != nil {
		return nil, fmt.Errorf("open an ssh session: %w", err)
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	var out []byte
	name, _, _ := strings.Cut(cmd, " ")
	err = l.step(name+" on the primary's host", s.bulkTimeout(size), func() (err error) { out, err = sess.Output(cmd); return err })
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
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

// cksumUsable reports whether big files can be compared by cksum on both
// hosts. The first call with a big file probes (one SSH exec) and the
// answer is kept for the Shipper's life; a probe cut short by ctx is not
// kept.
func (s *Shipper) cksumUsable(ctx context.Context) bool {
	s.cksumMu.Lock()
	defer s.cksumMu.Unlock()
	if s.cksumKnown {
		return s.cksumOK
	}
	err := s.probeCksum(ctx)
	if ctx.Err() != nil || errors.Is(err, ErrStalled) {
		return false // says nothing about cksum: probe again next time
	}
	s.cksumKnown, s.cksumOK = true, err == nil
	if err != nil {
		s.logger.WarnContext(ctx, "verify = bytes: files over 64 KiB are read back over SFTP instead of compared by cksum (each is sent twice)", "err", err)
	}
	return s.cksumOK
}
