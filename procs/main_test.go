package procs_test

import (
	"context"
	"database/sql"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/procs"
)

var env *testdb.Env

func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "procs", 1, &env)) }

// Procedures the tests call, created on the primary so that they reach the
// replica by replication (a replica's own binlogged DDL would break it).
var procedures = []string{
	// calc: the original's shape: a MyISAM result table per topic, then two
	// result sets, the last with the SUMMARY line.
	`CREATE PROCEDURE calc(IN topic BIGINT, IN scope INT)
BEGIN
  SET @s = CONCAT('CREATE TABLE result_', topic, ' (id INT PRIMARY KEY, score DOUBLE, note VARCHAR(20)) ENGINE=MyISAM');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('INSERT INTO result_', topic, ' VALUES (1, 0.5, ''a\tb''), (2, 1.5, NULL), (3, 2.5, ''c'')');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('SELECT id, score, note FROM result_', topic, ' ORDER BY id');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT CONCAT('SUMMARY topic ', topic) AS status, topic AS topic_id, scope AS scope;
END`,
	// nomark: the marker appears, but not in the last result set.
	`CREATE PROCEDURE nomark(IN topic BIGINT, IN scope INT)
BEGIN
  SELECT 'SUMMARY' AS status;
  SELECT 'done' AS status;
END`,
	// boom: one result set, then an error.
	`CREATE PROCEDURE boom(IN topic BIGINT, IN scope INT)
BEGIN
  SELECT 'starting' AS status;
  SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom: no data for topic', MYSQL_ERRNO = 1644;
END`,
	// sleepy: would take 30s.
	`CREATE PROCEDURE sleepy(IN topic BIGINT, IN scope INT)
BEGIN
  SELECT 'started' AS status;
  DO SLEEP(30);
  SELECT 'SUMMARY' AS status;
END`,
	// stubborn: KILL QUERY only cuts one SLEEP short; the loop goes on.
	`CREATE PROCEDURE stubborn(IN topic BIGINT, IN scope INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < 300 DO
    DO SLEEP(0.1);
    SET i = i + 1;
  END WHILE;
  SELECT 'SUMMARY' AS status;
END`,
	// quiet: returns no result set at all.
	`CREATE PROCEDURE quiet(IN topic BIGINT, IN scope INT)
BEGIN
  DO 1;
END`,
}

type bundle struct {
	ctx     context.Context
	name    string
	primary *sql.DB
	replica *sql.DB
	logDir  string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	b := &bundle{ctx: ctx, name: name, primary: testdb.Open(t, env.Primary(name)),
		replica: testdb.Open(t, env.Replica(0, name)), logDir: t.TempDir()}
	for _, p := range procedures {
		if _, err := b.primary.ExecContext(ctx, p); err != nil {
			t.Fatalf("create procedure: %v", err)
		}
	}
	if err := env.WaitReplicas(ctx, b.primary); err != nil {
		t.Fatal(err)
	}
	return b
}

// runner returns a Runner on the replica for procedure proc of the test's
// database.
func (b *bundle) runner(t *testing.T, proc string, tweak func(*procs.Config)) *procs.Runner {
	cfg := procs.Config{Procedure: b.name + "." + proc, Marker: "SUMMARY", LogDir: b.logDir}
	if tweak != nil {
		tweak(&cfg)
	}
	return &procs.Runner{DB: b.replica, Config: cfg, Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil))}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Helper(); w.t.Log(string(p)); return len(p), nil }
