-- nonqueue bench, primary side. Run by the harness (bench/) as root on the
-- primary with the mariadb client after sql/demo/tables.sql and
-- sql/demo/proc.sql, the example shared with `nonqueue demo` (the harness
-- replaces proc.sql's count-call line with an insert into influencer.calls);
-- everything here replicates. It differs from the demo in three ways, for
-- measuring:
--   * the settings table is a plain replicated table, not FederatedX, so a
--     call does not depend on a second connection to the primary;
--   * the source rows (PostAuthor) replicate as they are (no Blackhole
--     trigger): the harness generates them deterministically on the primary;
--   * every procedure first counts its own call in influencer.calls, a table
--     that exists only on the replicas and is written with sql_log_bin=0
--     (replica.sql), so the harness can tell a topic computed twice.

CREATE TABLE IF NOT EXISTS influencer.Settings (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value VARCHAR(255) NOT NULL
) ENGINE=InnoDB;
INSERT INTO influencer.Settings VALUES ('engagement_weight', '2.5'), ('min_posts', '1'), ('partial_days', '30')
  ON DUPLICATE KEY UPDATE value = VALUES(value);

-- Scenario 4: the same work after one second of "thinking", so the
-- ideal throughput is exactly one topic per second per instance.
DROP PROCEDURE IF EXISTS influencer.proc_slow;
DELIMITER //
CREATE PROCEDURE influencer.proc_slow(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  DO SLEEP(1);
  CALL influencer.proc(p_topic, p_scope);
END//
DELIMITER ;

-- Scenario 5: one topic with big result tables, copied from
-- influencer.BigSrc, a MyISAM table the harness builds on replica 1 only
-- (with sql_log_bin=0). Half the rows go to each result table.
DROP PROCEDURE IF EXISTS influencer.proc_big;
DELIMITER //
CREATE PROCEDURE influencer.proc_big(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  INSERT INTO influencer.calls (topic_id) VALUES (p_topic);
  SET @s = CONCAT('DROP TABLE IF EXISTS influencer.Post_', p_topic, ', influencer.Dynamics_', p_topic);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE influencer.Dynamics_', p_topic, ' LIKE influencer.BigSrc');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('INSERT INTO influencer.Dynamics_', p_topic, ' SELECT * FROM influencer.BigSrc WHERE id % 2 = 1');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('CREATE TABLE influencer.Post_', p_topic, ' LIKE influencer.BigSrc');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('INSERT INTO influencer.Post_', p_topic, ' SELECT * FROM influencer.BigSrc WHERE id % 2 = 0');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SELECT 'SUMMARY' AS status, p_topic AS topic, p_scope AS scope;
END//
DELIMITER ;
