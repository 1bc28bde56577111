package testdb

import (
	"context"
	"database/sql"
	"fmt"
)

// calcSQL is the procedure worker tests run: it reads replicated source
// rows for the topic, fails on purpose for topics listed in fail, sleeps
// for topics listed in slow, counts its own calls in a table that never
// replicates (the worker's session has sql_log_bin=0), and writes two
// MyISAM result tables, R_<id> and S_<id>; S_ records the replica's
// server_id, so a test can tell whose result was published.
const calcSQL = `CREATE PROCEDURE calc(IN p_id BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_secs DOUBLE DEFAULT 0;
  INSERT INTO calls (topic_id) VALUES (p_id);
  IF EXISTS (SELECT 1 FROM fail WHERE topic_id = p_id) THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'calc failed on purpose';
  END IF;
  SELECT COALESCE(MAX(secs), 0) INTO v_secs FROM slow WHERE topic_id = p_id;
  DO SLEEP(v_secs);
  SET @s = CONCAT('DROP TABLE IF EXISTS R_', p_id, ', S_', p_id); PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE R_', p_id, ' (k INT PRIMARY KEY, v BIGINT) ENGINE=MyISAM SELECT k, v * ', p_scope, ' AS v FROM src WHERE topic_id = ', p_id);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE S_', p_id, ' (n INT, total BIGINT, srv INT) ENGINE=MyISAM SELECT COUNT(*) AS n, COALESCE(SUM(v), 0) AS total, @@server_id AS srv FROM R_', p_id);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, p_id AS topic;
END`

// InstallCalc creates, in the primary's current database, the calc
// procedure and its tables (src, fail, slow, calls); they replicate.
func InstallCalc(ctx context.Context, primary *sql.DB) error {
	for _, s := range []string{
		"CREATE TABLE src (topic_id BIGINT NOT NULL, k INT NOT NULL, v BIGINT NOT NULL, PRIMARY KEY (topic_id, k)) ENGINE=InnoDB",
		"CREATE TABLE fail (topic_id BIGINT PRIMARY KEY) ENGINE=InnoDB",
		"CREATE TABLE slow (topic_id BIGINT PRIMARY KEY, secs DOUBLE) ENGINE=InnoDB",
		"CREATE TABLE calls (seq BIGINT AUTO_INCREMENT PRIMARY KEY, topic_id BIGINT NOT NULL) ENGINE=InnoDB",
		calcSQL,
	} {
		if _, err := primary.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("install calc: %w", err)
		}
	}
	return nil
}
