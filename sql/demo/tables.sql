-- nonqueue example, shared by `nonqueue demo` and the benchmark (bench/).
-- Run as root on the primary; everything here replicates.

CREATE DATABASE IF NOT EXISTS app;
CREATE DATABASE IF NOT EXISTS influencer;

-- The original topic table, as the application has it. nonqueue maps it
-- (see the demo and bench configurations) and only adds its protocol columns.
CREATE TABLE IF NOT EXISTS app.TopicFilter (
  topicFilterId INT NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  influencerRecalcReqd TINYINT NOT NULL DEFAULT 0,
  influencerRecalcDate DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  influencerPriority INT NOT NULL DEFAULT 0,
  influencerRunning INT NOT NULL DEFAULT 0,
  active TINYINT NOT NULL DEFAULT 1
) ENGINE=InnoDB;

-- What the procedure reads: the posts of each topic. The demo fills it on
-- the replicas only, through the Blackhole trigger (replica.sql), so it
-- stays empty on the primary; the benchmark writes its rows on the primary
-- and lets them replicate.
CREATE TABLE IF NOT EXISTS app.PostAuthor (
  blogPostId BIGINT NOT NULL PRIMARY KEY,
  topicFilterId INT NOT NULL,
  author VARCHAR(189) NOT NULL,
  reach INT NOT NULL,
  engagement INT NOT NULL,
  createdAt DATETIME NOT NULL,
  KEY (topicFilterId)
) ENGINE=InnoDB;
