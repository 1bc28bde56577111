package transfer_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/transfer"
)

var env *testdb.Env

func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "transfer", 1, &env)) }

// bundle is one test's world: its own result schema on the primary and the
// replica, a Shipper, and pools on both servers.
type bundle struct {
	ctx        context.Context
	schema     string
	cfg        transfer.Config
	sh         *transfer.Shipper
	primary    *sql.DB // default database = schema
	replica    *sql.DB // what Ship gets: an ordinary pool
	local      *sql.DB // replica pool with sql_log_bin=0, to write result tables like a procedure
	repDatadir string
}

func sshConfig() transfer.SSHConfig {
	s := env.SB.SSH
	return transfer.SSHConfig{Host: s.Host, Port: s.Port, User: s.User, KeyFile: s.KeyFile, KnownHosts: s.KnownHosts}
}

func setup(t *testing.T, tweak func(*transfer.Config)) *bundle {
	t.Helper()
	schema := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	cfg := transfer.Config{
		SSH:            sshConfig(),
		PrimaryDatadir: env.SB.Primary.Datadir,
		Schema:         schema,
		Tables:         []string{"Dynamics_{id}", "Post_{id}"},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	sh, err := transfer.NewShipper(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("NewShipper: %v", err)
	}
	t.Cleanup(func() { sh.Close() })
	b := &bundle{
		ctx: ctx, schema: schema, cfg: sh.Config(), sh: sh,
		primary: testdb.Open(t, env.Primary(schema)),
		replica: testdb.Open(t, env.Replica(0, schema)),
	}
	mc := env.Replica(0, schema)
	mc.Params = map[string]string{"sql_log_bin": "0"}
	b.local = testdb.Open(t, mc)
	if err := b.replica.QueryRowContext(ctx, "SELECT @@datadir").Scan(&b.repDatadir); err != nil {
		t.Fatalf("replica datadir: %v", err)
	}
	return b
}

// testLogger logs to the test's output while it runs.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// makeResult (re)creates the topic's result tables on the replica only, as
// the procedure would: Dynamics has 1,000 rows whose SUM(x) is 500500 for
// every version, Post's content changes with version.
func (b *bundle) makeResult(t *testing.T, topic int64, version int) {
	t.Helper()
	b.makeResultRows(t, topic, version, 1000)
}

// makeResultRows is makeResult with rows rows per table: 1,000 make files
// of a few KiB to a few tens of KiB, 20,000 files of several hundred KiB.
func (b *bundle) makeResultRows(t *testing.T, topic int64, version, rows int) {
	t.Helper()
	d, p := b.cfg.TableNames(topic)[0], b.cfg.TableNames(topic)[1]
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + d + ", " + p,
		"CREATE TABLE " + d + " (id INT PRIMARY KEY, x BIGINT NOT NULL) ENGINE=MyISAM",
		fmt.Sprintf("INSERT INTO %s SELECT seq, CAST(seq AS SIGNED) + IF(seq %% 2 = 0, %d, -%d) FROM seq_1_to_%d", d, version, version, rows),
		"CREATE TABLE " + p + " (id INT PRIMARY KEY, body VARCHAR(100) NOT NULL, KEY (body)) ENGINE=MyISAM",
		fmt.Sprintf("INSERT INTO %s SELECT seq, CONCAT('post ', seq, ' v', %d) FROM seq_1_to_%d", p, version, rows),
	} {
		if _, err := b.local.ExecContext(b.ctx, q); err != nil {
			t.Fatalf("make result: %s: %v", q, err)
		}
	}
}

// bump changes the Dynamics table in place keeping its sum: a new version.
func (b *bundle) bump(t *testing.T, topic int64) {
	t.Helper()
	d := b.cfg.TableNames(topic)[0]
	if _, err := b.local.ExecContext(b.ctx, "UPDATE "+d+" SET x = x + IF(id % 2 = 0, 1, -1)"); err != nil {
		t.Fatalf("bump: %v", err)
	}
}

func checksum(t *testing.T, ctx context.Context, db *sql.DB, table string) string {
	t.Helper()
	var name string
	var sum sql.NullString
	if err := db.QueryRowContext(ctx, "CHECKSUM TABLE "+table+" EXTENDED").Scan(&name, &sum); err != nil {
		t.Fatalf("checksum %s: %v", table, err)
	}
	return sum.String // "" when missing
}

func (b *bundle) lockName(topic int64) string { return fmt.Sprintf("%s/topic/%d", b.schema, topic) }

func (b *bundle) params(topic int64, token uint64) *transfer.ShipParams {
	return &transfer.ShipParams{
		TopicID: topic, Token: token,
		Replica: b.replica, ReplicaDatadir: b.repDatadir,
		Primary:  b.primary,
		LockName: b.lockName(topic),
		Fence:    func(context.Context) error { return nil },
	}
}

// assertNoStaging fails if any staging table or file is left on the primary.
func (b *bundle) assertNoStaging(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(env.SB.Primary.Datadir, b.schema))
	if err != nil {
		t.Fatalf("list primary schema dir: %v", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "nqtmp_") || strings.HasPrefix(e.Name(), "nqold_") {
			t.Errorf("staging file left on the primary: %s", e.Name())
		}
	}
	var n int
	if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND (TABLE_NAME LIKE 'nqtmp\\_%' OR TABLE_NAME LIKE 'nqold\\_%')", b.schema).Scan(&n); err != nil {
		t.Fatalf("count staging tables: %v", err)
	}
	if n != 0 {
		t.Errorf("%d staging tables left on the primary", n)
	}
}

// lockFree reports whether another session could take name right now, as
// the reaper would (GET_LOCK(name, 0)), releasing it at once.
func lockFree(ctx context.Context, db *sql.DB, name string) (bool, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", name).Scan(&got); err != nil {
		return false, err
	}
	if got.Int64 == 1 {
		_, err = conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", name)
	}
	return got.Int64 == 1, err
}
