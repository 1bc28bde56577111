package sandbox

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"database/sql"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// requireBinaries skips locally but fails in CI, where a missing server is a
// broken image rather than a developer machine without MariaDB.
func requireBinaries(t *testing.T) {
	t.Helper()
	if err := Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func up(t *testing.T, dir string, replicas int) *Sandbox {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	sb, err := Up(ctx, Options{Dir: dir, Replicas: replicas, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up with %d replicas took %s", replicas, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := sb.Down(ctx); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
	})
	return sb
}

func openDB(t *testing.T, sb *Sandbox, srv Server, dbName string) *sql.DB {
	t.Helper()
	cfg := sb.MySQLConfig(srv)
	cfg.DBName = dbName
	cfg.Timeout = 5 * time.Second
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db
}

// waitPIDsGone polls (bounded) until every pid is fully gone: Down returns
// once the processes have exited; reaping by this test binary (their parent)
// happens right after.
func waitPIDsGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		var err error
		for i := 0; i < 200; i++ {
			if err = syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		if !errors.Is(err, syscall.ESRCH) {
			t.Errorf("pid %d still exists after Down (kill 0: %v)", pid, err)
		}
	}
}

func TestUpReplicateSFTPDown(t *testing.T) {
	requireBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	sb := up(t, dir, 2)

	if len(sb.Replicas) != 2 || sb.Primary.Name != "primary" || sb.Replicas[1].Name != "replica2" {
		t.Fatalf("unexpected topology: %+v", sb)
	}
	if got := sb.Servers(); len(got) != 3 || got[0].Name != "primary" || got[2].Name != "replica2" {
		t.Fatalf("Servers() = %+v", got)
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if loaded.Primary.PID != sb.Primary.PID || loaded.SSH.PID != sb.SSH.PID || loaded.Password != sb.Password {
		t.Fatalf("Load = %+v, want %+v", loaded, sb)
	}
	if st, err := os.Stat(filepath.Join(dir, "sandbox.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("sandbox.json: %v mode %v, want 0600", err, st.Mode())
	}
	// A second Up on a running sandbox must refuse.
	if _, err := Up(ctx, Options{Dir: dir, Replicas: 2}); err == nil || !strings.Contains(err.Error(), "already runs a sandbox") {
		t.Fatalf("second Up on a running Dir: err = %v, want refusal", err)
	}

	// Replication of an application write.
	p := openDB(t, sb, sb.Primary, "")
	for _, q := range []string{
		"CREATE DATABASE nq_sandbox_t",
		"CREATE TABLE nq_sandbox_t.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB",
		"INSERT INTO nq_sandbox_t.t VALUES (1, 'hello')",
	} {
		if _, err := p.ExecContext(ctx, q); err != nil {
			t.Fatalf("primary %s: %v", q, err)
		}
	}
	var pos string
	if err := p.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		t.Fatal(err)
	}
	for _, srv := range sb.Servers() {
		db := openDB(t, sb, srv, "")
		if srv.Name != "primary" {
			var res sql.NullInt64
			if err := db.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, 30)", pos).Scan(&res); err != nil || !res.Valid || res.Int64 != 0 {
				t.Fatalf("%s: MASTER_GTID_WAIT(%q) = %v, %v", srv.Name, pos, res, err)
			}
			var v string
			if err := db.QueryRowContext(ctx, "SELECT v FROM nq_sandbox_t.t WHERE id = 1").Scan(&v); err != nil || v != "hello" {
				t.Fatalf("%s: row = %q, %v", srv.Name, v, err)
			}
		}
		var (
			serverID             uint32
			logBin, slaveUpdates int
			format               string
		)
		if err := db.QueryRowContext(ctx, "SELECT @@server_id, @@log_bin, @@binlog_format, @@log_slave_updates").
			Scan(&serverID, &logBin, &format, &slaveUpdates); err != nil {
			t.Fatalf("%s: %v", srv.Name, err)
		}
		if serverID != srv.ServerID || logBin != 1 || format != "ROW" || slaveUpdates != 1 {
			t.Errorf("%s: server_id=%d (want %d) log_bin=%d binlog_format=%s log_slave_updates=%d",
				srv.Name, serverID, srv.ServerID, logBin, format, slaveUpdates)
		}
		var engines int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.ENGINES
			WHERE ENGINE IN ('BLACKHOLE', 'FEDERATED') AND SUPPORT IN ('YES', 'DEFAULT')`).Scan(&engines); err != nil {
			t.Fatal(err)
		}
		if engines != 2 {
			t.Errorf("%s: BLACKHOLE and FEDERATED(X) engines: %d of 2 available", srv.Name, engines)
		}
	}

	// SFTP into the primary's datadir with strict host-key checking.
	signer := mustSigner(t, sb.SSH.KeyFile)
	addr := net.JoinHostPort(sb.SSH.Host, strconv.Itoa(sb.SSH.Port))
	hostCB, err := knownhosts.New(sb.SSH.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User: sb.SSH.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: hostCB, Timeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("ssh dial: %v", err)
	}
	sc, err := sftp.NewClient(client)
	if err != nil {
		t.Fatalf("sftp: %v", err)
	}
	remote := filepath.Join(sb.Primary.Datadir, "nq_sandbox_t", "sftp_probe.bin")
	want := []byte("shipped by sftp\n")
	f, err := sc.Create(remote)
	if err != nil {
		t.Fatalf("sftp create %s: %v", remote, err)
	}
	if _, err := f.Write(want); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = sc.Open(remote)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || string(got) != string(want) {
		t.Fatalf("sftp read back %q, %v; want %q", got, err, want)
	}
	if local, err := os.ReadFile(remote); err != nil || string(local) != string(want) {
		t.Fatalf("file in datadir: %q, %v", local, err)
	}
	sc.Close()
	client.Close()

	// A known_hosts with another key for the same host must refuse.
	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := ssh.NewPublicKey(otherPub)
	if err != nil {
		t.Fatal(err)
	}
	wrongKH := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(wrongKH, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, otherKey)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrongCB, err := knownhosts.New(wrongKH)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User: sb.SSH.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: wrongCB, Timeout: 5 * time.Second,
	}); err == nil {
		c.Close()
		t.Fatal("handshake with a wrong known_hosts key succeeded")
	} else {
		var ke *knownhosts.KeyError
		if !errors.As(err, &ke) || len(ke.Want) == 0 {
			t.Fatalf("wrong known_hosts: err = %v, want a knownhosts key mismatch", err)
		}
	}

	// Down stops everything, then is idempotent.
	var pids []int
	for _, s := range sb.Servers() {
		pids = append(pids, s.PID)
	}
	pids = append(pids, sb.SSH.PID)
	if err := Down(ctx, dir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	waitPIDsGone(t, pids)
	if _, err := os.Stat(filepath.Join(dir, "sandbox.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("sandbox.json after Down: %v", err)
	}
	if _, err := os.Stat(filepath.Join(sb.Primary.Datadir, "mysql")); err != nil {
		t.Errorf("datadir should survive Down: %v", err)
	}
	if err := sb.Down(ctx); err != nil {
		t.Errorf("second Down: %v", err)
	}
	if err := Down(ctx, dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Down(dir) without sandbox.json: err = %v, want fs.ErrNotExist", err)
	}
}

func TestUpDownTwice(t *testing.T) {
	requireBinaries(t)
	dir := t.TempDir()
	for round := 1; round <= 2; round++ {
		sb := up(t, dir, 1)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		db := openDB(t, sb, sb.Replicas[0], "")
		var id uint32
		if err := db.QueryRowContext(ctx, "SELECT @@server_id").Scan(&id); err != nil || id != 1001 {
			t.Fatalf("round %d: replica server_id = %d, %v", round, id, err)
		}
		pids := []int{sb.Primary.PID, sb.Replicas[0].PID, sb.SSH.PID}
		if err := sb.Down(ctx); err != nil {
			t.Fatalf("round %d: Down: %v", round, err)
		}
		cancel()
		waitPIDsGone(t, pids)
	}
}

func TestDownMissing(t *testing.T) {
	if err := Down(context.Background(), t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Down on empty dir: %v, want fs.ErrNotExist", err)
	}
}

func TestUpRejectsBadReplicas(t *testing.T) {
	requireBinaries(t)
	for _, n := range []int{-1, 10} {
		if _, err := Up(context.Background(), Options{Dir: t.TempDir(), Replicas: n}); err == nil {
			t.Errorf("Up with %d replicas succeeded", n)
		}
	}
}

func mustSigner(t *testing.T, path string) ssh.Signer {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", path, st.Mode().Perm())
	}
	s, err := loadSigner(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUpFailureStopsEverything breaks one replica on purpose: Up must fail
// with that server's error-log tail, and leave no process of Dir behind and
// no sandbox.json.
func TestUpFailureStopsEverything(t *testing.T) {
	requireBinaries(t)
	testExtraServerArgs = func(name string) []string {
		if name == "replica2" {
			return []string{"--no-such-option-nq"}
		}
		return nil
	}
	t.Cleanup(func() { testExtraServerArgs = nil })
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sb, err := Up(ctx, Options{Dir: dir, Replicas: 2, Logger: testLogger(t)})
	if err == nil {
		sb.Down(ctx)
		t.Fatal("Up with a broken replica succeeded")
	}
	t.Logf("Up error (expected):\n%v", err)
	for _, want := range []string{"replica2", "error.log", "no-such-option-nq"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sandbox.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("sandbox.json after failed Up: %v", err)
	}
	if left := procsOf(dir); len(left) > 0 {
		t.Errorf("processes of %s left after failed Up: %v", dir, left)
	}
	// The Dir is usable again once the cause is gone.
	testExtraServerArgs = nil
	up(t, dir, 2)
}

// procsOf lists live processes whose command line names dir.
func procsOf(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && procAlive(pid, dir) {
			out = append(out, pid)
		}
	}
	return out
}

// TestTempBase: an explicit $TMPDIR wins; without one the base is a
// directory a sandbox can be made in, and /var/tmp where it takes files.
func TestTempBase(t *testing.T) {
	want := t.TempDir()
	t.Setenv("TMPDIR", want)
	if got := TempBase(); got != want {
		t.Errorf("TempBase with TMPDIR=%s = %q", want, got)
	}
	t.Setenv("TMPDIR", "")
	got := TempBase()
	dir, err := os.MkdirTemp(got, "nonqueue-tempbase-")
	if err != nil {
		t.Fatalf("TempBase %q does not take a sandbox: %v", got, err)
	}
	os.Remove(dir)
	if f, err := os.CreateTemp("/var/tmp", "nonqueue-tempbase-"); err == nil {
		f.Close()
		os.Remove(f.Name())
		if got != "/var/tmp" {
			t.Errorf("TempBase = %q, want /var/tmp (writable here)", got)
		}
	}
}

// TestRestart: a crashed primary comes back on its port with its data and
// its replica follows it again; a cleanly restarted replica catches up; Down
// stops the new processes (their PIDs are recorded).
func TestRestart(t *testing.T) {
	requireBinaries(t)
	dir := t.TempDir()
	sb := up(t, dir, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := openDB(t, sb, sb.Primary, "")
	r := openDB(t, sb, sb.Replicas[0], "")
	for _, q := range []string{"CREATE DATABASE rs", "CREATE TABLE rs.t (id INT PRIMARY KEY) ENGINE=InnoDB", "INSERT INTO rs.t VALUES (1)"} {
		if _, err := p.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := sb.Restart(ctx, "nosuch", false); err == nil {
		t.Error("Restart of an unknown server: no error")
	}
	oldPID, port := sb.Primary.PID, sb.Primary.Port
	if err := sb.Restart(ctx, "primary", true); err != nil {
		t.Fatalf("crash and restart the primary: %v", err)
	}
	if sb.Primary.PID == oldPID || sb.Primary.Port != port {
		t.Fatalf("after restart: pid %d (was %d), port %d (was %d)", sb.Primary.PID, oldPID, sb.Primary.Port, port)
	}
	waitPIDsGone(t, []int{oldPID})
	// database/sql replaces the connections the crash broke.
	if _, err := p.ExecContext(ctx, "INSERT INTO rs.t VALUES (2)"); err != nil {
		t.Fatalf("write after the primary's restart: %v", err)
	}
	waitRows := func(want int) {
		t.Helper()
		var n int
		for i := 0; i < 300; i++ {
			if err := r.QueryRowContext(ctx, "SELECT COUNT(*) FROM rs.t").Scan(&n); err == nil && n == want {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("replica has %d rows, want %d", n, want)
	}
	waitRows(2)

	oldReplica := sb.Replicas[0].PID
	if err := sb.Restart(ctx, "replica1", false); err != nil {
		t.Fatalf("restart the replica: %v", err)
	}
	waitPIDsGone(t, []int{oldReplica})
	if _, err := p.ExecContext(ctx, "INSERT INTO rs.t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	waitRows(3)

	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Primary.PID != sb.Primary.PID || loaded.Replicas[0].PID != sb.Replicas[0].PID {
		t.Errorf("sandbox.json has pids %d/%d, running %d/%d", loaded.Primary.PID, loaded.Replicas[0].PID, sb.Primary.PID, sb.Replicas[0].PID)
	}
}

// TestRestartSSH: RestartSSH kills sshd and its sessions (an established
// connection breaks) and starts it again on the same port with the same
// host key (a strict host-key check passes); the new PID is recorded, so
// Down stops it.
func TestRestartSSH(t *testing.T) {
	requireBinaries(t)
	dir := t.TempDir()
	sb := up(t, dir, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	signer, err := loadSigner(sb.SSH.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	hostCB, err := knownhosts.New(sb.SSH.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ClientConfig{User: sb.SSH.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hostCB, Timeout: 5 * time.Second}
	addr := net.JoinHostPort(sb.SSH.Host, strconv.Itoa(sb.SSH.Port))
	c, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	oldPID, port := sb.SSH.PID, sb.SSH.Port
	if err := sb.RestartSSH(ctx); err != nil {
		t.Fatalf("RestartSSH: %v", err)
	}
	if sb.SSH.PID == oldPID || sb.SSH.Port != port {
		t.Fatalf("after the restart: pid %d (was %d), port %d (was %d)", sb.SSH.PID, oldPID, sb.SSH.Port, port)
	}
	waitPIDsGone(t, []int{oldPID})
	if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err == nil {
		t.Error("a connection made before the restart still answers")
	}
	if err := sshHandshake(ctx, addr, cfg); err != nil {
		t.Fatalf("handshake after the restart: %v", err)
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.SSH.PID != sb.SSH.PID {
		t.Errorf("sandbox.json has sshd pid %d, running %d", loaded.SSH.PID, sb.SSH.PID)
	}
}
