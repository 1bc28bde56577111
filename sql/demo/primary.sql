-- nonqueue demo, primary side. Run by `nonqueue demo` as root on the
-- primary. Modelled on the original system: blog posts and topics live on
-- the primary; the replicas keep only the subset the procedure needs.

CREATE DATABASE IF NOT EXISTS app;
CREATE DATABASE IF NOT EXISTS influencer;

-- The original topic table, as the application has it. nonqueue maps it
-- (see the demo config) and only adds its protocol columns.
CREATE TABLE IF NOT EXISTS app.TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1
) ENGINE=InnoDB;

-- Blog posts: InnoDB on the primary, BLACKHOLE on the replicas (see
-- replica.sql), so these two tables are created without binary logging.
SET SESSION sql_log_bin = 0;
CREATE TABLE IF NOT EXISTS app.BlogPost (
  blogPostId BIGINT NOT NULL PRIMARY KEY,
  topicFilterId INT NOT NULL,
  author VARCHAR(189) NOT NULL,
  mediaProviderId INT NOT NULL,
  reach INT NOT NULL,
  engagement INT NOT NULL,
  createdAt DATETIME NOT NULL,
  KEY (topicFilterId)
) ENGINE=InnoDB;

-- Settings that live only on the primary: the replicas read them through a
-- FederatedX table (the original's other trick).
CREATE TABLE IF NOT EXISTS app.InfluencerSettings (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value VARCHAR(255) NOT NULL
) ENGINE=InnoDB;
INSERT INTO app.InfluencerSettings VALUES ('engagement_weight', '2.5'), ('min_posts', '1'), ('partial_days', '30')
  ON DUPLICATE KEY UPDATE value = VALUES(value);
SET SESSION sql_log_bin = 1;

-- The procedure replicates to the replicas, where it runs. It writes two
-- MyISAM tables per topic and ends with a SUMMARY row, as the original did.
DROP PROCEDURE IF EXISTS influencer.proc;
DELIMITER //
CREATE PROCEDURE influencer.proc(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_since DATETIME DEFAULT '1970-01-01';
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
