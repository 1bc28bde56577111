-- nonqueue demo, primary side. Run by `nonqueue demo` as root on the
-- primary after tables.sql (and before proc.sql). Modelled on the original
-- system: blog posts and topics live on the primary; the replicas keep only
-- the subset the procedure needs.

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
