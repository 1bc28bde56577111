-- nonqueue bench, primary side. Run by the harness (bench/) as root on the
-- primary with the mariadb client; everything here replicates. Modelled on
-- sql/demo/primary.sql, with three changes for measuring:
--   * the settings table is a plain replicated table, not FederatedX, so a
--     call does not depend on a second connection to the primary;
--   * the source rows (PostAuthor) replicate as they are (no Blackhole
--     trigger): the harness generates them deterministically on the primary;
--   * every procedure first counts its own call in influencer.calls, a table
--     that exists only on the replicas and is written with sql_log_bin=0
--     (replica.sql), so the harness can tell a topic computed twice.

CREATE DATABASE IF NOT EXISTS app;
CREATE DATABASE IF NOT EXISTS influencer;

-- The original topic table, as the application has it; nonqueue maps it.
CREATE TABLE IF NOT EXISTS app.TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1
) ENGINE=InnoDB;

-- What the procedure reads: a few hundred posts per topic.
CREATE TABLE IF NOT EXISTS app.PostAuthor (
  blogPostId BIGINT NOT NULL PRIMARY KEY,
  topicFilterId INT NOT NULL,
  author VARCHAR(189) NOT NULL,
  reach INT NOT NULL,
  engagement INT NOT NULL,
  createdAt DATETIME NOT NULL,
  KEY (topicFilterId)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS influencer.Settings (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value VARCHAR(255) NOT NULL
) ENGINE=InnoDB;
INSERT INTO influencer.Settings VALUES ('engagement_weight', '2.5'), ('min_posts', '1'), ('partial_days', '30')
  ON DUPLICATE KEY UPDATE value = VALUES(value);

-- The realistic small procedure (scenarios 1, 2, 3 and 6): two MyISAM
-- result tables and a SUMMARY row, as the original wrote them.
DROP PROCEDURE IF EXISTS influencer.proc;
DELIMITER //
CREATE PROCEDURE influencer.proc(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_since DATETIME DEFAULT '1970-01-01';
  INSERT INTO influencer.calls (topic_id) VALUES (p_topic);
  SELECT CAST(value AS DOUBLE) INTO @nq_weight FROM influencer.Settings WHERE name = 'engagement_weight';
  SELECT CAST(value AS SIGNED) INTO @nq_min FROM influencer.Settings WHERE name = 'min_posts';
  IF p_scope = 1 THEN
    SELECT NOW() - INTERVAL CAST(value AS SIGNED) DAY INTO v_since FROM influencer.Settings WHERE name = 'partial_days';
  END IF;
  SET @nq_topic = p_topic, @nq_since = v_since;

  SET @s = CONCAT('DROP TABLE IF EXISTS influencer.Post_', p_topic, ', influencer.Dynamics_', p_topic);
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;

  SET @s = CONCAT('CREATE TABLE influencer.Post_', p_topic, ' (blogPostId BIGINT NOT NULL PRIMARY KEY, author VARCHAR(189) NOT NULL, score DOUBLE NOT NULL, KEY (author)) ENGINE=MyISAM',
                  ' SELECT blogPostId, author, reach + ? * engagement AS score FROM app.PostAuthor WHERE topicFilterId = ? AND createdAt >= ?');
  PREPARE st FROM @s; EXECUTE st USING @nq_weight, @nq_topic, @nq_since; DEALLOCATE PREPARE st;

  SET @s = CONCAT('CREATE TABLE influencer.Dynamics_', p_topic, ' (author VARCHAR(189) NOT NULL PRIMARY KEY, posts INT NOT NULL, score DOUBLE NOT NULL, influence_rank INT NOT NULL) ENGINE=MyISAM',
                  ' SELECT author, COUNT(*) AS posts, SUM(score) AS score, RANK() OVER (ORDER BY SUM(score) DESC) AS influence_rank',
                  ' FROM influencer.Post_', p_topic, ' GROUP BY author HAVING COUNT(*) >= ?');
  PREPARE st FROM @s; EXECUTE st USING @nq_min; DEALLOCATE PREPARE st;

  SET @s = CONCAT('SELECT ''top'' AS what, author, posts, ROUND(score, 1) AS score FROM influencer.Dynamics_', p_topic, ' ORDER BY influence_rank LIMIT 3');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
  SET @s = CONCAT('SELECT ''SUMMARY'' AS status, ', p_topic, ' AS topic, ', p_scope, ' AS scope, (SELECT COUNT(*) FROM influencer.Post_', p_topic, ') AS posts, (SELECT COUNT(*) FROM influencer.Dynamics_', p_topic, ') AS authors');
  PREPARE st FROM @s; EXECUTE st; DEALLOCATE PREPARE st;
END//
DELIMITER ;

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
