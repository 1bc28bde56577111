package transfer

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/nonqueue/nonqueue/internal/cleanup"
	"github.com/nonqueue/nonqueue/internal/ident"
)

// Export, the first phase of Ship: on the replica, check and flush the
// result tables for export, list their files, and hold the read lock while
// the copy and its verification run (see Ship).

// myisamExts are a MyISAM table's files; the .frm goes last, so an
// interrupted copy never leaves a .frm next to incomplete data.
var myisamExts = []string{".MYD", ".MYI", ".frm"}

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
	v := s.verification()
	var files []*stagedFile
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
			ship.Bytes += f.size
			t.files = append(t.files, f)
			files = append(files, f)
		}
	}

	cksummed := v.plan(ctx, files)

	// The replica's side of the verification (cksum of the big files on
	// this host, or CHECKSUM TABLE in the locked session) runs while the
	// files stream: both only read.
	sumCtx, cancelSum := context.WithCancel(ctx)
	defer cancelSum()
	type sumResult struct {
		sums map[string]string
		err  error
	}
	sumDone := make(chan sumResult, 1)
	go func() {
		sums, err := v.replicaSums(sumCtx, rep, live, cksummed)
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
		if res.err != nil && v.queriesReplica() {
			rep.bad = true // cancelled mid-query
		}
		return "", streamErr
	}
	if res.err != nil {
		return "", fmt.Errorf("checksum result tables on the replica: %w", res.err)
	}
	if err := v.afterCopy(ctx, tables, cksummed, res.sums); err != nil {
		return "", err
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
