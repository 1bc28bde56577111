package sandbox

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"
)

const (
	// serverReadyTimeout bounds waiting for a started mariadbd to accept a
	// connection; replicaTimeout bounds waiting for a replica to run and catch
	// up.
	serverReadyTimeout = 60 * time.Second
	replicaTimeout     = 30 * time.Second
	// startAttempts bounds retries when a daemon loses its port to another
	// program between our probe and its bind.
	startAttempts = 3
	// innodbLogFileSize is used both for the template and the servers, so
	// servers do not resize the redo log at first start.
	innodbLogFileSize = "64M"
)

// testExtraServerArgs lets tests break one server on purpose to exercise
// Up's failure path. Always nil outside tests.
var testExtraServerArgs func(name string) []string

func (sb *Sandbox) slot(i int) *Server {
	if i == 0 {
		return &sb.Primary
	}
	return &sb.Replicas[i-1]
}

// ensureTemplate makes Dir/template, a datadir initialised once by
// mariadb-install-db and copied per server (one install instead of N). It is
// kept for reuse by later Ups while the mariadbd binary is unchanged.
func (u *upState) ensureTemplate(ctx context.Context) error {
	dir := u.sb.Dir
	tmpl := filepath.Join(dir, "template")
	marker := filepath.Join(dir, "template.ok")
	want := templateKey(u.bin.mariadbd)
	if b, err := os.ReadFile(marker); err == nil && string(b) == want {
		if st, err := os.Stat(filepath.Join(tmpl, "mysql")); err == nil && st.IsDir() {
			return nil
		}
	}
	_ = os.Remove(marker)
	if err := os.RemoveAll(tmpl); err != nil {
		return err
	}
	tmp := tmpl + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	logPath := filepath.Join(dir, "install-db.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer lf.Close()
	// Every server of every sandbox gets a tmpdir of its own: a mariadbd
	// that starts deletes the #sql* files of its tmpdir, and in a shared
	// /tmp those were another bootstrap's temporary tables (the cause of
	// "Unknown table 'mysql.tmp_user_sys'" when test packages start
	// sandboxes in parallel).
	bootTmp := filepath.Join(dir, "install-tmp")
	if err := os.MkdirAll(bootTmp, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(bootTmp)
	args := []string{
		"--no-defaults",
		"--datadir=" + tmp,
		"--tmpdir=" + bootTmp,
		"--auth-root-authentication-method=normal",
		"--skip-test-db",
		"--innodb-log-file-size=" + innodbLogFileSize,
		// io_uring charges locked memory per user: with several servers
		// (and test packages in parallel) it runs out and a start fails.
		"--innodb-use-native-aio=0",
	}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	// One retry: under heavy load (test packages in parallel) the
	// bootstrap has been seen to fail once and then succeed (before each
	// server had its own tmpdir; kept for load alone).
	for try := 0; try < 2; try++ {
		if try > 0 {
			u.log.Warn("sandbox: mariadb-install-db failed; trying once more", "err", errorLines(logPath))
			if err := os.RemoveAll(tmp); err != nil {
				return err
			}
		}
		if err = u.installDB(ctx, args, lf, dir); err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mariadb-install-db: %w: %s", err, errorLines(logPath))
	}
	if err := os.Rename(tmp, tmpl); err != nil {
		return err
	}
	return os.WriteFile(marker, []byte(want), 0o644)
}

func (u *upState) installDB(ctx context.Context, args []string, lf *os.File, dir string) error {
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ictx, u.bin.installDB, args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = lf, lf, dir
	// mariadb-install-db is a script that runs mariadbd --bootstrap: on
	// cancellation kill the whole process group, not just the shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil && ictx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, ictx.Err())
		// SIGKILL is asynchronous: do not return (and let the caller
		// clean up) while the bootstrap server may still hold files.
		waitGroupGone(cmd.Process.Pid, killTimeout)
	}
	return err
}

// errorLines returns the [ERROR] lines of a server log (the tail of
// mariadb-install-db's output is only its generic help text).
func errorLines(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "ERROR") || strings.Contains(l, "rror:") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	if len(out) == 0 {
		return "no error line in " + path
	}
	return strings.Join(out[max(0, len(out)-8):], "; ")
}

// templateKey identifies the mariadbd build a template was made with.
func templateKey(mariadbd string) string {
	st, err := os.Stat(mariadbd)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%s %d %d euid=%d\n", mariadbd, st.Size(), st.ModTime().UnixNano(), os.Geteuid())
}

// startServer copies the template into server i's datadir (replacing any old
// one), starts mariadbd and waits until root can log in over the socket. A
// lost port race is retried on a new port.
func (u *upState) startServer(ctx context.Context, i int) error {
	u.mu.Lock()
	srv := *u.sb.slot(i)
	u.mu.Unlock()
	sdir := filepath.Dir(srv.Datadir)
	if err := os.MkdirAll(filepath.Join(sdir, "tmp"), 0o755); err != nil {
		return err
	}
	if err := os.RemoveAll(srv.Datadir); err != nil {
		return fmt.Errorf("%s: %w", srv.Name, err)
	}
	// Leftovers of a killed server would confuse the next one.
	_ = os.Remove(srv.Socket)
	_ = os.Remove(filepath.Join(sdir, "mariadbd.pid"))
	if out, err := exec.CommandContext(ctx, "cp", "-a", filepath.Join(u.sb.Dir, "template"), srv.Datadir).CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: copy template datadir: %w", srv.Name, ctx.Err())
		}
		return fmt.Errorf("%s: copy template datadir: %w: %s", srv.Name, err, strings.TrimSpace(string(out)))
	}
	errLog := filepath.Join(sdir, "error.log")
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("%s: %w", srv.Name, err)
		}
		offset := fileSize(errLog)
		d, err := startDetached(u.bin.mariadbd, serverArgs(srv, port), filepath.Join(sdir, "mariadbd.out"))
		if err != nil {
			return fmt.Errorf("%s: %w", srv.Name, err)
		}
		if err := u.update(func(sb *Sandbox) {
			s := sb.slot(i)
			s.Port, s.PID = port, d.pid
		}); err != nil {
			return err
		}
		u.log.Info("sandbox: started mariadbd", "name", srv.Name, "port", port, "pid", d.pid, "server_id", srv.ServerID)
		err = waitMariaDB(ctx, d, srv.Socket)
		if err == nil {
			u.markReady(d.pid)
			return nil
		}
		if d.hasExited() && bindFailed(errLog, offset) && attempt < startAttempts {
			u.log.Warn("sandbox: mariadbd lost its port, retrying", "name", srv.Name, "port", port)
			continue
		}
		return withLogTail(fmt.Errorf("%s (pid %d, port %d): %w", srv.Name, d.pid, port, err), errLog, offset)
	}
}

func serverArgs(srv Server, port int) []string {
	sdir := filepath.Dir(srv.Datadir)
	args := []string{"--no-defaults"}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	args = append(args,
		"--datadir="+srv.Datadir,
		"--tmpdir="+filepath.Join(sdir, "tmp"),
		"--socket="+srv.Socket,
		"--port="+strconv.Itoa(port),
		"--bind-address=127.0.0.1",
		"--pid-file="+filepath.Join(sdir, "mariadbd.pid"),
		"--log-error="+filepath.Join(sdir, "error.log"),
		"--server-id="+strconv.FormatUint(uint64(srv.ServerID), 10),
		"--log-bin=mysql-bin",
		"--binlog-format=ROW",
		// Column names in every table map event: a binlog follower
		// (nonqueue follow) maps rows by name across DDL.
		"--binlog-row-metadata=FULL",
		"--log-slave-updates=ON",
		"--gtid-strict-mode=ON",
		"--skip-name-resolve",
		"--innodb-buffer-pool-size=128M",
		"--innodb-log-file-size="+innodbLogFileSize,
		"--innodb-use-native-aio=0",
		"--innodb-flush-log-at-trx-commit=2",
		"--sync-binlog=0",
		"--max-connections=500",
		"--slave-run-triggers-for-rbr="+replicaTriggers(srv),
		"--local-infile=0",
		"--character-set-server=utf8mb4",
		"--plugin-load-add=ha_blackhole",
		"--plugin-load-add=ha_federatedx",
		"--secure-file-priv=",
	)
	// The primary's stream is GTID domain 0. Each replica writes what
	// reaches its own binary log in a domain of its own (its server_id):
	// MariaDB's DDL-log recovery binlogs a DROP cut short by a crash even
	// when it ran with sql_log_bin=0, and in domain 0 that local GTID
	// would stop replication under gtid_strict_mode (see
	// monitor.CheckLocalDomain).
	domain := 0
	if srv.Name != "primary" {
		domain = int(srv.ServerID)
		args = append(args, "--relay-log=relay-bin", "--slave-parallel-threads="+strconv.Itoa(max(srv.ParallelThreads, 0)))
		if srv.ParallelThreads > 0 {
			// Optimistic: transactions apply in parallel and a conflict
			// rolls the later one back and retries it; commits stay in
			// the primary's order, so gtid_slave_pos (what
			// MASTER_GTID_WAIT waits for) never passes a transaction that
			// is not yet committed.
			args = append(args, "--slave-parallel-mode=optimistic")
		}
	}
	args = append(args, "--gtid-domain-id="+strconv.Itoa(domain))
	if testExtraServerArgs != nil {
		args = append(args, testExtraServerArgs(srv.Name)...)
	}
	return args
}

// replicaTriggers is srv's slave_run_triggers_for_rbr. A replica of the
// primary runs its own triggers on replicated rows (the demo's Blackhole
// trick needs it: YES). In a tiered sandbox it also logs what they change
// (LOGGING) when replicas replicate from it, and those replicas take the
// changes as rows and run no trigger of their own (NO): otherwise a
// second tier would apply the middle tier's event, whose table map names
// the trigger's table too, and its own trigger on that table fails (error
// 1442).
func replicaTriggers(srv Server) string {
	switch {
	case srv.Source != "" && srv.Source != "primary":
		return "NO"
	case srv.Relay:
		return "LOGGING"
	}
	return "YES"
}

// rootConfig is root over the unix socket, no password: the administrative
// path, which needs no account setup.
func rootConfig(socket string) *mysql.Config {
	c := mysql.NewConfig()
	c.User = "root"
	c.Net = "unix"
	c.Addr = socket
	c.Timeout = 2 * time.Second
	c.ReadTimeout = 45 * time.Second
	c.WriteTimeout = 45 * time.Second
	return c
}

// waitMariaDB polls a root login over socket until it succeeds, the process
// exits, ctx ends or serverReadyTimeout passes.
func waitMariaDB(ctx context.Context, d *daemon, socket string) error {
	conn, err := mysql.NewConnector(rootConfig(socket))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(serverReadyTimeout)
	var last error
	for i := 0; i < int(serverReadyTimeout/readyPoll)+1; i++ {
		if d.hasExited() {
			return fmt.Errorf("mariadbd exited during start-up: %v", d.err)
		}
		if _, err := os.Stat(socket); err == nil {
			c, err := conn.Connect(ctx)
			if err == nil {
				c.Close()
				return nil
			}
			last = err
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.exited:
		case <-time.After(readyPoll):
		}
	}
	return fmt.Errorf("mariadbd not ready within %s (last error: %v)", serverReadyTimeout, last)
}

func openRoot(socket string) (*sql.DB, error) {
	conn, err := mysql.NewConnector(rootConfig(socket))
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	return db, nil
}

// quote returns s as a single-quoted SQL string literal. Passwords are hex,
// but escape anyway so the helper is safe for any input.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `''`, "\x00", `\0`)
	return "'" + r.Replace(s) + "'"
}

// setupReplication creates the accounts on the primary (binlogged, so the
// replicas get them by replication) and points every replica at it.
func (u *upState) setupReplication(ctx context.Context) error {
	u.mu.Lock()
	sb := *u.sb
	sb.Replicas = append([]Server(nil), u.sb.Replicas...)
	u.mu.Unlock()
	p := sb.Primary
	errLog := filepath.Join(filepath.Dir(p.Datadir), "error.log")
	db, err := openRoot(p.Socket)
	if err != nil {
		return err
	}
	defer db.Close()
	var stmts []string
	// Root keeps only its socket login: passwordless root over TCP would be
	// open to every local user.
	rows, err := db.QueryContext(ctx, "SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'")
	if err != nil {
		return withLogTail(fmt.Errorf("primary: list root accounts: %w", err), errLog, 0)
	}
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return err
		}
		stmts = append(stmts, "DROP USER IF EXISTS 'root'@"+quote(h))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, h := range []string{"127.0.0.1", "localhost"} {
		acct := quote(sb.User) + "@" + quote(h)
		stmts = append(stmts,
			"CREATE USER "+acct+" IDENTIFIED BY "+quote(sb.Password),
			"GRANT ALL PRIVILEGES ON *.* TO "+acct+" WITH GRANT OPTION")
	}
	repl := quote(sb.ReplUser) + "@'127.0.0.1'"
	stmts = append(stmts,
		"CREATE USER "+repl+" IDENTIFIED BY "+quote(sb.ReplPassword),
		"GRANT REPLICATION SLAVE ON *.* TO "+repl)
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			return withLogTail(fmt.Errorf("primary: %s: %w", redact(s), err), errLog, 0)
		}
	}
	var pos string
	if err := db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("primary: read gtid_binlog_pos: %w", err)
	}
	u.log.Debug("sandbox: primary accounts created", "gtid_binlog_pos", pos)

	// Tier by tier: a replica of a replica starts once its source has
	// applied pos, so the accounts it connects with are there (they
	// reached the source by replication).
	done := map[string]bool{p.Name: true}
	for len(done) < 1+len(sb.Replicas) {
		var wg sync.WaitGroup
		var tier []Server
		for _, r := range sb.Replicas {
			if !done[r.Name] && done[cmp.Or(r.Source, p.Name)] {
				tier = append(tier, r)
			}
		}
		if len(tier) == 0 {
			return errors.New("replication sources form no tree (a Source names no started server)")
		}
		errs := make([]error, len(tier))
		for i, r := range tier {
			src := p
			if s := sb.server(r.Source); s != nil {
				src = *s
			}
			wg.Go(func() {
				if err := startReplica(ctx, r, src, sb.ReplUser, sb.ReplPassword, pos); err != nil {
					errs[i] = withLogTail(fmt.Errorf("%s: %w", r.Name, err), filepath.Join(filepath.Dir(r.Datadir), "error.log"), 0)
					return
				}
				u.log.Info("sandbox: replica replicating", "name", r.Name, "source", src.Name, "port", r.Port, "pid", r.PID, "gtid", pos)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		for _, r := range tier {
			done[r.Name] = true
		}
	}
	return nil
}

func redact(stmt string) string {
	if i := strings.Index(stmt, "IDENTIFIED BY"); i >= 0 {
		return stmt[:i] + "IDENTIFIED BY '…'"
	}
	return stmt
}

// startReplica points r at its source p (the primary, or a replica for a
// replica of a replica) by GTID and waits until both replication threads
// run and r has applied primary position pos.
func startReplica(ctx context.Context, r, p Server, user, pass, pos string) error {
	db, err := openRoot(r.Socket)
	if err != nil {
		return err
	}
	defer db.Close()
	change := fmt.Sprintf("CHANGE MASTER TO master_host=%s, master_port=%d, master_user=%s, master_password=%s, master_use_gtid=slave_pos, master_connect_retry=1",
		quote(p.Host), p.Port, quote(user), quote(pass))
	if _, err := db.ExecContext(ctx, change); err != nil {
		return fmt.Errorf("CHANGE MASTER: %w", err)
	}
	if _, err := db.ExecContext(ctx, "START SLAVE"); err != nil {
		return fmt.Errorf("START SLAVE: %w", err)
	}
	deadline := time.Now().Add(replicaTimeout)
	var st map[string]string
	for i := 0; ; i++ {
		st, err = slaveStatus(ctx, db)
		if err != nil {
			return err
		}
		if st["Slave_IO_Running"] == "Yes" && st["Slave_SQL_Running"] == "Yes" {
			break
		}
		if st["Slave_SQL_Running"] == "No" && st["Last_SQL_Errno"] != "0" {
			return fmt.Errorf("replication SQL thread stopped: %s %s", st["Last_SQL_Errno"], st["Last_SQL_Error"])
		}
		if time.Now().After(deadline) || i > int(replicaTimeout/readyPoll)+1 {
			return fmt.Errorf("replication not running within %s: Slave_IO_Running=%s Slave_SQL_Running=%s Last_IO_Error=%q Last_SQL_Error=%q",
				replicaTimeout, st["Slave_IO_Running"], st["Slave_SQL_Running"], st["Last_IO_Error"], st["Last_SQL_Error"])
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(readyPoll):
		}
	}
	var res sql.NullInt64
	if err := db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, int(replicaTimeout/time.Second)).Scan(&res); err != nil {
		return fmt.Errorf("MASTER_GTID_WAIT(%q): %w", pos, err)
	}
	if !res.Valid || res.Int64 != 0 {
		st, _ = slaveStatus(ctx, db)
		return fmt.Errorf("replica did not reach primary position %q within %s (MASTER_GTID_WAIT=%v, Last_IO_Error=%q, Last_SQL_Error=%q)",
			pos, replicaTimeout, res, st["Last_IO_Error"], st["Last_SQL_Error"])
	}
	return nil
}

// slaveStatus returns SHOW SLAVE STATUS as column → value (empty map when
// the server is not a replica).
func slaveStatus(ctx context.Context, db *sql.DB) (map[string]string, error) {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return nil, fmt.Errorf("SHOW SLAVE STATUS: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	if rows.Next() {
		vals := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		for i, c := range cols {
			out[c] = string(vals[i])
		}
	}
	return out, rows.Err()
}
