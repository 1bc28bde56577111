package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"text/template"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
)

// Names of the soak's schema objects. The topic table is the example's
// (app.TopicFilter, mapped as the demo and the bench map it); the result
// tables and the procedure are the soak's own, in the influencer schema.
const (
	procName  = "influencer.soak"
	callTable = "influencer.soak_calls"
)

// primarySQL runs on the primary (as the application account) and
// replicates: the topic table, the source rows' table and the tagged
// procedure. The procedure records its call in soak_calls, a table that
// exists only on the replicas and is written there with sql_log_bin=0 (the
// worker's session), with the claim token and claimed version the
// replica's copy of the topic row holds at the call (the worker's GTID wait
// has replicated the claim by then). The call's tag, server_id × 10⁹ +
// the row's sequence number, goes into every row of both result tables,
// Post first, Dynamics after a short sleep, so a published pair made of
// two calls, or a reader seeing half of a swap, shows two tags.
var primarySQL = []string{
	"CREATE DATABASE IF NOT EXISTS app",
	"CREATE DATABASE IF NOT EXISTS influencer",
	`CREATE TABLE IF NOT EXISTS app.TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1
) ENGINE=InnoDB`,
	`CREATE TABLE IF NOT EXISTS app.PostAuthor (
  blogPostId BIGINT NOT NULL PRIMARY KEY,
  topicFilterId INT NOT NULL,
  author VARCHAR(64) NOT NULL,
  reach INT NOT NULL,
  engagement INT NOT NULL,
  KEY (topicFilterId)
) ENGINE=InnoDB`,
	"DROP PROCEDURE IF EXISTS " + procName,
	`CREATE PROCEDURE ` + procName + `(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_tag BIGINT;
  INSERT INTO ` + callTable + ` (topic_id, claim_token, claimed_version, conn)
    SELECT topicFilterId, claim_token, claimed_version, CONNECTION_ID() FROM app.TopicFilter WHERE topicFilterId = p_topic;
  SET v_tag = @@server_id * 1000000000 + LAST_INSERT_ID();
  SET @s = CONCAT('DROP TABLE IF EXISTS influencer.Post_', p_topic, ', influencer.Dynamics_', p_topic);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE influencer.Post_', p_topic, ' (blogPostId BIGINT NOT NULL PRIMARY KEY, author VARCHAR(64) NOT NULL, score DOUBLE NOT NULL, tag BIGINT NOT NULL) ENGINE=MyISAM',
    ' SELECT blogPostId, author, reach + 2.5 * engagement AS score, ', v_tag, ' AS tag FROM app.PostAuthor WHERE topicFilterId = ', p_topic);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  DO SLEEP(0.02 + RAND() * 0.08);
  SET @s = CONCAT('CREATE TABLE influencer.Dynamics_', p_topic, ' (author VARCHAR(64) NOT NULL PRIMARY KEY, posts INT NOT NULL, score DOUBLE NOT NULL, tag BIGINT NOT NULL) ENGINE=MyISAM',
    ' SELECT author, COUNT(*) AS posts, SUM(score) AS score, ', v_tag, ' AS tag FROM influencer.Post_', p_topic, ' GROUP BY author');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, p_topic AS topic, v_tag AS tag;
END`,
}

// replicaSQL runs on each replica with sql_log_bin=0: the call table,
// which never replicates and never enters the replica's GTID history.
var replicaSQL = []string{
	`CREATE TABLE IF NOT EXISTS ` + callTable + ` (
  seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  topic_id BIGINT NOT NULL,
  claim_token BIGINT UNSIGNED NOT NULL,
  claimed_version BIGINT UNSIGNED NOT NULL,
  conn BIGINT NOT NULL,
  at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY (topic_id)
) ENGINE=InnoDB`,
}

// topicsTOML is the mapping of sandbox.MappedTopicsTOML with a shorter
// lease, so a stopped or killed worker's claims come back within the
// soak's fault intervals rather than after 30 s.
const topicsTOML = `[topics]
schema = "app"
table = "TopicFilter"
mapped = true
active_values = [1, 2]
meta_schema = "nonqueue"
lease = "{{.Lease}}"
max_attempts = {{.MaxAttempts}}

[topics.columns]
id = "topicFilterId"
required = "influencerRecalcReqd"
due = "influencerRecalcDate"
priority = "influencerPriority"
running = "influencerRunning"
active = "active"
`

// workerConfig is one replica's worker configuration: its connections go
// to the primary and sshd through the soak's network (.SB is the route's
// view of the sandbox), the back-offs are short so a 1-minute soak sees
// recoveries, and everything else is the default.
var workerConfig = template.Must(template.New("soak").Parse(`# nonqueue soak configuration for {{.Replica.Name}}; written by nqsoak.
` + sandbox.ConnectionsTOML + `
` + topicsTOML + `
[procedure]
name = "` + procName + `"
marker = "SUMMARY"
timeout = "2m"

[results]
schema = "influencer"
tables = ["Dynamics_{id}", "Post_{id}"]

[lag]
stopped_backoff = "2s"
behind_backoff = "1s"

[worker]
log_dir = "{{.LogDir}}"
idle_wait = "200ms"
gtid_backoff = "3s"
backoff_base = "1s"
backoff_max = "4s"

` + sandbox.SSHTOML + `keepalive_interval = "1s"
keepalive_timeout = "4s"
stall_timeout = "4s"
`))

// topicsConfig is the [topics] section above as queue.Config, for the
// load generator's and the operator's queue.
func (s *soak) topicsConfig() queue.Config {
	return queue.Config{
		Schema: "app", Table: "TopicFilter", Mapped: true, ActiveValues: []int64{1, 2}, MetaSchema: "nonqueue",
		Lease: s.opt.Lease, MaxAttempts: s.opt.MaxAttempts,
		Columns: queue.Columns{ID: "topicFilterId", Required: "influencerRecalcReqd", Due: "influencerRecalcDate",
			Priority: "influencerPriority", Running: "influencerRunning", Active: "active"},
	}
}

// writeConfigs writes one worker configuration per replica, connecting
// through via (the network's view of the sandbox).
func (s *soak) writeConfigs(via *sandbox.Sandbox) error {
	for k, r := range s.sb.Replicas {
		p := filepath.Join(s.dir, "soak", fmt.Sprintf("%s.toml", r.Name))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = workerConfig.Execute(f, map[string]any{"SB": via, "Replica": r, "LogDir": filepath.Join(s.dir, "runs"),
			"Lease": s.opt.Lease.String(), "MaxAttempts": s.opt.MaxAttempts})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		s.configs = append(s.configs, p)
		_ = k
	}
	return nil
}

// openDB opens a pool on mc with session variables params.
func openDB(mc *mysql.Config, params map[string]string, maxOpen int) (*sql.DB, error) {
	mc = mc.Clone()
	mc.Params = params
	mc.Timeout = 5 * time.Second
	mc.ReadTimeout = 2 * time.Minute
	mc.WriteTimeout = 30 * time.Second
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(maxOpen)
	db.SetMaxIdleConns(maxOpen)
	db.SetConnMaxLifetime(time.Minute)
	return db, nil
}

// setup loads the schema, the procedure and the data, creates the call
// tables on the replicas, applies nonqueue's schema to the mapped table and
// gives every topic an empty published result on the primary.
func (s *soak) setup(ctx context.Context) error {
	var err error
	noBin := map[string]string{"sql_log_bin": "0"}
	if s.primary, err = openDB(s.sb.MySQLConfig(s.sb.Primary), nil, 16); err != nil {
		return err
	}
	if s.primaryNoBin, err = openDB(s.sb.MySQLConfig(s.sb.Primary), noBin, 8); err != nil {
		return err
	}
	for _, r := range s.sb.Replicas {
		db, err := openDB(s.sb.MySQLConfig(r), noBin, 8)
		if err != nil {
			return err
		}
		s.replicas = append(s.replicas, db)
	}
	for _, st := range primarySQL {
		if _, err := s.primary.ExecContext(ctx, st); err != nil {
			return fmt.Errorf("set up the primary: %w", err)
		}
	}
	n := s.opt.Topics
	stmts := []string{
		fmt.Sprintf(`INSERT INTO app.TopicFilter (topicFilterId, name, influencerRecalcReqd, influencerRecalcDate, active)
 SELECT seq, CONCAT('topic ', seq), 0, NOW(), 1 + seq %% 2 FROM app.seq_1_to_%d`, n),
		fmt.Sprintf(`INSERT INTO app.PostAuthor (blogPostId, topicFilterId, author, reach, engagement)
 SELECT t.seq * 100 + p.seq, t.seq, CONCAT('author', (t.seq * 7 + p.seq) %% 5), CRC32(CONCAT(t.seq, '/', p.seq)) %% 5000, p.seq * 3
 FROM app.seq_1_to_%d t JOIN app.seq_1_to_6 p ON p.seq <= 2 + t.seq %% 5`, n),
	}
	for _, st := range stmts {
		if _, err := s.primary.ExecContext(ctx, "/* soak */ "+st); err != nil {
			return fmt.Errorf("load topics: %w", err)
		}
	}
	q, err := queue.Open(ctx, s.sb.MySQLConfig(s.sb.Primary), s.topicsConfig())
	if err != nil {
		return fmt.Errorf("open the queue: %w", err)
	}
	s.q = q
	// nonqueue's schema (protocol columns, run history, request trigger)
	// as the binary under test applies it.
	if err := s.writeConfigs(s.route.Sandbox); err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(cctx, s.nonqueue, "schema", "apply", "--config", s.configs[0]).CombinedOutput(); err != nil {
		return fmt.Errorf("nonqueue schema apply: %w: %s", err, tail(string(out)))
	}
	for id := 1; id <= n; id++ {
		for _, st := range []string{
			fmt.Sprintf("CREATE TABLE IF NOT EXISTS influencer.Post_%d (blogPostId BIGINT NOT NULL PRIMARY KEY, author VARCHAR(64) NOT NULL, score DOUBLE NOT NULL, tag BIGINT NOT NULL) ENGINE=MyISAM", id),
			fmt.Sprintf("CREATE TABLE IF NOT EXISTS influencer.Dynamics_%d (author VARCHAR(64) NOT NULL PRIMARY KEY, posts INT NOT NULL, score DOUBLE NOT NULL, tag BIGINT NOT NULL) ENGINE=MyISAM", id),
		} {
			if _, err := s.primaryNoBin.ExecContext(ctx, st); err != nil {
				return fmt.Errorf("create the published results on the primary: %w", err)
			}
		}
	}
	if err := s.waitReplicas(ctx, 2*time.Minute); err != nil {
		return err
	}
	for i, r := range s.replicas {
		for _, st := range replicaSQL {
			if _, err := r.ExecContext(ctx, st); err != nil {
				return fmt.Errorf("set up replica%d: %w", i+1, err)
			}
		}
	}
	return nil
}

// waitReplicas waits until every replica has applied what the primary has
// written so far.
func (s *soak) waitReplicas(ctx context.Context, limit time.Duration) error {
	var pos string
	if err := s.primary.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&pos); err != nil {
		return fmt.Errorf("read the primary's position: %w", err)
	}
	for i, r := range s.replicas {
		var res sql.NullInt64
		if err := r.QueryRowContext(ctx, "SELECT MASTER_GTID_WAIT(?, ?)", pos, limit.Seconds()).Scan(&res); err != nil {
			return fmt.Errorf("wait for replica%d: %w", i+1, err)
		}
		if !res.Valid || res.Int64 != 0 {
			return fmt.Errorf("replica%d did not reach %s within %v", i+1, pos, limit)
		}
	}
	return nil
}
