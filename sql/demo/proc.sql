-- nonqueue example procedure, shared by `nonqueue demo` and the benchmark
-- (bench/). Run as root on the primary after tables.sql; it replicates to the
-- replicas, where it runs. It writes two MyISAM tables per topic and ends
-- with a SUMMARY row, as the original did. It reads influencer.Settings,
-- which the demo makes a FederatedX table (replica.sql) and the benchmark a
-- plain one (bench/sql/primary.sql).
DROP PROCEDURE IF EXISTS influencer.proc;
DELIMITER //
CREATE PROCEDURE influencer.proc(IN p_topic BIGINT, IN p_scope TINYINT)
BEGIN
  DECLARE v_since DATETIME DEFAULT '1970-01-01';
  -- nonqueue:count-call
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
