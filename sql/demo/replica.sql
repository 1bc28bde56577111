-- nonqueue demo, replica side. Run by `nonqueue demo` as root on each
-- replica, without binary logging: nothing here may replicate or enter the
-- replica's own GTID history. {{...}} placeholders are filled in by the
-- demo with the primary's address and the application user.
SET SESSION sql_log_bin = 0;

-- The Blackhole trick: rows replicated into BlogPost are not stored; the
-- trigger keeps only the subset the procedure needs in PostAuthor (created
-- by tables.sql, empty on the primary).
-- (Row-based replication fires replica triggers with slave_run_triggers_for_rbr=YES.)
CREATE TABLE IF NOT EXISTS app.BlogPost (
  blogPostId BIGINT NOT NULL PRIMARY KEY,
  topicFilterId INT NOT NULL,
  author VARCHAR(189) NOT NULL,
  mediaProviderId INT NOT NULL,
  reach INT NOT NULL,
  engagement INT NOT NULL,
  createdAt DATETIME NOT NULL
) ENGINE=BLACKHOLE;

DROP TRIGGER IF EXISTS app.BlogPost_bir;
DELIMITER //
CREATE TRIGGER app.BlogPost_bir BEFORE INSERT ON app.BlogPost FOR EACH ROW
BEGIN
  IF NEW.mediaProviderId > 1 THEN
    INSERT IGNORE INTO app.PostAuthor (blogPostId, topicFilterId, author, reach, engagement, createdAt)
    VALUES (NEW.blogPostId, NEW.topicFilterId, NEW.author, NEW.reach, NEW.engagement, NEW.createdAt);
  END IF;
END//
DELIMITER ;

-- FederatedX: the settings table lives only on the primary.
DROP SERVER IF EXISTS nq_primary;
CREATE SERVER nq_primary FOREIGN DATA WRAPPER mysql
  OPTIONS (HOST '{{PRIMARY_HOST}}', PORT {{PRIMARY_PORT}}, USER '{{USER}}', PASSWORD '{{PASSWORD}}', DATABASE 'app');
CREATE TABLE IF NOT EXISTS influencer.Settings (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value VARCHAR(255) NOT NULL
) ENGINE=FEDERATED CONNECTION='nq_primary/InfluencerSettings';
